"""wsgate: WebSocket authentication made safe for browsers that cannot send auth headers."""

__version__ = "0.1.0"
