"""The HTTPS health server: granian processes answering from the leadership table.

:class:`HealthServer` runs granian (RSGI, TLS 1.2+) in its own processes;
its workers map the elector's named shared-memory
:class:`~fastelect.LeadershipTable` and answer ``GET <route>`` with 200 and
the lock-record JSON only while this host holds a live lease, plus
``/healthz`` (loop watchdog) and ``/metrics`` (Prometheus).  See
:mod:`fastelect.health.server` for the process model and
:mod:`fastelect.health.app` for the endpoints.

The names below load on first use: granian's processes import
:mod:`fastelect.health.app` and must not pay for the controller's imports
(asyncio, the TLS toolkit).
"""

from __future__ import annotations

TYPE_CHECKING = False  # as in fastelect/__init__.py: typing is not imported for it
if TYPE_CHECKING:
    from typing import Any

    from .server import HealthServer, HealthServerConfig

__all__ = ["HealthServer", "HealthServerConfig"]


def __getattr__(name: str) -> Any:
    """Import :mod:`fastelect.health.server` on first use of its names."""
    if name in __all__:
        from . import server

        value = getattr(server, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
