"""``wsgate up``: the kiosk system on this machine, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os

from wsgate import logs
from wsgate.demo.system import KioskSystem


def run(*, host: str, port: int) -> int:
    from wsgate.cli import run_async, serve_until_signalled

    logs.configure()
    system = KioskSystem(host=host, port=port, admin_password=os.environ.get("WSGATE_ADMIN_PASSWORD") or None)

    async def start() -> None:
        await system.start()
        lines = [
            f"wsgate kiosk system running at {system.url}",
            f"  kiosk page:  {system.url}/?kiosk=lobby   (each ?kiosk=ID is one kiosk)",
            f"  admin page:  {system.url}/admin",
        ]
        if system.password_generated:
            # Printed once, here, because nobody could log in otherwise; set WSGATE_ADMIN_PASSWORD to choose.
            lines.append(f"  admin password (generated, shown once): {system.admin_password}")
        lines.append("Ctrl-C stops it.")
        print("\n".join(lines), flush=True)

    run_async(serve_until_signalled(start, system.stop))
    return 0
