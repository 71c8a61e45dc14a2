"""The controller that runs the HTTPS health server in its own processes.

Process model::

    elector process (asyncio)            granian main process          worker process(es)
    HealthServer.start() ──spawns──▶ python -m fastelect.health._process ──forks──▶ RSGI app
      supervisor task: restarts it     respawns a dead worker              map the table by name,
      if it exits unexpectedly         SIGTERM → graceful stop             answer from it alone

* The workers never talk to the elector: they read the named shared-memory
  :class:`~fastelect.LeadershipTable`, so a stalled elector loop cannot delay
  or falsify an answer (the lease test runs per request in the worker).
* granian's main process is started in a new session (its own process
  group) with the certificate and key written to a private 0700 temp dir.
  The kernel signals it (``PR_SET_PDEATHSIG``) when the thread that started
  it -- the event loop's -- exits, e.g. because the elector's process was
  killed; it then stops gracefully and deletes that dir itself.  Its workers
  get SIGKILL if it dies.  So nothing outlives its owner.  (Start the server
  from a loop whose thread lives as long as the server should.)
* ``start()`` first binds the address itself (catching "port in use" early
  and choosing a free port for port 0), then returns only after a TLS
  handshake and an HTTP answer came back from the new server.
* ``stop()`` sends SIGTERM (granian stops its workers gracefully, bounded),
  escalates to SIGKILL for the whole process group, and deletes the temp dir.

Hostile clients (docs/health.md, "Limits and timeouts"): HTTP/1.1 only;
``idle_timeout`` closes a connection without a complete request head
(silent after TLS, slow, or idle on keep-alive); ``max_connections`` per
worker is sized from the file-descriptor limit; request heads over 8 KiB get
431.

TLS: granian's ``ssl_protocol_min`` is set to TLS 1.2 (its default is 1.3
only), so Go peers and older load balancers can connect; 1.3 is preferred
when both sides support it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import orjson

from .._core import attach
from ..errors import (
    ConfigError,
    FastelectError,
    HealthServerError,
    LifecycleError,
    TLSError,
    UntrustedTableError,
)
from ..tls import TLSCertificate, server_ssl_context
from ._process import ENV_SETTINGS
from .app import (
    ENV_ROUTES,
    ENV_TABLE,
    ENV_TABLE_GROUP,
    ENV_TABLE_OWNER,
    validate_routes,
    validate_table_name,
)

__all__ = ["HealthServer", "HealthServerConfig"]

_log = logging.getLogger(__name__)

_MAX_WORKERS = 64
# idle_timeout bounds: granian counts milliseconds; nothing lasts past 24 h.
_MIN_IDLE_TIMEOUT_S = 0.05
_MAX_IDLE_TIMEOUT_S = 86400.0
_MAX_CONNECTIONS = 1 << 20
# Restart back-off for an unexpectedly exited granian main process.
_RESTART_DELAY_S = 0.5
_RESTART_DELAY_MAX_S = 10.0
# A process that ran this long before dying resets the back-off.
_RESTART_RESET_AFTER_S = 30.0
# How long granian may take to stop a worker gracefully before killing it.
_WORKER_KILL_TIMEOUT_S = 3
_LOG_TAIL_BYTES = 4000
# The child must import this very fastelect, even when it was put on sys.path
# at run time (tests, zipapps) rather than installed.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class HealthServerConfig:
    """Where and how the HTTPS health server listens.

    ``bind_addr`` is ``host:port`` as Go writes it: ``":8443"`` (every
    interface, IPv6 and IPv4 where the host allows), ``"127.0.0.1:8443"``,
    ``"[::1]:8443"``, ``"localhost:8443"`` (loopback) or a host name such
    as ``"node1.internal:8443"``, resolved when the server starts and bound
    on one of its addresses (an IPv4 one first, as Go does).  Port 0 picks
    a free port; read it from :attr:`HealthServer.port` after start.

    Limits (docs/health.md, "Limits and timeouts"): a connection that has
    finished its TLS handshake must deliver a complete request head within
    ``idle_timeout``, and so must a kept-alive connection between requests;
    otherwise it is closed.  Each worker holds at most ``max_connections``
    connections (sized from the file-descriptor limit when None); past it,
    new connections wait in the kernel's listen queue.  Request heads over
    8 KiB get 431.  HTTP/1.1 only.
    """

    #: ``host:port`` to listen on; host empty, an IP literal or a host name.
    bind_addr: str
    #: The server's certificate chain and key (validated on construction).
    tls_cert: TLSCertificate
    #: granian worker processes. Default 1 (one is plenty for health checks).
    workers: int = 1
    #: Seconds a connection may stay without a complete request head: from
    #: the end of the TLS handshake to the first request's last header byte,
    #: and between requests on a kept-alive connection. Default 5.0, a few
    #: probe intervals' worth of slack for a health check, and short enough
    #: that an idle attacker must keep reconnecting (each time paying for a
    #: TLS handshake) to keep a connection.
    idle_timeout: float = 5.0
    #: Connections one worker may hold at once, or None (the default) for
    #: min(16,384, the file-descriptor limit less 128); the worker raises its
    #: soft ``RLIMIT_NOFILE`` to the hard limit first, and a larger number
    #: than the descriptors allow is clamped (logged).
    max_connections: int | None = None
    #: Whose leadership table to trust besides this process's own user: a uid
    #: or a user name, for a table an elector of another user publishes (say a
    #: root health server beside a sidecar of its own uid). Default None: this
    #: user's tables only. A table owned by anyone else, or writable by group
    #: or others, is refused (docs/health.md, "Whose table is trusted").
    table_owner: int | str | None = None
    #: A group (gid or group name) whose tables are trusted too: every member
    #: of it may then publish the table. Default None.
    table_group: int | str | None = None

    def __post_init__(self) -> None:
        _parse_bind_addr(self.bind_addr)
        self.table_owner_uid()
        self.table_group_gid()
        if not isinstance(self.tls_cert, TLSCertificate):
            raise ConfigError(
                "tls_cert",
                f"must be a fastelect.tls.TLSCertificate, not {type(self.tls_cert).__name__}",
            )
        workers = self.workers
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise ConfigError("workers", f"must be an integer, not {workers!r}")
        if not 1 <= workers <= _MAX_WORKERS:
            raise ConfigError("workers", f"must be between 1 and {_MAX_WORKERS}, not {workers}")
        idle = self.idle_timeout
        if isinstance(idle, bool) or not isinstance(idle, int | float):
            raise ConfigError("idle_timeout", f"must be a number of seconds, not {idle!r}")
        if not _MIN_IDLE_TIMEOUT_S <= idle <= _MAX_IDLE_TIMEOUT_S:  # also refuses NaN
            raise ConfigError(
                "idle_timeout",
                f"must be between {_MIN_IDLE_TIMEOUT_S} and {_MAX_IDLE_TIMEOUT_S:.0f} seconds, "
                f"not {idle}",
            )
        limit = self.max_connections
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int):
                raise ConfigError("max_connections", f"must be an integer or None, not {limit!r}")
            if not 1 <= limit <= _MAX_CONNECTIONS:
                raise ConfigError(
                    "max_connections", f"must be between 1 and {_MAX_CONNECTIONS}, not {limit}"
                )

    def table_owner_uid(self) -> int | None:
        """:attr:`table_owner` as a uid (a user name looked up); None when not set."""
        owner = self.table_owner
        if owner is None:
            return None
        if isinstance(owner, bool) or not isinstance(owner, int | str) or owner == "":
            raise ConfigError("table_owner", f"must be a uid, a user name or None, not {owner!r}")
        if isinstance(owner, int):
            if owner < 0:
                raise ConfigError("table_owner", f"must not be negative, not {owner}")
            return owner
        import pwd

        try:
            return pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise ConfigError("table_owner", f"no such user {owner!r}") from None

    def table_group_gid(self) -> int | None:
        """:attr:`table_group` as a gid (a group name looked up); None when not set."""
        group = self.table_group
        if group is None:
            return None
        if isinstance(group, bool) or not isinstance(group, int | str) or group == "":
            raise ConfigError("table_group", f"must be a gid, a group name or None, not {group!r}")
        if isinstance(group, int):
            if group < 0:
                raise ConfigError("table_group", f"must not be negative, not {group}")
            return group
        import grp

        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError("table_group", f"no such group {group!r}") from None

    @property
    def host(self) -> str:
        """The host part: ``""`` for every interface, an IP literal (no brackets) or a name."""
        return _parse_bind_addr(self.bind_addr)[0]

    @property
    def port(self) -> int:
        """The configured port (0 = pick a free one)."""
        return _parse_bind_addr(self.bind_addr)[1]


def _parse_bind_addr(value: object) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError("bind_addr", f"must be 'host:port' such as ':8443', not {value!r}")
    host, _, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError("bind_addr", f"{host!r} is not an IPv6 address") from None
    elif host == "localhost":
        host = "127.0.0.1"
    elif host:
        try:
            parsed = ipaddress.ip_address(host)
        except ValueError:
            if not _HOST_NAME_RE.match(host) or len(host) > 253:
                raise ConfigError(
                    "bind_addr",
                    f"host must be empty, an IP address or a host name, not {host!r}",
                ) from None
        else:
            if parsed.version == 6:
                raise ConfigError("bind_addr", f"write an IPv6 host in brackets: '[{host}]:port'")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError("bind_addr", f"port must be 0-65535, not {port_text!r}")
    return host, int(port_text)


# Dot-separated labels of letters, digits, '-' and '_' (as /etc/hosts allows).
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_HOST_NAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")
# Bound on resolving a host name in bind_addr.
_RESOLVE_TIMEOUT_S = 5.0


async def _resolve_bind_host(host: str) -> str:
    """``host`` as an address to bind: itself unless it is a name, which is resolved.

    Raises :class:`HealthServerError` if the name does not resolve in time.
    """
    if not host:
        return host
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return host
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(_RESOLVE_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        raise HealthServerError(
            f"cannot listen on {host}: the host name does not resolve ({reason})"
        ) from exc
    addresses = [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not addresses:
        raise HealthServerError(f"cannot listen on {host}: the host name has no IP address")
    # Go's listener takes an IPv4 address of the name first.
    return next((a for a in addresses if ":" not in a), addresses[0])


def _reserve_port(host: str, port: int) -> tuple[str, int]:
    """Bind ``host:port`` once to see that it is free (and which port 0 gives).

    granian binds with ``SO_REUSEPORT``, which would let it share a port
    with another ``SO_REUSEPORT`` listener of the same user and so answer for
    the wrong table; a plain bind refuses any existing listener.  Returns the
    host granian should bind and the port.
    """
    candidates = [host] if host else ["::", "0.0.0.0"]
    last: OSError | None = None
    for candidate in candidates:
        family = socket.AF_INET6 if ":" in candidate else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # no IPv6 on this host
            last = exc
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and candidate == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind((candidate, port))
                sock.listen(1)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise HealthServerError(
                        f"cannot listen on {_fmt(candidate, port)}: port {port} is already in use"
                    ) from exc
                last = exc
                continue
            bound_port: int = sock.getsockname()[1]
            return candidate, bound_port
    raise HealthServerError(f"cannot listen on {_fmt(host, port)}: {last}") from last


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _probe_hosts(host: str) -> list[str]:
    """Where to reach a server bound to ``host`` from this machine."""
    if host == "::":
        # Dual-stack normally; but a host may lack either loopback address.
        return ["127.0.0.1", "::1"]
    if host in ("", "0.0.0.0"):
        return ["127.0.0.1"]
    return [host]


def _probe_context() -> ssl.SSLContext:
    # Readiness only asks "does it speak TLS and HTTP yet?"; trust is the
    # clients' business, and the certificate may chain to a CA we do not hold.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def _answers_http(host: str, port: int, ctx: ssl.SSLContext, within: float) -> bool:
    """True if ``host:port`` completes a TLS handshake and answers HTTP ``within`` seconds."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            line = await reader.readline()
            return line.startswith(b"HTTP/")
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _kill_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _cleanup(directory: str, pids: list[int]) -> None:
    """Last-resort cleanup for a server dropped without stop() (at exit or GC)."""
    for pid in pids:
        _kill_group(pid, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)


class HealthServer:
    """The granian HTTPS health server for the elections in one leadership table.

    ``routes`` maps URL paths to election names, e.g.
    ``{"/health/leadership/cluster": "cluster", "/health/leadership/shard":
    "shard"}`` or ``{"/health/leadership": "default"}``; ``/healthz`` and
    ``/metrics`` are always served.  ``table_name`` is the name given to the
    :class:`~fastelect.LeadershipTable` the electors publish into; it may be
    created before or after the server starts (routes answer 404 until then).

    Use ``await start()`` / ``await stop()`` or ``async with``.  The server
    runs in its own processes (see the module docs) and is restarted if it
    dies; :attr:`restarts` counts that.
    """

    def __init__(
        self,
        config: HealthServerConfig,
        table_name: str,
        routes: Mapping[str, str],
        *,
        start_timeout: float = 20.0,
    ) -> None:
        if not isinstance(config, HealthServerConfig):
            raise TypeError("config must be a HealthServerConfig")
        self.config = config
        self.table_name = validate_table_name(table_name)
        self.routes = validate_routes(routes)
        if not start_timeout > 0:
            raise ConfigError("start_timeout", f"must be positive, not {start_timeout}")
        self._start_timeout = float(start_timeout)
        self._host = config.host
        self._port = config.port
        self._dir: str | None = None
        self._cert_path: Path | None = None
        self._key_path: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: str | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._started = False
        self._restarts = 0
        self._launched_at = 0.0
        self._pids: list[int] = []
        self._finalizer: weakref.finalize[[str, list[int]], HealthServer] | None = None
        self._extra = {"health": config.bind_addr, "table": table_name}

    # -- public API ------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (the chosen one when configured with 0)."""
        return self._port

    @property
    def host(self) -> str:
        """The host granian binds (``"::"`` or ``"0.0.0.0"`` for every interface)."""
        return self._host

    @property
    def running(self) -> bool:
        """True between a successful start() and stop()."""
        return self._started

    @property
    def pid(self) -> int | None:
        """The pid of granian's main process, or None when not running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def restarts(self) -> int:
        """How many times the supervisor restarted an exited granian main process."""
        return self._restarts

    def worker_pids(self) -> list[int]:
        """granian's worker processes (children of its main process); Linux only."""
        main = self.pid
        if main is None:
            return []
        found: list[int] = []
        with contextlib.suppress(OSError):
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    stat = Path(entry.path, "stat").read_text()
                except OSError:
                    continue
                # Field 4 (ppid) follows the parenthesised command name.
                fields = stat[stat.rfind(")") + 2 :].split()
                if len(fields) > 1 and fields[1] == str(main):
                    found.append(int(entry.name))
        return sorted(found)

    async def start(self) -> None:
        """Start serving; returns once the server completes TLS handshakes.

        Raises :class:`HealthServerError` if the port is taken, the
        certificate or key is unusable, or granian fails to come up (its log
        tail is in the message); nothing is left running then.
        :class:`LifecycleError` if already started.
        """
        if self._started or self._proc is not None:
            raise LifecycleError("health server is already running")
        self._check_table_trust()
        self._stopping = False
        cert = self.config.tls_cert
        try:
            # Validate again now (expiry) and exactly as OpenSSL will load it.
            TLSCertificate.from_pem(cert.cert_pem, cert.key_pem)
            server_ssl_context(cert)
        except TLSError as exc:
            raise HealthServerError(f"health server certificate is unusable: {exc}") from exc
        self._dir = tempfile.mkdtemp(prefix="fastelect-health-")  # mode 0700
        self._finalizer = weakref.finalize(self, _cleanup, self._dir, self._pids)
        try:
            self._cert_path, self._key_path = cert.write_private(self._dir, name="health")
            self._log_file = str(Path(self._dir, "granian.log"))
            attempts = 3 if self.config.port == 0 else 1
            bind_host = await _resolve_bind_host(self.config.host)
            for attempt in range(attempts):
                host, port = _reserve_port(bind_host, self.config.port)
                self._host, self._port = host, port
                try:
                    await self._launch()
                    break
                except HealthServerError:
                    # Port 0: someone may have taken the port between our probe
                    # and granian's bind; try another one.
                    if attempt + 1 == attempts or not self._port_clash():
                        raise
        except BaseException:
            await self._teardown()
            raise
        self._started = True
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"fastelect-health-{self._port}"
        )
        _log.info(
            "health server listening on https://%s (table %s, %d worker(s), pid %s)",
            _fmt(self._host, self._port),
            self.table_name,
            self.config.workers,
            self.pid,
            extra=self._extra,
        )

    def _check_table_trust(self) -> None:
        """Refuse to serve a table under our name that we would not trust.

        Raises :class:`UntrustedTableError` (its owner and mode).  A missing
        table is fine: the elector may start after the server.
        """
        try:
            attach(
                self.table_name,
                self.config.table_owner_uid(),
                group=self.config.table_group_gid(),
            ).close()
        except UntrustedTableError:
            raise
        except (FastelectError, OSError):
            pass  # missing, or not a table (yet): the workers look again per request

    async def stop(self) -> None:
        """Stop gracefully; leaves no process and deletes the certificate files.

        Safe to call twice, and after a failed start.
        """
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        was_running = self._started
        self._started = False
        await self._teardown()
        if was_running:
            _log.info("health server on port %d stopped", self._port, extra=self._extra)

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the process -----------------------------------------------------------------

    async def _launch(self) -> None:
        """Spawn granian's main process and wait until it answers over TLS."""
        assert self._cert_path is not None and self._key_path is not None
        assert self._log_file is not None
        settings = {
            "host": self._host,
            "port": self._port,
            "workers": self.config.workers,
            "dir": self._dir,
            "cert": str(self._cert_path),
            "key": str(self._key_path),
            "parent_pid": os.getpid(),
            "kill_timeout": _WORKER_KILL_TIMEOUT_S,
            "log_level": "info",
            "idle_timeout_ms": max(1, round(self.config.idle_timeout * 1000)),
            "max_connections": self.config.max_connections,
        }
        env = dict(os.environ)
        env[ENV_SETTINGS] = orjson.dumps(settings).decode()
        env[ENV_TABLE] = self.table_name
        owner = self.config.table_owner_uid()
        if owner is None:
            env.pop(ENV_TABLE_OWNER, None)
        else:
            env[ENV_TABLE_OWNER] = str(owner)
        group = self.config.table_group_gid()
        if group is None:
            env.pop(ENV_TABLE_GROUP, None)
        else:
            env[ENV_TABLE_GROUP] = str(group)
        env[ENV_ROUTES] = orjson.dumps(self.routes).decode()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p
        )
        # granian's output goes to a file in the private dir (a pipe we failed
        # to drain could block its workers); start errors quote its tail.
        log = os.open(self._log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fastelect.health._process",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                # Its own process group: stop() can reach stragglers, and a
                # Ctrl-C meant for the elector does not kill it first.
                start_new_session=True,
            )
        finally:
            os.close(log)
        proc = self._proc
        self._pids.append(proc.pid)
        self._launched_at = time.monotonic()
        ctx = _probe_context()
        hosts = _probe_hosts(self._host)
        deadline = time.monotonic() + self._start_timeout
        while True:
            for host in hosts:
                if await _answers_http(host, self._port, ctx, within=1.0):
                    return
            if proc.returncode is not None:
                await self._reap()
                raise HealthServerError(
                    f"health server on {_fmt(self._host, self._port)} exited during start "
                    f"(code {proc.returncode}):\n{self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                await self._reap()
                raise HealthServerError(
                    f"health server on {_fmt(self._host, self._port)} did not accept TLS "
                    f"connections within {self._start_timeout:.0f}s:\n{self._log_tail()}"
                )
            await asyncio.sleep(0.02)

    async def _reap(self) -> None:
        """Stop the current granian process tree, gracefully first."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(_WORKER_KILL_TIMEOUT_S + 2.0):
                    await proc.wait()
            except TimeoutError:
                _log.warning(
                    "health server pid %d did not stop in time; killing it",
                    proc.pid,
                    extra=self._extra,
                )
                _kill_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        # Anything left in its process group (a worker that missed the news) goes too.
        _kill_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ValueError):
            self._pids.remove(proc.pid)

    async def _teardown(self) -> None:
        await self._reap()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._cert_path = self._key_path = None

    def _port_clash(self) -> bool:
        return "Address already in use" in self._log_tail() or "os error 98" in self._log_tail()

    def _log_tail(self) -> str:
        if self._log_file is None:
            return "(no log)"
        try:
            with open(self._log_file, "rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - _LOG_TAIL_BYTES))
                return log.read().decode(errors="replace").strip() or "(empty log)"
        except OSError:
            return "(no log)"

    async def _supervise(self) -> None:
        """Restart granian's main process if it exits while we are running.

        granian respawns dead workers itself; this covers the main process
        dying (killed, or granian giving up after a worker crash loop).
        """
        delay = _RESTART_DELAY_S
        while not self._stopping:
            proc = self._proc
            if proc is not None:
                code = await proc.wait()
                if self._stopping:
                    return
                ran = time.monotonic() - self._launched_at
                _log.error(
                    "health server process %d exited unexpectedly (code %s) after %.1fs; "
                    "restarting in %.1fs. Log tail:\n%s",
                    proc.pid,
                    code,
                    ran,
                    delay,
                    self._log_tail(),
                    extra=self._extra,
                )
                await self._reap()
                if ran >= _RESTART_RESET_AFTER_S:
                    delay = _RESTART_DELAY_S
            await asyncio.sleep(delay)
            try:
                await self._launch()
            except HealthServerError as exc:
                _log.error("health server restart failed: %s", exc, extra=self._extra)
                delay = min(delay * 2, _RESTART_DELAY_MAX_S)
                continue
            self._restarts += 1
            _log.warning(
                "health server restarted on port %d (pid %s)",
                self._port,
                self.pid,
                extra=self._extra,
            )
            delay = min(delay * 2, _RESTART_DELAY_MAX_S)
