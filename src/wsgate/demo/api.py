"""The demo REST API behind ``/api`` in ``wsgate up``: a stand-in for the Django API of the real deployment,
serving a City Hall's events and office locations as JSON."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from aiohttp import web

OFFICES: tuple[dict[str, str], ...] = (
    {"id": "clerk", "name": "City Clerk", "floor": "1", "room": "101", "hours": "Mon–Fri 8:00–16:30"},
    {"id": "permits", "name": "Building Permits", "floor": "1", "room": "118", "hours": "Mon–Fri 8:00–15:00"},
    {"id": "tax", "name": "Tax Collector", "floor": "2", "room": "204", "hours": "Mon–Fri 9:00–16:00"},
    {"id": "records", "name": "Vital Records", "floor": "2", "room": "215", "hours": "Mon–Thu 9:00–16:00"},
    {"id": "mayor", "name": "Office of the Mayor", "floor": "3", "room": "300", "hours": "By appointment"},
    {
        "id": "council",
        "name": "Council Chambers",
        "floor": "3",
        "room": "320",
        "hours": "Open during sessions",
    },
    {"id": "parks", "name": "Parks & Recreation", "floor": "G", "room": "G12", "hours": "Mon–Fri 8:30–17:00"},
)

# (start, minutes, title, where): a day at City Hall, dated "today" when served so the demo never looks stale.
_DAY: tuple[tuple[time, int, str, str], ...] = (
    (time(9, 0), 60, "Citizenship ceremony", "Council Chambers"),
    (time(10, 30), 90, "Planning board hearing", "Room 204"),
    (time(12, 0), 45, "Lunchtime concert on the steps", "Main entrance"),
    (time(14, 0), 120, "City council session", "Council Chambers"),
    (time(16, 30), 60, "Community garden meeting", "Parks & Recreation, G12"),
)


def events_for(day: datetime) -> list[dict[str, Any]]:
    events = []
    for index, (start, minutes, title, where) in enumerate(_DAY):
        starts = datetime.combine(day.date(), start, tzinfo=day.tzinfo)
        events.append(
            {
                "id": f"e{index + 1}",
                "title": title,
                "location": where,
                "starts_at": starts.isoformat(timespec="minutes"),
                "ends_at": (starts + timedelta(minutes=minutes)).isoformat(timespec="minutes"),
            }
        )
    return events


async def events(request: web.Request) -> web.Response:
    return web.json_response({"events": events_for(datetime.now(UTC).astimezone())})


async def offices(request: web.Request) -> web.Response:
    return web.json_response({"offices": list(OFFICES)})


def build_demo_api() -> web.Application:
    app = web.Application()
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/offices", offices)
    return app
