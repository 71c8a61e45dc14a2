"""The HTTPS health server: granian processes answering from the leadership table.

:class:`HealthServer` runs granian (RSGI, TLS 1.2+) in its own processes;
its workers map the elector's named shared-memory
:class:`~fastelect.LeadershipTable` and answer ``GET <route>`` with 200 and
the lock-record JSON only while this host holds a live lease, plus
``/healthz`` (loop watchdog) and ``/metrics`` (Prometheus).  See
:mod:`fastelect.health.server` for the process model and
:mod:`fastelect.health.app` for the endpoints.
"""

from .server import HealthServer, HealthServerConfig

__all__ = ["HealthServer", "HealthServerConfig"]
