"""One manager for a cluster election and a shard election, with one health server.

A port of the Go ``election`` package.  A server belongs to one *cluster* and
one *shard* of it.  The :class:`Manager` runs two independent elections:

* the **cluster** election, among every server of the cluster, with elector
  id ``f"{shard_id}-{server_id}"`` (unique across shards) and a lock record
  ``leader.json`` in the cluster's storage;
* the **shard** election, among the servers of one shard, with elector id
  ``server_id`` and a lock record ``leader.json`` in the shard's storage.  It
  always runs in peer mode: stable followers ask the leader's health endpoint
  instead of reading storage.

Both publish into one named :class:`~fastelect.LeadershipTable` (slots
``"cluster"`` and ``"shard"``), which the one HTTPS health server reads to
answer ``/health/leadership/cluster`` and ``/health/leadership/shard``, and
which any other process on the host can :func:`~fastelect.attach` to by
:attr:`Manager.table_name`.

Guarantees are those of :class:`~fastelect.Elector`, per election: at most
one leader at any instant given storage with atomic conditional writes and
clocks whose *rates* agree within the safety margin; ``is_*_leader()`` turns
False by itself when the lease ends; each leadership's ``term`` (see
:attr:`Manager.cluster_elector`) is a fencing token.  The two elections are
independent: losing one never affects the other.

The manager does not own the storages: :meth:`Manager.stop` leaves them open,
as Go's does, so one storage client can outlive (or be shared beyond) the
manager.  Close them yourself after ``stop()``.  Like the seed's, a storage
needs only ``get`` and ``put_if_match`` (s3lect's shape); see
:func:`~fastelect.storage.as_storage`.

One deliberate difference from the seed: its ``InfrequentInterval`` is how
often an idle follower checks leadership; ours polls an idle follower every
min(infrequent_interval, leader_timeout), so a crashed leader is noticed
within one lease (still a third of s3lect's reads with the defaults).
Electors built by an :class:`ElectorFactory` are visible to the health
server whatever built them (see there for what that guarantees).

Example::

    manager = Manager(ManagerConfig("prod", "shard-1", "node-a", "10.0.1.42:8443"))
    await manager.start_health_server(HealthServerConfig(":8443", cert))
    await manager.start_cluster_election(ElectionConfig(cluster_storage))
    await manager.start_shard_election(ElectionConfig(shard_storage, ca_cert=ca_pem))
    await manager.wait_for_cluster_election()
    ...
    if manager.is_cluster_leader():
        ...
    await manager.stop()
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import logging
import os
import re
import time
from collections.abc import Awaitable, Sequence
from typing import Protocol, Self

from ._core import Campaign, LeadershipTable, Role, Slot, monotonic_ns
from .config import Duration, ElectorConfig, Hook, to_seconds
from .elector import Elector
from .errors import ConfigError, FastelectError, LifecycleError, TLSError
from .health import HealthServer, HealthServerConfig
from .storage.base import MinimalStorage, Storage, as_storage
from .tls import load_ca_pem

__all__ = [
    "CLUSTER",
    "CLUSTER_HEALTH_PATH",
    "LOCKFILE_PATH",
    "SHARD",
    "SHARD_HEALTH_PATH",
    "ElectionConfig",
    "ElectorFactory",
    "HealthServerConfig",
    "ManagedElector",
    "Manager",
    "ManagerConfig",
    "ManagerStopError",
]

#: Name of the cluster election (its slot in the leadership table).
CLUSTER = "cluster"
#: Name of the shard election (its slot in the leadership table).
SHARD = "shard"
#: Key of the lock record in each election's storage.
LOCKFILE_PATH = "leader.json"
#: Health path of the cluster election, served and checked by peers.
CLUSTER_HEALTH_PATH = "/health/leadership/cluster"
#: Health path of the shard election, served and checked by peers.
SHARD_HEALTH_PATH = "/health/leadership/shard"

_HEALTH_PATHS = {CLUSTER: CLUSTER_HEALTH_PATH, SHARD: SHARD_HEALTH_PATH}
# The leadership table's own rule for names (they become /dev/shm/fastelect.<name>).
_TABLE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,24}$")

# Defaults for ElectionConfig's durations (s3lect's), in seconds.
_DEFAULT_FREQUENT = 5.0
_DEFAULT_INFREQUENT = 30.0
_DEFAULT_LEADER_TIMEOUT = 15.0


def _check_id(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(field, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ConfigError(field, "must not be empty")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ConfigError(field, "must not contain control characters")
    return value


@dataclasses.dataclass(frozen=True)
class ManagerConfig:
    """Who this server is; validated on construction (ConfigError names the field)."""

    #: The cluster this server belongs to. Required.
    cluster_id: str
    #: The shard of the cluster this server belongs to (e.g. a zone shard id). Required.
    shard_id: str
    #: This server's id, unique within its shard. Required.
    server_id: str
    #: ``host:port`` where peers reach this server's health server; required by
    #: the shard election (always peer mode) and by cluster peer mode. Default "".
    server_addr: str = ""
    #: Logger for election events, also handed to both electors. Default None =
    #: ``logging.getLogger("fastelect.election")`` here, the electors' own otherwise.
    logger: logging.Logger | None = None
    #: Name of the shared-memory leadership table (1-24 of ``A-Za-z0-9_.-``).
    #: Default None = derived from the three ids and the process id.
    table_name: str | None = None

    def __post_init__(self) -> None:
        _check_id("cluster_id", self.cluster_id)
        _check_id("shard_id", self.shard_id)
        _check_id("server_id", self.server_id)
        if not isinstance(self.server_addr, str):
            raise ConfigError("server_addr", "must be a string (host:port)")
        # Both elector ids must pass the elector's own rules (length, characters);
        # checking here reports them at construction, under the field to change.
        for field, elector_id in (
            ("server_id", self.server_id),
            ("shard_id", self.cluster_elector_id),
        ):
            try:
                ElectorConfig(LOCKFILE_PATH, elector_id, self.server_addr)
            except ConfigError as exc:
                if exc.field == "server_addr":
                    raise
                problem = str(exc).removeprefix(f"{exc.field}: ")
                raise ConfigError(
                    field, f"makes the elector id {elector_id!r}, which {problem}"
                ) from exc
        if self.logger is not None and not isinstance(self.logger, logging.Logger):
            raise ConfigError("logger", "must be a logging.Logger or None")
        if self.table_name is not None and (
            not isinstance(self.table_name, str) or not _TABLE_NAME_RE.match(self.table_name)
        ):
            raise ConfigError(
                "table_name", "must be 1-24 characters of letters, digits, '_', '.', '-'"
            )

    @property
    def cluster_elector_id(self) -> str:
        """This server's id in the cluster election: ``f"{shard_id}-{server_id}"``."""
        return f"{self.shard_id}-{self.server_id}"

    @property
    def shard_elector_id(self) -> str:
        """This server's id in the shard election: ``server_id``."""
        return self.server_id


def _interval(field: str, value: Duration | None, default: float) -> float:
    # Go's zero value means "use the default"; None is its Python spelling.
    if value is None:
        return default
    seconds = to_seconds(field, value)
    if seconds < 0:
        raise ConfigError(field, f"must not be negative, not {seconds}")
    return default if seconds == 0 else seconds


@dataclasses.dataclass
class ElectionConfig:
    """How one election (cluster or shard) runs; validated on construction.

    Durations are float seconds or :class:`~datetime.timedelta`; ``None`` or
    zero takes the default.  They are stored as float seconds.
    """

    #: Where the lock record ``leader.json`` lives: a :class:`~fastelect.Storage`,
    #: or any object with ``get`` and ``put_if_match`` as the seed's s3lect
    #: storage (see :func:`~fastelect.storage.as_storage`). Not closed by the manager.
    storage: Storage | MinimalStorage
    #: Check a stable leader through its health endpoint instead of storage.
    #: Default False; the shard election ignores it (always on).
    peer_mode: bool = False
    #: PEM bytes of the CA that signs the peers' health-server certificates;
    #: required with peer mode (so always for the shard election). Default None.
    ca_cert: bytes | None = None
    #: How often a leader renews and a follower polls in transitions. Default 5 s.
    frequent_interval: Duration | None = _DEFAULT_FREQUENT
    #: How often a follower polls when the leader is stable. Default 30 s.
    #: A deliberate difference from the seed, whose idle followers poll every
    #: infrequent_interval: ours poll every min(infrequent_interval,
    #: leader_timeout), so a crashed leader is noticed within one lease.
    infrequent_interval: Duration | None = _DEFAULT_INFREQUENT
    #: The lease: how long a leader is trusted without a renewal. Default 15 s.
    leader_timeout: Duration | None = _DEFAULT_LEADER_TIMEOUT
    #: Called (sync or async, no arguments) after this server wins; raising
    #: makes it release the lock again. Wrapped to log first. Default None.
    on_acquire: Hook | None = None
    #: Called once whenever a leadership of this server ends. Wrapped to log
    #: first. Default None.
    on_lose: Hook | None = None

    def __post_init__(self) -> None:
        # Raises ConfigError naming "storage" unless it has get and put_if_match.
        as_storage(self.storage)
        if not isinstance(self.peer_mode, bool):
            raise ConfigError("peer_mode", "must be True or False")
        if self.ca_cert is not None:
            if not isinstance(self.ca_cert, bytes | bytearray) or not self.ca_cert:
                raise ConfigError("ca_cert", "must be non-empty PEM bytes or None")
            try:
                # Fail here, naming the field, rather than when the elector starts.
                self.ca_cert = load_ca_pem(bytes(self.ca_cert))
            except TLSError as exc:
                raise ConfigError("ca_cert", str(exc)) from exc
        if self.peer_mode and self.ca_cert is None:
            raise ConfigError("ca_cert", "is required when peer_mode is on")
        self.frequent_interval = _interval(
            "frequent_interval", self.frequent_interval, _DEFAULT_FREQUENT
        )
        self.infrequent_interval = _interval(
            "infrequent_interval", self.infrequent_interval, _DEFAULT_INFREQUENT
        )
        self.leader_timeout = _interval(
            "leader_timeout", self.leader_timeout, _DEFAULT_LEADER_TIMEOUT
        )
        for name in ("on_acquire", "on_lose"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise ConfigError(name, f"must be callable or None, not {hook!r}")
        # The timing invariants (frequent < lease, ...) are the elector's; run its
        # checks now so a bad config fails here, under the same field names.
        ElectorConfig(
            LOCKFILE_PATH,
            "validating",
            frequent_interval=self.frequent_interval,
            infrequent_interval=self.infrequent_interval,
            leader_timeout=self.leader_timeout,
        )

    # Normalised views (float seconds), as ElectorConfig has them.

    @property
    def frequent(self) -> float:
        """frequent_interval in seconds."""
        return to_seconds("frequent_interval", self.frequent_interval or _DEFAULT_FREQUENT)

    @property
    def infrequent(self) -> float:
        """infrequent_interval in seconds."""
        return to_seconds("infrequent_interval", self.infrequent_interval or _DEFAULT_INFREQUENT)

    @property
    def lease(self) -> float:
        """leader_timeout in seconds."""
        return to_seconds("leader_timeout", self.leader_timeout or _DEFAULT_LEADER_TIMEOUT)

    def _elector_config(
        self,
        elector_id: str,
        server_addr: str,
        *,
        peer_mode: bool | None = None,
        peer_health_path: str = "/health/leadership",
        on_acquire: Hook | None = None,
        on_lose: Hook | None = None,
    ) -> ElectorConfig:
        """The :class:`~fastelect.ElectorConfig` for one elector of this election."""
        return ElectorConfig(
            lockfile_path=LOCKFILE_PATH,
            server_id=elector_id,
            server_addr=server_addr,
            frequent_interval=self.frequent,
            infrequent_interval=self.infrequent,
            leader_timeout=self.lease,
            peer_mode=self.peer_mode if peer_mode is None else peer_mode,
            peer_ca_cert=self.ca_cert,
            peer_health_path=peer_health_path,
            on_acquire=on_acquire,
            on_lose=on_lose,
        )


class ManagedElector(Protocol):
    """What the manager needs of an elector; :class:`~fastelect.Elector` is one."""

    async def start(self) -> None:
        """Check the storage and start campaigning in the background."""
        ...

    async def stop(self) -> None:
        """Stop campaigning, releasing the record if leader; safe to call twice."""
        ...

    def is_leader(self) -> bool:
        """True only while this elector holds an unexpired lease."""
        ...

    async def wait_for_election(self) -> object:
        """Return once the first election cycle has completed."""
        ...

    def enable_peer_mode(self, ca_cert: bytes) -> None:
        """Check a stable leader through its health endpoint instead of storage."""
        ...


class ElectorFactory(Protocol):
    """Makes the manager's electors; the default is :class:`~fastelect.Elector`.

    Tests pass a fake.  ``table``/``election`` say where the elector may
    publish its leadership (the manager's table, slot ``"cluster"`` or
    ``"shard"``), as :class:`~fastelect.Elector` does.  An elector that has
    not claimed that slot once started is *mirrored* into it by the manager,
    so the health server answers for it too: every 25 ms the manager asks
    its ``is_leader()`` and publishes the answer as a 50 ms lease counted
    from before the question.  The health endpoint thus answers "leader" at
    an instant t only if ``is_leader()`` returned True to a call begun after
    t - 50 ms, even if the manager's loop stalls; while the loop runs, a
    change shows within 25 ms.  Optional attributes ``term`` (int, published
    when it grows), ``leader_id`` and ``leader_addr`` (str, the leader a
    follower sees) are published too.
    """

    def __call__(
        self,
        config: ElectorConfig,
        storage: Storage,
        logger: logging.Logger | None,
        *,
        table: LeadershipTable,
        election: str,
    ) -> ManagedElector:
        """Build (not start) an elector for ``config`` on ``storage``."""
        ...


class ManagerStopError(FastelectError, ExceptionGroup[Exception]):
    """:meth:`Manager.stop` failed in one or more parts; ``exceptions`` holds each error.

    Both a :class:`~fastelect.FastelectError` (its message lists every
    failure) and an :class:`ExceptionGroup` (for ``except*``).
    """

    def __new__(cls, message: str, exceptions: Sequence[Exception]) -> Self:
        return super().__new__(cls, message, exceptions)

    def __init__(self, message: str, exceptions: Sequence[Exception]) -> None:
        super().__init__(message, exceptions)

    # ``except*`` and split() rebuild groups through derive(); keep our type.
    def derive(self, excs: Sequence[Exception]) -> ManagerStopError:  # type: ignore[override]
        """A group of the same type holding ``excs``."""
        return ManagerStopError(self.message, excs)


# The mirror of an elector that does not publish into the table itself: how
# often it asks is_leader(), and the lease each True answer buys.  The lease
# must outlast one tick plus scheduling jitter, and is the longest the health
# endpoint can go on saying "leader" after the elector stopped saying so.
_MIRROR_INTERVAL_NS = 25_000_000
_MIRROR_LEASE_NS = 50_000_000


class _Mirror:
    """Publishes a factory-built elector's leadership into its table slot.

    Drives the compiled :class:`~fastelect._core.Campaign` on the slot as if
    every ``is_leader() == True`` answer were a successful write, with a
    lease of ``_MIRROR_LEASE_NS`` from the instant *before* the question.
    The slot's lease therefore never outlives the last True answer by more
    than that, whatever happens to this task; the health server applies the
    same lease test per request.
    """

    def __init__(
        self,
        elector: ManagedElector,
        slot: Slot,
        server_id: str,
        server_addr: str,
        watchdog_ns: int,
        log: logging.Logger,
        extra: dict[str, str],
    ) -> None:
        self._elector = elector
        self._slot = slot
        self._server_id = server_id
        self._server_addr = server_addr
        self._watchdog_ns = watchdog_ns
        self._log = log
        self._extra = extra
        self._campaign = Campaign(
            slot,
            server_id,
            server_addr,
            _MIRROR_LEASE_NS,
            _MIRROR_INTERVAL_NS,
            _MIRROR_INTERVAL_NS,
            0,
            now_ns=monotonic_ns(),
        )
        # Who the slot names now, so a follower's view is written only on change.
        self._published: tuple[str, str] | None = None
        self._failing = False

    def sync(self) -> None:
        """Publish the elector's current answer (one tick)."""
        c = self._campaign
        now = monotonic_ns()  # before asking: the lease counts from here
        leading = self._ask()
        c.poll(now)  # lets a lapsed mirror lease end first
        if leading:
            if c.role == Role.LEADER:
                c.begin_write(now)  # a renewal
            else:
                self._acquire(now)
            c.write_succeeded(now, "", time.time_ns())
            self._published = (self._server_id, self._server_addr)
        else:
            c.step_down(now)
            self._follow(now)
        c.take_events()
        self._slot.heartbeat(now, self._watchdog_ns)

    def stop(self) -> None:
        """Mark the slot stopped: no lease, from now on."""
        if not self._slot.closed:
            self._campaign.stop(monotonic_ns())

    def _ask(self) -> bool:
        try:
            leading = bool(self._elector.is_leader())
        except Exception:
            if not self._failing:  # once per streak, not every 25 ms
                self._log.exception(
                    "elector.is_leader() raised; publishing 'not leader'", extra=self._extra
                )
            self._failing = True
            return False
        self._failing = False
        return leading

    def _acquire(self, now: int) -> None:
        # A released record carrying term - 1 makes the core's next write a
        # takeover with the elector's own term (or, if that would not grow,
        # the next one: published terms only grow).
        c = self._campaign
        term = getattr(self._elector, "term", None)
        seen = term - 1 if isinstance(term, int) and term > 0 else c.max_term_seen
        c.observe_record(
            now, time.time_ns(), "", self._server_id, self._server_addr, seen, 0, 0, True, 0
        )
        c.begin_write(now)

    def _follow(self, now: int) -> None:
        leader_id = getattr(self._elector, "leader_id", "")
        leader_addr = getattr(self._elector, "leader_addr", "")
        leader_id = leader_id if isinstance(leader_id, str) else ""
        leader_addr = leader_addr if isinstance(leader_addr, str) else ""
        if leader_id == self._server_id:
            leader_id = leader_addr = ""  # our own lease lapsed: name nobody
        if self._published == (leader_id, leader_addr):
            return
        c = self._campaign
        if leader_id:
            c.observe_record(
                now, time.time_ns(), "", leader_id, leader_addr, c.max_term_seen, 0, 0, False, 0
            )
        else:
            c.observe_missing(now)
        self._published = (leader_id, leader_addr)


@dataclasses.dataclass(eq=False)
class _Running:
    """One election the manager started (or is starting)."""

    name: str
    elector_id: str
    elector: ManagedElector
    #: The storage as configured (for identity checks); the elector gets it adapted.
    storage: Storage | MinimalStorage
    started: bool = False
    #: Publishes the leadership of an elector that does not write the table itself.
    mirror: _Mirror | None = None
    mirror_task: asyncio.Task[None] | None = None


def _default_table_name(cfg: ManagerConfig) -> str:
    # Ids may be long and hold any character; the table name may not. A digest
    # keeps it short and stable per identity, the pid keeps processes apart.
    digest = hashlib.blake2b(
        "\0".join((cfg.cluster_id, cfg.shard_id, cfg.server_id)).encode(), digest_size=5
    ).hexdigest()
    return f"m{digest}-{os.getpid() % 10_000_000}"


class Manager:
    """Runs this server's cluster and shard elections and their health server.

    Build it, start the elections (and, for peer mode, the health server) in
    any order, ask :meth:`is_cluster_leader` / :meth:`is_shard_leader` as
    often as you like, and :meth:`stop` it at the end (``async with
    Manager(cfg) as manager:`` stops it on exit; it starts nothing by
    itself).  A stopped manager cannot be started again; make a new one.
    Every coroutine must run on the one event loop that started the
    elections; ``is_cluster_leader()``/``is_shard_leader()`` may be called
    from any thread.
    """

    def __init__(self, cfg: ManagerConfig, elector_factory: ElectorFactory | None = None) -> None:
        if not isinstance(cfg, ManagerConfig):
            raise TypeError("cfg must be a ManagerConfig")
        self._cfg = cfg
        self._factory: ElectorFactory = elector_factory if elector_factory is not None else Elector
        self._log = cfg.logger or logging.getLogger(__name__)
        self._table_name = cfg.table_name or _default_table_name(cfg)
        self._table: LeadershipTable | None = None  # created on first need
        self._cluster: _Running | None = None
        self._shard: _Running | None = None
        self._health: HealthServer | None = None
        self._health_starting = False
        self._stopped = False
        self._stop_done = asyncio.Event()
        # docs/safety.md#rule-7-nothing-inherited-through-fork-leads: inert in a forked child.
        self._pid = os.getpid()

    # -- leadership: the hot path ---------------------------------------------------

    def is_cluster_leader(self) -> bool:
        """True only while this server holds the cluster lease, evaluated now.

        False before the cluster election starts and after :meth:`stop`.
        While it runs, the instance attribute is the elector's own compiled
        check (no Python frame), so it costs what ``Elector.is_leader`` costs.
        """
        return False

    def is_shard_leader(self) -> bool:
        """True only while this server holds the shard lease, evaluated now.

        False before the shard election starts and after :meth:`stop`; as
        cheap as ``Elector.is_leader`` while it runs.
        """
        return False

    # -- introspection ----------------------------------------------------------------

    @property
    def config(self) -> ManagerConfig:
        """The manager's configuration."""
        return self._cfg

    @property
    def table_name(self) -> str:
        """Name of the shared-memory table; ``fastelect.attach(name)`` reads it."""
        return self._table_name

    @property
    def cluster_elector(self) -> ManagedElector | None:
        """The running cluster elector (for ``term``, ``status()``, ...), else None."""
        return self._cluster.elector if self._cluster and self._cluster.started else None

    @property
    def shard_elector(self) -> ManagedElector | None:
        """The running shard elector, else None."""
        return self._shard.elector if self._shard and self._shard.started else None

    @property
    def health_server(self) -> HealthServer | None:
        """The running health server (its ``port``, ...), else None."""
        return self._health

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` has been called."""
        return self._stopped

    # -- starting -------------------------------------------------------------------

    async def start_cluster_election(self, cfg: ElectionConfig) -> None:
        """Create and start the cluster election.

        Elector id ``f"{shard_id}-{server_id}"``, lock ``leader.json`` in
        ``cfg.storage``, peer health path ``/health/leadership/cluster``, peer
        mode as ``cfg.peer_mode`` says.  Raises LifecycleError if it was
        already started or the manager is stopped, ConfigError for a bad
        config, and the storage's error if the storage is unusable (the
        election is then not started and may be tried again).
        """
        self._check_election_config(cfg)
        running = await self._start(CLUSTER, self._cfg.cluster_elector_id, cfg, cfg.peer_mode)
        # Bind the elector's own check: for Elector that is the compiled slot method.
        self.is_cluster_leader = running.elector.is_leader  # type: ignore[method-assign]

    async def start_shard_election(self, cfg: ElectionConfig) -> None:
        """Create and start the shard election, always in peer mode.

        Elector id ``server_id``, lock ``leader.json`` in ``cfg.storage``,
        peer health path ``/health/leadership/shard``.  ``cfg.ca_cert`` is
        required (ConfigError naming ``ca_cert`` otherwise), and so is the
        manager's ``server_addr``.  Raises as :meth:`start_cluster_election`.
        """
        self._check_election_config(cfg)
        if cfg.ca_cert is None:
            raise ConfigError("ca_cert", "is required: the shard election always runs in peer mode")
        if not self._cfg.server_addr:
            raise ConfigError(
                "server_addr",
                "is required (host:port of the health server): the shard election always "
                "runs in peer mode",
            )
        running = await self._start(SHARD, self._cfg.shard_elector_id, cfg, True)
        self.is_shard_leader = running.elector.is_leader  # type: ignore[method-assign]

    async def start_health_server(self, cfg: HealthServerConfig) -> None:
        """Start the one HTTPS health server for both elections.

        It serves ``/health/leadership/cluster`` and
        ``/health/leadership/shard`` from the leadership table; an election
        not started yet answers 404 until it is.  Returns once it accepts
        connections; raises HealthServerError if it cannot (port taken, bad
        certificate) and LifecycleError if already started or stopped.
        """
        if not isinstance(cfg, HealthServerConfig):
            raise TypeError("cfg must be a HealthServerConfig")
        self._check_not_stopped()
        if self._health is not None or self._health_starting:
            raise LifecycleError("the health server is already started")
        self._health_starting = True
        try:
            self._ensure_table()
            routes = {path: name for name, path in _HEALTH_PATHS.items()}
            server = HealthServer(cfg, self._table_name, routes)
            await server.start()
            if self._stopped:  # stop() ran while we were starting
                await server.stop()
                raise LifecycleError("the manager was stopped while the health server started")
            self._health = server
        finally:
            self._health_starting = False
        self._log.info(
            "election health server serving %s and %s on port %s",
            CLUSTER_HEALTH_PATH,
            SHARD_HEALTH_PATH,
            server.port,
            extra=self._extra(None),
        )

    # -- using ----------------------------------------------------------------------

    async def wait_for_cluster_election(self) -> None:
        """Return once the cluster election completed its first cycle.

        Bound it with ``asyncio.timeout`` (Go's context).  Raises
        LifecycleError if the cluster election is not running.
        """
        elector = self._running_elector(self._cluster, CLUSTER)
        await elector.wait_for_election()

    def enable_cluster_peer_mode(self, ca_cert: bytes) -> None:
        """Switch the running cluster election to peer mode, trusting ``ca_cert``.

        Raises LifecycleError if the cluster election is not running.
        """
        elector = self._running_elector(self._cluster, CLUSTER)
        if not isinstance(ca_cert, bytes | bytearray) or not ca_cert:
            raise ConfigError("ca_cert", "must be non-empty PEM bytes")
        elector.enable_peer_mode(bytes(ca_cert))
        self._log.info("cluster election switched to peer mode", extra=self._extra(CLUSTER))

    # -- stopping -------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the health server and both elections, then drop the table.

        Each leader releases its record so another server takes over at once,
        and its ``on_lose`` runs.  Every part is stopped even if another
        fails; the failures are raised together as one
        :class:`ManagerStopError`.  The storages stay open (the caller owns
        them).  Safe to call twice; the second call does nothing.
        """
        if self._stopped:
            # Idempotent; a concurrent second call returns once the first is done
            # (the first caller gets any errors).
            await self._stop_done.wait()
            return
        self._stopped = True
        if os.getpid() != self._pid:
            # A forked child: the electors, their records and the health server
            # are the parent's.  Releasing or killing them from here would end
            # the parent's leadership behind its back; just let go.
            self.__dict__.pop("is_cluster_leader", None)
            self.__dict__.pop("is_shard_leader", None)
            self._cluster = self._shard = None
            self._health = self._table = None
            self._stop_done.set()
            return
        try:
            await self._stop()
        finally:
            self._stop_done.set()

    async def _stop(self) -> None:
        # Answer "not leader" from now on: conservative while the electors
        # release, and correct after (a fake or a hung elector cannot say otherwise).
        self.__dict__.pop("is_cluster_leader", None)
        self.__dict__.pop("is_shard_leader", None)
        failures: list[tuple[str, Exception]] = []
        self._stop_mirrors()
        try:
            # The server first: it reads the table we close last.
            if self._health is not None:
                server, self._health = self._health, None
                try:
                    await server.stop()
                except Exception as exc:
                    failures.append(("the health server", exc))
            # The electors side by side, so one slow release does not delay the other.
            running = [r for r in (self._cluster, self._shard) if r is not None and r.started]
            results = await asyncio.gather(
                *(r.elector.stop() for r in running), return_exceptions=True
            )
            for r, result in zip(running, results, strict=True):
                if isinstance(result, Exception):
                    failures.append((f"the {r.name} election", result))
                elif isinstance(result, BaseException):
                    raise result  # cancellation is not a stop failure; pass it on
        finally:
            # Always drop the table: closing zeroes every lease in it, so even an
            # elector that failed to stop can no longer be seen as leader.
            if self._table is not None:
                table, self._table = self._table, None
                try:
                    table.close()
                except Exception as exc:
                    failures.append(("the leadership table", exc))
        if failures:
            for what, err in failures:
                err.add_note(f"while stopping {what}")
            listing = "; ".join(f"{what}: {type(err).__name__}: {err}" for what, err in failures)
            message = f"election manager stop failed: {listing}"
            self._log.error(message, extra=self._extra(None))
            raise ManagerStopError(message, [err for _, err in failures])
        self._log.info("election manager stopped", extra=self._extra(None))

    def _stop_mirrors(self) -> None:
        # Before anything else, so no tick can publish a leadership again.
        for running in (self._cluster, self._shard):
            if running is None or running.mirror is None:
                continue
            task, running.mirror_task = running.mirror_task, None
            if task is not None:
                # Not awaited: a task cancelled while suspended never resumes
                # its body, so no tick can run after this line.
                task.cancel()
            running.mirror.stop()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- internals ------------------------------------------------------------------

    def _extra(self, election: str | None) -> dict[str, str]:
        extra = {
            "cluster_id": self._cfg.cluster_id,
            "shard_id": self._cfg.shard_id,
            "server_id": self._cfg.server_id,
        }
        if election is not None:
            extra["election"] = election
            extra["elector"] = (
                self._cfg.cluster_elector_id if election == CLUSTER else self._cfg.shard_elector_id
            )
        return extra

    def _check_not_stopped(self) -> None:
        if os.getpid() != self._pid:
            raise LifecycleError(
                "this election manager was inherited through fork(); create a new Manager "
                "in the child"
            )
        if self._stopped:
            raise LifecycleError("the election manager is stopped; create a new Manager")

    def _check_election_config(self, cfg: ElectionConfig) -> None:
        if not isinstance(cfg, ElectionConfig):
            raise TypeError("cfg must be an ElectionConfig")
        self._check_not_stopped()

    def _running_elector(self, running: _Running | None, name: str) -> ManagedElector:
        self._check_not_stopped()
        if running is None or not running.started:
            raise LifecycleError(f"the {name} election is not started")
        return running.elector

    def _ensure_table(self) -> LeadershipTable:
        if self._table is None:
            # Default names carry the pid, so a crashed Manager's table is never
            # reused and replaced: creating a named table sweeps dead owners'.
            self._table = LeadershipTable(self._table_name, slots=len(_HEALTH_PATHS))
        return self._table

    async def _start(
        self, name: str, elector_id: str, cfg: ElectionConfig, peer_mode: bool
    ) -> _Running:
        current = self._cluster if name == CLUSTER else self._shard
        if current is not None:
            state = "already started" if current.started else "already starting"
            raise LifecycleError(f"the {name} election is {state}")
        storage = as_storage(cfg.storage)
        other = self._shard if name == CLUSTER else self._cluster
        if other is not None and other.storage is cfg.storage:
            # Both would lock the same leader.json under different ids and fight.
            raise ConfigError(
                "storage",
                f"the {name} election needs its own storage (or prefix): the {other.name} "
                f"election already locks {storage.describe(LOCKFILE_PATH)}",
            )
        elector_cfg = cfg._elector_config(
            elector_id,
            self._cfg.server_addr,
            peer_mode=peer_mode,
            peer_health_path=_HEALTH_PATHS[name],
            on_acquire=self._wrap_hook(name, elector_id, "Acquired", cfg.on_acquire),
            on_lose=self._wrap_hook(name, elector_id, "Lost", cfg.on_lose),
        )
        table = self._ensure_table()
        elector = self._factory(elector_cfg, storage, self._cfg.logger, table=table, election=name)
        running = _Running(name, elector_id, elector, cfg.storage)
        # Claim the election before the first await so a concurrent second
        # start sees it and raises instead of starting another elector.
        if name == CLUSTER:
            self._cluster = running
        else:
            self._shard = running
        try:
            await elector.start()
        except BaseException:
            if name == CLUSTER:
                self._cluster = None
            else:
                self._shard = None
            raise
        running.started = True
        if self._stopped:  # stop() ran while we were starting: do not leave it running
            await elector.stop()
            raise LifecycleError(
                f"the election manager was stopped while the {name} election started"
            )
        with table.reader() as reader:
            publishes_itself = name in reader.elections()
        if not publishes_itself:
            self._start_mirror(running, table, elector_cfg)
        self._log.info(
            "started %s election as %s on %s",
            name,
            elector_id,
            storage.describe(LOCKFILE_PATH),
            extra=self._extra(name),
        )
        return running

    def _start_mirror(
        self, running: _Running, table: LeadershipTable, elector_cfg: ElectorConfig
    ) -> None:
        # The elector left its slot alone (a fake, or one with its own table):
        # publish its answers there so the health server sees them.
        mirror = _Mirror(
            running.elector,
            table.slot(running.name, running.elector_id),
            running.elector_id,
            self._cfg.server_addr,
            # The same order of bound as Elector's loop gets.
            elector_cfg.ns("infrequent_interval") + elector_cfg.ns("leader_timeout"),
            self._log,
            self._extra(running.name),
        )
        mirror.sync()  # publish at once, before the first tick
        running.mirror = mirror
        running.mirror_task = asyncio.get_running_loop().create_task(
            self._run_mirror(mirror, running.name), name=f"fastelect-mirror-{running.name}"
        )

    async def _run_mirror(self, mirror: _Mirror, name: str) -> None:
        # Polling: the ManagedElector protocol offers no leadership event to await.
        try:
            while True:
                await asyncio.sleep(_MIRROR_INTERVAL_NS / 1e9)
                mirror.sync()
        except Exception:
            # Fail closed: the slot says "not leader" until the manager stops.
            self._log.exception(
                "publishing the %s leadership failed; its health endpoint now answers 404",
                name,
                extra=self._extra(name),
            )
            mirror.stop()

    def _wrap_hook(self, name: str, elector_id: str, verb: str, hook: Hook | None) -> Hook:
        log = self._log
        extra = self._extra(name)
        message = f"{verb} {name} leadership as %s"

        if hook is not None and inspect.iscoroutinefunction(hook):

            async def wrapped_async() -> None:
                log.info(message, elector_id, extra=extra)
                await hook()

            return wrapped_async

        # Stay a plain function so the elector runs it (and the user's sync hook)
        # in a worker thread, where a slow hook cannot stall renewals.
        def wrapped() -> Awaitable[None] | None:
            log.info(message, elector_id, extra=extra)
            return hook() if hook is not None else None

        return wrapped
