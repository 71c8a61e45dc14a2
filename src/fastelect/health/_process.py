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

Memory: granian terminates TLS in Rust (rustls), so these processes never need
Python's :mod:`ssl` -- yet asyncio, uvloop and granian import it, and the
core's nonce generator (:mod:`secrets`) imports OpenSSL's digests; that maps
and initialises libssl and libcrypto in both processes.  Unless the
settings say ``"lean": false`` (the benchmark's bare-granian floor),
:func:`without_python_tls` keeps them out before anything else is imported:
asyncio copes with ``ssl = None`` (it is an optional import there), hashlib
and hmac fall back to their builtin digests, and the two modules that need
``ssl`` at import time, granian's server module and uvloop, get an inert
stand-in (:class:`_SSLStandIn`) instead: granian's one use of it, a cert
check, is left to the controller, which loaded the same files into OpenSSL
before writing them; uvloop only binds names it needs for TLS connections
made from Python, which these processes never make.  granian's main process
no longer imports the app either (:data:`ENV_MAIN_PID` lives here).
Workers inherit all this over ``fork``, which granian uses up to Python
3.13; where it spawns them instead (3.14's default start method), a worker
imports ssl again as before.  Figures in docs/health.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import types
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ENV_MAIN_PID", "ENV_SETTINGS", "main", "without_python_tls"]

# No handler is configured before granian's: warnings reach stderr, i.e. granian's log.
_log = logging.getLogger(__name__)

#: Environment variable carrying the launcher's settings (JSON).  Defined here,
#: not in :mod:`.server`, so this process never imports the controller (asyncio,
#: the TLS toolkit) just to read one name.
ENV_SETTINGS = "FASTELECT_HEALTH_SETTINGS"
#: Set by this launcher for granian's workers: the pid they must not outlive
#: (read by :func:`fastelect.health.app.create_app`).  Defined here so that
#: granian's main process does not import the app and the core just for it.
ENV_MAIN_PID = "FASTELECT_HEALTH_MAIN_PID"

#: The application granian serves (a factory).
APP_TARGET = "fastelect.health.app:create_app"

#: granian's settings for a health endpoint (granian's own defaults in comments).
#: A settings ``"tuning"`` object overrides them (the benchmarks compare).
#: The handler never awaits, so what costs is granian's per-request machinery:
#: its Rust task implementation skips asyncio's Task for each request (fewer
#: CPU-seconds per request in benchmarks/test_health_bench.py); granian offers
#: it only before Python 3.12 and warns ("experimental") when it is used.
TUNING: dict[str, Any] = {
    # HTTP/1.1 only, and ALPN offers only http/1.1 (auto: h2 too).  Health
    # checks are one small request per interval, so HTTP/2 buys nothing; and
    # granian's "auto" mode waits for the first bytes to tell the versions
    # apart with no timeout, so a connection that sends nothing stayed open
    # for ever, and HTTP/2 buffered header blocks up to 16 MiB (issue 20).
    "http": "1",
    "runtime_mode": "st",  # one Rust thread for I/O and TLS (auto: st for RSGI)
    "runtime_threads": 1,  # (1)
    "task_impl": "rust" if sys.version_info < (3, 12) else "asyncio",  # (asyncio)
    # (None: backlog / workers = 1,024): sized from the fd limit instead,
    # see connection_limit().
    "backpressure": None,
}

#: A request head (request line and headers) larger than this gets 431.
#: hyper's smallest read buffer; a health request is a few hundred bytes.
#: (granian's default is 8 KiB + 400 KiB.)
MAX_HEADER_BYTES = 8192
#: File descriptors a worker keeps for itself besides its connections: the
#: interpreter, the listener, the table, log files, granian's runtime.  A
#: worker measured ~30 open; the rest is headroom.
FD_RESERVE = 128
#: Connections per worker when the configuration does not say: enough for
#: every load balancer, scraper and peer a health endpoint has, many times
#: over, yet bounded in memory (about 20 KB per idle TLS connection).
DEFAULT_MAX_CONNECTIONS = 16384
#: The most file descriptors a worker asks for when raising its soft limit.
_FD_CEILING = 1 << 20

_PR_SET_PDEATHSIG = 1


def connection_limit(configured: int | None) -> tuple[int, str]:
    """How many connections one worker may hold, and a note when it is less than asked.

    Raises this process's soft ``RLIMIT_NOFILE`` to its hard limit (granian's
    workers inherit it over fork), then keeps :data:`FD_RESERVE` descriptors
    aside.  Past the limit granian stops accepting (new connections wait in
    the kernel's listen queue) instead of failing ``accept`` with EMFILE in
    a loop.  ``configured`` (``HealthServerConfig.max_connections``) is
    clamped to what the descriptors allow; None means
    ``min(DEFAULT_MAX_CONNECTIONS, what they allow)``.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _FD_CEILING if hard == resource.RLIM_INFINITY else min(hard, _FD_CEILING)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    room = max(1, soft - FD_RESERVE)
    if configured is None:
        return min(DEFAULT_MAX_CONNECTIONS, room), ""
    if configured <= room:
        return configured, ""
    wanted = configured
    return room, (
        f"health server: {wanted} connections per worker asked for, but the file-descriptor "
        f"limit ({soft}) leaves room for {room}: serving at most {room}"
    )


class _SSLStandIn(types.ModuleType):
    """What granian and uvloop find when they import :mod:`ssl` in a lean health process.

    Both import ssl at module level and read a few names from it; nothing
    else in these processes sees it (``import ssl`` raises ImportError).

    * granian's server (``granian.server.common``) loads the certificate and
      key into a throwaway ``SSLContext`` before handing their *paths* to its
      Rust worker, which loads them again with rustls.  Our controller has
      already loaded the same bytes into OpenSSL (``HealthServer.start()``:
      ``server_ssl_context``) before writing these files, so this
      ``load_cert_chain`` only checks that they can be read.
    * uvloop binds the classes, exceptions and error codes it needs to make
      TLS connections from Python.  No code here makes one: the names are
      inert, and ``create_default_context`` refuses.

    Any other name fails loudly (uvloop is then left out, see
    :func:`without_python_tls`) instead of running without TLS checks.
    """

    PROTOCOL_TLS_SERVER = 17  # the values ssl has
    SSL_ERROR_WANT_READ = 2
    SSL_ERROR_WANT_WRITE = 3
    SSL_ERROR_SYSCALL = 5

    class SSLError(OSError):
        """Never raised: nothing here does TLS in Python."""

    class SSLWantReadError(SSLError):
        """Never raised."""

    class SSLSyscallError(SSLError):
        """Never raised."""

    class SSLZeroReturnError(SSLError):
        """Never raised."""

    class CertificateError(ValueError):
        """Never raised."""

    class MemoryBIO:
        """Never made."""

    class SSLContext:
        """granian's throwaway context: it only ever calls ``load_cert_chain``."""

        def __init__(self, protocol: object) -> None:
            self.protocol = protocol

        def load_cert_chain(
            self, certfile: str, keyfile: str | None = None, password: object = None
        ) -> None:
            for path in (certfile, keyfile):
                if path is not None:
                    with open(path, "rb"):
                        pass  # readable: rustls loads and checks it in the worker

    @staticmethod
    def create_default_context(*args: object, **kwargs: object) -> Any:
        raise RuntimeError(_NO_PYTHON_TLS)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"ssl.{name}: {_NO_PYTHON_TLS}")


_NO_PYTHON_TLS = (
    "Python's ssl module is kept out of fastelect's health processes (granian does "
    "TLS in Rust); see fastelect.health._process"
)


#: Any of these imported before :func:`without_python_tls` makes it change nothing.
_KEPT_OUT = ("ssl", "_ssl", "_hashlib", "hashlib", "uvloop", "asyncio", "granian")


def without_python_tls() -> bool:
    """Keep Python's :mod:`ssl` and OpenSSL out of this process and the workers it forks.

    Must run before asyncio, uvloop, granian or :mod:`hashlib` is imported
    (:func:`main` calls it first).  After it, ``import ssl`` raises
    ImportError everywhere; granian's server module and uvloop hold
    :class:`_SSLStandIn`.  If uvloop wants a name the stand-in lacks (a newer
    uvloop), it is left out and the workers run asyncio's loop.  Returns
    False, changing nothing, if one of those modules was imported already
    (by a ``site`` hook, say): half the trim would save nothing; and False,
    with the real ssl loaded after all, if granian itself does not load
    against the stand-in.  Every fallback is logged (to granian's log).
    """
    early = [name for name in _KEPT_OUT if sys.modules.get(name) is not None]
    if early:
        _log.warning(
            "%s imported before the health server started (a site hook?): running granian "
            "as installed, with Python's ssl and OpenSSL loaded",
            ", ".join(early),
        )
        return False
    # asyncio, concurrent.futures, ...: ``try: import ssl`` -> ssl = None.
    sys.modules["ssl"] = None  # type: ignore[assignment]
    # hashlib and hmac (imported by secrets, by the core) use their builtin
    # digests without OpenSSL's; nothing here hashes anything but a nonce.
    sys.modules["_hashlib"] = None  # type: ignore[assignment]
    import asyncio  # noqa: F401  (binds ssl = None in every asyncio module)

    sys.modules["ssl"] = _SSLStandIn("ssl")
    try:
        try:
            import uvloop  # noqa: F401
        except Exception as exc:
            for name in [m for m in sys.modules if m == "uvloop" or m.startswith("uvloop.")]:
                del sys.modules[name]
            # granian's loop registry then skips it: asyncio's loop.
            sys.modules["uvloop"] = None  # type: ignore[assignment]
            if not isinstance(exc, ImportError):  # not merely uninstalled
                _log.warning("uvloop does not load without Python's ssl (%s): asyncio's loop", exc)
        try:
            import granian.server.common  # noqa: F401
        except Exception as exc:
            # A granian that wants more of ssl than the stand-in has (a newer
            # release): forget its half-import and let it load the real ssl.
            for name in [m for m in sys.modules if m == "granian" or m.startswith("granian.")]:
                del sys.modules[name]
            del sys.modules["ssl"], sys.modules["_hashlib"]
            _log.warning(
                "granian does not load without Python's ssl (%s): running it as installed, "
                "with Python's ssl and OpenSSL loaded",
                exc,
            )
            return False
    finally:
        if isinstance(sys.modules.get("ssl"), _SSLStandIn):
            sys.modules["ssl"] = None  # type: ignore[assignment]
    return True


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
    lean = bool(settings.get("lean", True)) and without_python_tls()
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

        # Workers read this to die with us (see app.create_app).
        os.environ[ENV_MAIN_PID] = str(os.getpid())
        tuning = {**TUNING, **settings.get("tuning", {})}
        from granian.http import HTTP1Settings

        max_connections, note = connection_limit(settings.get("max_connections"))
        if note:
            _log.warning("%s", note)
        backpressure = tuning["backpressure"] or max_connections
        # One hyper timer bounds the time from the end of the TLS handshake
        # to a complete request head: the first byte, a slow head, and the
        # idle time of a kept-alive connection before its next request.
        http1 = HTTP1Settings(
            header_read_timeout=int(settings.get("idle_timeout_ms", 5000)),
            keep_alive=True,
            max_buffer_size=MAX_HEADER_BYTES,
        )
        owner.server = Granian(
            settings.get("target", APP_TARGET),
            factory=bool(settings.get("factory", True)),
            interface=Interfaces.RSGI,
            address=settings["host"],
            port=int(settings["port"]),
            workers=int(settings["workers"]),
            # Lean: uvloop if it loaded with the stand-in, else asyncio's; bare: granian's choice.
            loop=(Loops.uvloop if sys.modules.get("uvloop") else Loops.asyncio)
            if lean
            else Loops.auto,
            http=HTTPModes(tuning["http"]),
            websockets=False,
            backlog=int(settings.get("backlog", 1024)),
            runtime_mode=RuntimeModes(tuning["runtime_mode"]),
            runtime_threads=int(tuning["runtime_threads"]),
            task_impl=TaskImpl(tuning["task_impl"]),
            backpressure=backpressure,
            http1_settings=http1,
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
