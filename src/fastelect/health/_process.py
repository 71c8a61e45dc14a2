"""Entry point of the health server's own process: ``python -m fastelect.health._process``.

:class:`~fastelect.health.HealthServer` starts this module with its settings
in ``FASTELECT_HEALTH_SETTINGS`` (JSON).  It runs granian's embedded multi-process
server: this process is granian's supervisor, which binds nothing itself on
Linux and forks the worker process(es) that listen (``SO_REUSEPORT``) and run
:func:`fastelect.health.app.create_app`.  granian respawns a worker that
dies; SIGTERM or SIGINT (sent by ``HealthServer.stop()``) shuts everything
down gracefully.

Its owner dying is told apart from a stop: the kernel sends this process
SIGUSR1 (``PR_SET_PDEATHSIG``) when the thread that started it exits, which
for an elector's event-loop thread means the elector is gone.  Then it stops
granian the same graceful way and also deletes the private directory
holding the certificate and key, since its owner no longer can.  (The
signal follows the *thread*, not the process -- with a multi-threaded owner
killed outright, it arrives while the process is still being torn down, so
comparing ``getppid()`` would not tell.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import sys
import types
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ENV_SETTINGS", "main"]

#: Environment variable carrying the launcher's settings (JSON).  Defined here,
#: not in :mod:`.server`, so this process never imports the controller (asyncio,
#: the TLS toolkit) just to read one name.
ENV_SETTINGS = "FASTELECT_HEALTH_SETTINGS"

#: The application granian serves (a factory).
APP_TARGET = "fastelect.health.app:create_app"

#: granian's settings for a health endpoint (granian's own defaults in comments).
#: A settings ``"tuning"`` object overrides them (the benchmarks compare).
#: The handler never awaits, so what costs is granian's per-request machinery:
#: its Rust task implementation skips asyncio's Task for each request (fewer
#: CPU-seconds per request in benchmarks/test_health_bench.py); granian offers
#: it only before Python 3.12 and warns ("experimental") when it is used.
TUNING: dict[str, Any] = {
    "http": "auto",  # HTTP/1.1 and HTTP/2 by ALPN (auto)
    "runtime_mode": "st",  # one Rust thread for I/O and TLS (auto: st for RSGI)
    "runtime_threads": 1,  # (1)
    "task_impl": "rust" if sys.version_info < (3, 12) else "asyncio",  # (asyncio)
    "backpressure": None,  # (None: backlog / workers)
}

_PR_SET_PDEATHSIG = 1


class _Owner:
    """Tracks whether our owner died, and stops granian when it does."""

    def __init__(self) -> None:
        self.gone = False
        self.server: Any = None

    def died(self, signum: int, frame: types.FrameType | None) -> None:
        self.gone = True
        if self.server is None:
            raise SystemExit(1)  # granian is not running yet: nothing to stop
        # granian's own SIGTERM path: graceful stop of the workers, then return.
        self.server.signal_handler_interrupt()


def _watch_owner(owner: _Owner, parent_pid: int) -> None:
    signal.signal(signal.SIGUSR1, owner.died)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGUSR1, 0, 0, 0)
    # If the owner died before prctl took effect, we were already reparented.
    if parent_pid and os.getppid() != parent_pid:
        owner.died(signal.SIGUSR1, None)


def main() -> None:
    """Run granian with the settings from the environment until told to stop."""
    settings = orjson.loads(os.environ[ENV_SETTINGS])
    owner = _Owner()
    try:
        _watch_owner(owner, int(settings["parent_pid"]))

        from granian import Granian
        from granian.constants import (
            HTTPModes,
            Interfaces,
            Loops,
            RuntimeModes,
            SSLProtocols,
            TaskImpl,
        )
        from granian.log import LogLevels

        from .app import ENV_MAIN_PID

        # Workers read this to die with us (see app.create_app).
        os.environ[ENV_MAIN_PID] = str(os.getpid())
        tuning = {**TUNING, **settings.get("tuning", {})}
        owner.server = Granian(
            settings.get("target", APP_TARGET),
            factory=bool(settings.get("factory", True)),
            interface=Interfaces.RSGI,
            address=settings["host"],
            port=int(settings["port"]),
            workers=int(settings["workers"]),
            loop=Loops.auto,
            http=HTTPModes(tuning["http"]),
            websockets=False,
            backlog=int(settings.get("backlog", 1024)),
            runtime_mode=RuntimeModes(tuning["runtime_mode"]),
            runtime_threads=int(tuning["runtime_threads"]),
            task_impl=TaskImpl(tuning["task_impl"]),
            backpressure=tuning["backpressure"],
            ssl_cert=Path(settings["cert"]),
            ssl_key=Path(settings["key"]),
            # granian defaults to TLS 1.3 only; Go peers and older probes need 1.2.
            ssl_protocol_min=SSLProtocols.tls12,
            respawn_failed_workers=True,
            # Bound the graceful stop of a worker; then granian kills it.
            workers_kill_timeout=int(settings.get("kill_timeout", 5)),
            log_level=LogLevels(settings.get("log_level", "warning")),
            log_access=False,
        )
        if owner.gone:  # died while we were building the server
            raise SystemExit(1)
        owner.server.serve()
    finally:
        # Normally our owner deletes the private dir (cert, key, log) once we
        # have exited. If it died, no one else will: do it, so the key does
        # not linger.
        if owner.gone:
            shutil.rmtree(settings["dir"], ignore_errors=True)


if __name__ == "__main__":
    main()
