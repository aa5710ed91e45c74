"""Benchmarks for wsgate; each module runs on its own (``python benchmarks/<name>.py``)."""
