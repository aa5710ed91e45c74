"""Browser assets: the kiosk page, the admin page's assets and the wsgate.js client."""

from pathlib import Path

STATIC = Path(__file__).parent / "static"
