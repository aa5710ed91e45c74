"""``wsgate up``: the kiosk system on one machine with embedded defaults."""
