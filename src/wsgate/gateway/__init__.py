"""The gateway: static files, an HTTP reverse proxy, and a WebSocket proxy that checks Origin and injects
credentials."""
