"""The hub: an authenticated publish/subscribe WebSocket server with history and recovery."""
