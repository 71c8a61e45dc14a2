"""The RSGI application granian serves: answers from the shared leadership table.

This module runs inside granian's worker process(es), never in the elector's
process.  It maps the named :class:`~fastelect.LeadershipTable` read-only
(:func:`fastelect.attach`) and answers every request from it alone, so a
stalled or frozen elector cannot make it lie: a leadership answer is 200
only while ``now < lease_until`` on the lease clock (CLOCK_BOOTTIME on
Linux), the same test ``is_leader()`` makes, evaluated per request.

Endpoints (``routes`` maps a path to an election name):

``GET <route>``
    200 with the lock-record JSON (``leaderID``, ``leaderAddr``,
    ``lastUpdated`` = now in RFC 3339, ``term``, ``etag``) while this host
    holds a live lease for that election; 404 otherwise (follower, lease
    expired, election not started, table missing); 503 when the table under
    that name is not trusted (another user's, or writable by others).
``GET /healthz``
    200 ``ok`` while every started election's loop completed a cycle within
    its own watchdog bound; 503 naming the stuck election otherwise, or
    when the table is missing or not trusted.
``GET /metrics``
    Prometheus text format (0.0.4): per-election role, term, lease and
    heartbeat gauges and the table's counters, all prefixed ``fastelect_``.

``HEAD`` is answered like ``GET`` without a body (HTTP requires servers to
support it wherever GET is); any other method gets 405 with ``Allow``.
Unknown paths get 404.

Configuration comes from the environment so granian can build the app with
its factory option in every worker: :data:`ENV_TABLE` names the table,
:data:`ENV_ROUTES` holds the routes as a JSON object and
:data:`ENV_TABLE_OWNER` / :data:`ENV_TABLE_GROUP` (optional) the uid / gid
whose tables are trusted besides the worker's own.  The same works from
granian's command line::

    FASTELECT_HEALTH_TABLE=myapp FASTELECT_HEALTH_ROUTES='{"/health/leadership": "default"}' \\
        granian --interface rsgi --factory fastelect.health.app:create_app ...
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from .._core import TableReader, attach, monotonic_ns
from ..errors import ConfigError, FastelectError, UntrustedTableError
from ..metrics import TableBusy as _TableBusy
from ..metrics import exposition, families
from ..metrics import snapshot as _snapshot
from ._process import ENV_MAIN_PID

__all__ = [
    "ENV_MAIN_PID",
    "ENV_ROUTES",
    "ENV_TABLE",
    "ENV_TABLE_GROUP",
    "ENV_TABLE_OWNER",
    "RESERVED_PATHS",
    "HealthApp",
    "create_app",
    "render_metrics",
    "validate_routes",
    "validate_table_name",
]

_log = logging.getLogger(__name__)

#: Environment variable naming the leadership table to attach.
ENV_TABLE = "FASTELECT_HEALTH_TABLE"
#: Environment variable holding the uid whose tables are trusted besides our own.
ENV_TABLE_OWNER = "FASTELECT_HEALTH_TABLE_OWNER"
#: Environment variable holding the gid whose tables are trusted (a group's members).
ENV_TABLE_GROUP = "FASTELECT_HEALTH_TABLE_GROUP"
#: Environment variable holding the routes, a JSON object ``{path: election}``.
ENV_ROUTES = "FASTELECT_HEALTH_ROUTES"
#: Paths the app answers itself; routes may not use them.
RESERVED_PATHS = frozenset({"/healthz", "/metrics"})

# The table's own name rule (see _core): 1-24 of letters, digits, '_', '.', '-'.
_TABLE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,24}$")
_MAX_ELECTION_BYTES = 30
# How often a worker checks that the table's owner is still alive (a syscall),
# so a table re-created by a restarted owner is picked up promptly.
_OWNER_CHECK_INTERVAL_S = 0.25

_JSON = [("content-type", "application/json"), ("cache-control", "no-store")]
_TEXT = [("content-type", "text/plain; charset=utf-8"), ("cache-control", "no-store")]
_METRICS = [
    ("content-type", "text/plain; version=0.0.4; charset=utf-8"),
    ("cache-control", "no-store"),
]
_ALLOW = "GET, HEAD"


def validate_table_name(name: object) -> str:
    """Return ``name`` if it is a valid leadership-table name, else raise ConfigError."""
    if not isinstance(name, str) or not _TABLE_NAME_RE.match(name):
        raise ConfigError(
            "table_name",
            f"must be 1-24 characters of letters, digits, '_', '.', '-', not {name!r}",
        )
    return name


def validate_routes(routes: object) -> dict[str, str]:
    """Check a ``{path: election}`` mapping and return it as a plain dict.

    Paths must start with ``/``, must not be ``/healthz`` or ``/metrics`` and
    must not carry a query string; election names must be 1-30 bytes.
    """
    if not isinstance(routes, Mapping) or not routes:
        raise ConfigError("routes", "must be a non-empty mapping of URL path to election name")
    checked: dict[str, str] = {}
    for path, election in routes.items():
        if not isinstance(path, str) or not path.startswith("/") or "?" in path or "#" in path:
            raise ConfigError("routes", f"path {path!r} must start with '/' and have no query")
        if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in path):
            raise ConfigError("routes", f"path {path!r} must not contain spaces or controls")
        if path in RESERVED_PATHS:
            raise ConfigError("routes", f"path {path!r} is reserved for the server itself")
        if not isinstance(election, str) or not 1 <= len(election.encode()) <= _MAX_ELECTION_BYTES:
            raise ConfigError(
                "routes", f"election for {path!r} must be 1-{_MAX_ELECTION_BYTES} bytes of text"
            )
        checked[path] = election
    return checked


def _die_with_parent(expected_parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux only).

    granian forks workers from its main process; if that process is killed
    outright nothing would stop the workers, which keep the port open.
    """
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl took effect: then we were reparented.
    if expected_parent and os.getppid() != expected_parent:
        os._exit(1)


def render_metrics(reader: TableReader | None, now_ns: int) -> bytes:
    """The table as Prometheus text exposition format 0.0.4.

    ``now_ns`` is the lease clock (CLOCK_BOOTTIME on Linux); gauges derived
    from deadlines use it.  The families are :func:`fastelect.metrics.families`,
    the same ones :class:`fastelect.prometheus.LeadershipCollector` yields.
    """
    return exposition(families(reader, now_ns))


class _Clock:
    """RFC 3339 'now' with microseconds, as bytes; the seconds part is formatted once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = b""

    def now(self) -> bytes:
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        if seconds != self._second:
            text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            self._prefix = text.encode()
            self._second = seconds
        return b"%s%06dZ" % (self._prefix, nanos // 1000)


class _Answer:
    """What the handler last answered for one election, and the seq word it is valid for.

    A 200 body is ``head + now + tail`` (only ``lastUpdated`` changes per
    request); the bytes are exactly ``orjson.dumps`` of the record dict.
    """

    __slots__ = ("head", "not_leader", "seq", "tail")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.head = b""
        self.tail = b""
        self.not_leader = b""


class HealthApp:
    """The RSGI application: one instance per granian worker.

    It holds no leadership state of its own; every answer is read from the
    table named ``table_name`` at request time.  If the table is closed,
    replaced by a restarted owner, or its owner died, the app maps it again
    by name (or answers as if nothing were started while it is missing).

    A table is trusted as :func:`fastelect.attach` trusts it: owned by this
    worker's user or by ``owner`` (or of group ``group``), writable by no
    one else.  One that fails
    is never read: its routes and ``/healthz`` answer 503 naming its owner
    and mode, and it is logged at ERROR once per owner and mode.
    """

    def __init__(
        self,
        table_name: str,
        routes: Mapping[str, str],
        owner: int | None = None,
        group: int | None = None,
    ) -> None:
        self.table_name = validate_table_name(table_name)
        self.routes = validate_routes(routes)
        self.owner = owner
        self.group = group
        #: Why the table under the name was last refused, or None.
        self.refused: UntrustedTableError | None = None
        self._reader: TableReader | None = None
        self._owner_checked = 0.0
        self._clock = _Clock()
        # The answers cached under each slot's seq word.
        self._answers: dict[str, _Answer] = {}

    # -- the table -----------------------------------------------------------------

    def reader(self) -> TableReader | None:
        """The attached table, re-attached when closed or orphaned; None if missing."""
        reader = self._reader
        if reader is not None and not reader.closed:
            now = time.monotonic()
            if now - self._owner_checked < _OWNER_CHECK_INTERVAL_S:
                return reader
            self._owner_checked = now
            if not reader.stale:
                return reader
        # Closed by its owner, or the owner died: map whatever has the name now.
        self._forget()
        try:
            fresh: TableReader = attach(self.table_name, self.owner, group=self.group)
        except UntrustedTableError as exc:
            last = self.refused
            if last is None or (last.owner_uid, last.mode) != (exc.owner_uid, exc.mode):
                _log.error("%s; answering 503", exc, extra={"table": self.table_name})
            self.refused = exc
            return None
        except (FastelectError, OSError):
            self.refused = None
            return None
        self.refused = None
        if fresh.closed or fresh.stale:
            return None
        self._reader = fresh
        self._owner_checked = time.monotonic()
        return fresh

    def _forget(self) -> None:
        """Drop the table's mapping and every answer built from it."""
        self._reader = None
        self._answers.clear()

    # -- RSGI ----------------------------------------------------------------------

    def __rsgi_init__(self, loop: Any) -> None:
        """Map the table once the worker starts (a missing table is retried per request)."""
        self.reader()

    def __rsgi_del__(self, loop: Any) -> None:
        """Drop the mapping when the worker shuts down."""
        self._forget()

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        """Answer one request."""
        if scope.proto != "http":
            # Websockets are off in our granian setup; refuse anything else politely.
            with contextlib.suppress(Exception):
                proto.close(1008)
            return
        path = scope.path
        method = scope.method
        if method not in ("GET", "HEAD"):
            if path in self.routes or path in RESERVED_PATHS:
                proto.response_bytes(405, [*_TEXT, ("allow", _ALLOW)], b"method not allowed\n")
            else:
                proto.response_bytes(404, _TEXT, b"not found\n")
            return
        election = self.routes.get(path)
        if election is not None:
            status, body = self.leadership(election)
            # For HEAD, hyper drops the body itself and keeps its Content-Length.
            proto.response_bytes(status, _JSON, body)
        elif path == "/healthz":
            status, body = self.healthz()
            proto.response_bytes(status, _TEXT, body)
        elif path == "/metrics":
            body = render_metrics(self.reader(), monotonic_ns())
            proto.response_bytes(200, _METRICS, body)
        else:
            proto.response_bytes(404, _TEXT, b"not found\n")

    # -- handlers (plain methods, so they can be tested without a server) --------------

    def leadership(self, election: str) -> tuple[int, bytes]:
        """Status and body for a leadership route.

        Per request: the lease test in C (``is_leader``) and one read of the
        slot's seq word; a new snapshot and JSON encoding only when the slot
        was written since the last answer (a renewal, a heartbeat).
        """
        reader = self.reader()
        if reader is None:
            if self.refused is not None:
                return 503, _not_leader(election, self._untrusted())
            return 404, _not_leader(election, "leadership table is missing")
        # The lease test first: it alone decides "leader", whatever is cached.
        leading = reader.is_leader(election)
        seq = reader.seq(election)
        answer = self._answers.get(election)
        # An odd word is a write in progress; -1 (no slot) is odd too: never cached.
        if answer is not None and seq == answer.seq and seq & 1 == 0:
            # Nothing in the slot changed since that answer was built: the
            # cached fields describe the lease is_leader just found live.
            if leading:
                if answer.head:
                    return 200, answer.head + self._clock.now() + answer.tail
            elif answer.not_leader:
                return 404, answer.not_leader
        return self._answer(reader, election, leading, seq)

    def _answer(
        self, reader: TableReader, election: str, leading: bool, seq: int
    ) -> tuple[int, bytes]:
        """Take a snapshot, answer from it, and cache the answer under ``seq``."""
        try:
            st = _snapshot(reader, election)
        except _TableBusy:
            # Not an answer either way; peers treat it as a failed check.
            return 503, _not_leader(election, "leadership table busy, retry")
        # ``seq`` was read before the snapshot: if a write slipped in between,
        # the next request sees another word and builds again (never the reverse).
        answer = _Answer(seq)
        if st is not None and leading:
            # The snapshot is consistent (seqlock); test its lease again in case
            # it ended between the two reads, so its fields belong to a live lease.
            if monotonic_ns() < st["lease_until_ns"]:
                head = orjson.dumps({"leaderID": st["leader_id"], "leaderAddr": st["leader_addr"]})
                answer.head = head[:-1] + b',"lastUpdated":"'
                answer.tail = b'","term":%d,"etag":%s}' % (st["term"], orjson.dumps(st["etag"]))
                self._answers[election] = answer
                return 200, answer.head + self._clock.now() + answer.tail
            leading = False
        answer.not_leader = _not_leader(election, _why_not(st))
        # A 404 cached under a seq stays right while the lease is not live: the
        # slot's role and state cannot change without a write.
        self._answers[election] = answer
        return 404, answer.not_leader

    def healthz(self) -> tuple[int, bytes]:
        """Status and body for ``/healthz`` (client-go's HealthzAdaptor, per election)."""
        reader = self.reader()
        if reader is None:
            if self.refused is not None:
                return 503, f"{self._untrusted()}\n".encode()
            return 503, f"leadership table {self.table_name!r} is missing\n".encode()
        now = monotonic_ns()
        stuck: list[str] = []
        for election in reader.elections():
            try:
                st = _snapshot(reader, election)
            except _TableBusy:
                continue  # its elector is writing right now: alive
            if st is None or st["state"] != "started" or st["watchdog_ns"] <= 0:
                continue  # stopped, or no cycle bound published yet
            age = now - st["last_cycle_mono_ns"]
            if age > st["watchdog_ns"]:
                stuck.append(
                    f"election {election!r} is stuck: last cycle {age / 1e9:.3f}s ago "
                    f"(bound {st['watchdog_ns'] / 1e9:.3f}s)"
                )
        if stuck:
            return 503, ("\n".join(stuck) + "\n").encode()
        return 200, b"ok\n"

    def _untrusted(self) -> str:
        refused = self.refused
        assert refused is not None
        return (
            f"leadership table {self.table_name!r} is not trusted: owned by uid "
            f"{refused.owner_uid}, mode {refused.mode:04o}"
        )


def _why_not(st: dict[str, Any] | None) -> str:
    if st is None:
        return "election not started"
    if st["state"] != "started":
        return "election stopped"
    if st["role"] == "leader":
        # The slot still says leader but the deadline passed: the elector is
        # stalled or frozen, and the lease alone decides.
        return "lease expired"
    return "not leader"


def _not_leader(election: str, reason: str) -> bytes:
    return orjson.dumps({"election": election, "isLeader": False, "reason": reason})


def create_app() -> HealthApp:
    """granian's factory: build the app from :data:`ENV_TABLE` and :data:`ENV_ROUTES`.

    Called once in each worker process.  Under fastelect's launcher it also
    arranges for the worker to die with granian's main process.
    """
    main_pid = os.environ.get(ENV_MAIN_PID)
    if main_pid:
        _die_with_parent(int(main_pid))
    table = os.environ.get(ENV_TABLE)
    if not table:
        raise ConfigError(ENV_TABLE, "must name the leadership table to serve")
    raw = os.environ.get(ENV_ROUTES, '{"/health/leadership": "default"}')
    try:
        routes = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(ENV_ROUTES, f"must be a JSON object of path to election: {exc}") from exc
    return HealthApp(
        table, routes, _env_id(ENV_TABLE_OWNER, "uid"), _env_id(ENV_TABLE_GROUP, "gid")
    )


def _env_id(variable: str, what: str) -> int | None:
    text = os.environ.get(variable, "")
    if text and not text.isdigit():
        raise ConfigError(variable, f"must be a {what}, not {text!r}")
    return int(text) if text else None
