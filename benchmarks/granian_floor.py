"""The health benchmark's floor: granian serving a constant response, nothing else.

Launched through fastelect's own granian launcher
(``python -m fastelect.health._process``) with the same flags as the health
server (``fastelect.health._process.TUNING``), so for throughput the only
difference between the two is the handler: this one answers bytes of the
same shape as a leadership answer without reading anything.

It runs *bare* (``"lean": false`` in its settings): granian as installed,
with Python's ssl (and so OpenSSL) loaded as granian and uvloop load it.
The health server keeps it out of its processes; the memory figures of the
two, side by side, show what that saves.
"""

from __future__ import annotations

from typing import Any

BODY = (
    b'{"leaderID":"bench-node","leaderAddr":"127.0.0.1:8443",'
    b'"lastUpdated":"2026-01-01T00:00:00.000000Z","term":1,"etag":"\\"bench-etag\\""}'
)
HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]


async def app(scope: Any, proto: Any) -> None:
    """RSGI: every request gets 200 and ``BODY``."""
    proto.response_bytes(200, HEADERS, BODY)
