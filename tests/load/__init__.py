"""Load tests: many real connections through real server processes, bounded in count and time."""
