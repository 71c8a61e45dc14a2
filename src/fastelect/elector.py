"""The asyncio driver: does the I/O the compiled core asks for.

The :class:`Elector` loop asks its :class:`~fastelect._core.Campaign` what is
due, performs it against the :class:`~fastelect.storage.Storage` (or a
peer's health endpoint), feeds the outcome back with locally captured
monotonic timestamps, and turns the core's events into logs, hooks and
cancellation of leader-only work.  It works on any asyncio loop.

What is guaranteed (given storage with atomic conditional writes and clocks
whose *rates* agree within the safety margin; wall clocks need not agree;
the rules and the tests that show them are in ``docs/safety.md#the-rules``,
which every "rule N" in this module refers to):

* at most one node answers ``is_leader() == True`` at any instant, even when
  two processes share a ``server_id`` or a restarted process meets its dead
  predecessor's delayed writes (each incarnation writes its own nonce);
* ``is_leader()`` turns False by itself when the lease ends, even if this
  event loop is blocked, the process is starved or the host was suspended;
* each leadership carries a ``term`` strictly larger than every earlier one,
  usable as a fencing token by systems that check it;
* :meth:`Elector.run_while_leader` never resumes its coroutine after the
  lease ended; a ``leadership()`` block is cancelled at its next scheduling
  point and can check :meth:`Elector.fence` before each side effect.

What is not: a step already running when the lease ends finishes, and
side effects already in flight can still land afterwards.  Pass ``term`` to
the systems you write to and let them reject stale terms if that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _core
from ._core import Campaign, Event, LeadershipTable
from ._elector_hooks import HookRunner, hook_mask
from ._elector_io import StorageSteps
from ._leader_work import LeaderWork
from ._slot_pool import pooled_slot
from .config import Duration, ElectorConfig, wait_seconds
from .driver import Driver
from .errors import ConfigError, LifecycleError
from .peer import PeerChecker
from .scheduler import Scheduler, default_scheduler
from .status import LeadershipLost, LeadershipStatus, describe, mono_to_wall
from .storage.base import MinimalStorage, Storage, as_storage

if TYPE_CHECKING:
    from ._hook_threads import HookThreads
    from ._logfold import LogFold

__all__ = ["Elector", "LeadershipLost", "LeadershipStatus"]


class Elector(StorageSteps, HookRunner, LeaderWork, _core.LeaseHolder):
    """Campaigns for one lock record and answers ``is_leader()`` in nanoseconds.

    ``table``/``election`` choose where the leadership is published: by
    default a slot of a pooled private table; pass a named
    :class:`~fastelect.LeadershipTable` to share it with other processes.
    The elector does not own ``storage``; close it yourself after ``stop()``.

    It runs on an executor (docs/architecture.md): ``scheduler`` (a
    :class:`~fastelect.scheduler.Scheduler`), else its event loop's default
    scheduler, whose one task and timer wheel drive every elector on it,
    renewals first under overload.  The election step itself is its
    :class:`~fastelect.driver.Driver`.
    """

    # Fixed attributes, no instance dict: ``elector.is_leader()`` is then found on
    # the type by the interpreter's fastest method-call path (an instance dict
    # past 30 keys defeats it, ~7 ns a call), and each elector is smaller.
    __slots__ = (
        "__weakref__",
        "_campaign",
        "_changed",
        "_config",
        "_cycled",
        "_driver",
        "_expiry",
        "_extra",
        "_failure",
        "_first_cycle",
        "_fold",
        "_hook_threads",
        "_hooks_task",
        "_last_error",
        "_leading",
        "_log",
        "_peer",
        "_peer_healthy",
        "_pid",
        "_retired_peers",
        "_sched",
        "_sched_active",
        "_sched_chosen",
        "_sched_expired",
        "_sched_inline",
        "_sched_op",
        "_scoped",
        "_slot",
        "_stopping",
        "_storage",
        "_table",
        "_watchdog",
        "_where",
        "election",
    )

    def __init__(
        self,
        config: ElectorConfig,
        storage: Storage | MinimalStorage,
        logger: logging.Logger | None = None,
        *,
        table: LeadershipTable | None = None,
        election: str = "default",
        scheduler: Scheduler | None = None,
    ) -> None:
        if not isinstance(config, ElectorConfig):
            raise TypeError("config must be an ElectorConfig")
        storage = as_storage(storage)  # a get/put_if_match-only store gets the rest filled in
        if scheduler is not None and not isinstance(scheduler, Scheduler):
            raise TypeError("scheduler must be a fastelect.scheduler.Scheduler")
        self._config = config.copy()
        self._storage = storage
        self._log = logger or logging.getLogger(__name__)
        # The executor that runs this elector: the one passed, else (from each
        # start() on) its event loop's default scheduler.
        self._sched_chosen = scheduler
        self._sched = scheduler
        if table is not None:
            self._table = table
            self._slot = self._table.slot(election, config.server_id)
        elif scheduler is not None:
            self._table, self._slot = scheduler._new_slot(config.server_id)
        else:
            self._table, self._slot = pooled_slot(config.server_id)
        self.election = election
        # The hot path: is_leader() is the compiled base's method, read from this slot.
        self._hold_slot(self._slot)
        self._pid = os.getpid()
        campaign = Campaign(
            self._slot,
            config.server_id,
            config.server_addr,
            config.ns("leader_timeout"),
            config.ns("frequent_interval"),
            config.ns("infrequent_interval"),
            config.ns("safety_margin"),
            config.ns("max_clock_skew"),
            False,
            _core.monotonic_ns(),
        )
        # The election step (sans I/O); this object performs what it asks for.
        self._driver = Driver(
            campaign,
            frequent_ns=config.ns("frequent_interval"),
            lease_ns=config.ns("leader_timeout"),
            storage_timeout_ns=config.ns("storage_timeout"),
            peer_timeout_ns=config.ns("peer_timeout"),
            hooks=hook_mask(config),
        )
        self._campaign = campaign
        self._where = storage.describe(config.lockfile_path)
        self._extra = {"lock": self._where, "elector": config.server_id, "election": election}
        # Made on first use: every container here is one more object each
        # garbage-collection pass walks, times the electors of a process.
        self._peer: PeerChecker | None = None
        self._retired_peers: tuple[PeerChecker, ...] = ()
        self._peer_healthy = True
        # Runs the driver's queued hooks, one at a time; made when one is queued.
        self._hooks_task: asyncio.Task[None] | None = None
        # Made at the first sync hook: threads of this elector's own (rule 9).
        self._hook_threads: HookThreads | None = None
        self._leading: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._first_cycle: asyncio.Event | None = None
        self._scoped: set[asyncio.Task[Any]] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._stopping = False
        self._last_error: BaseException | None = None
        # Storage-failure log lines folded per kind; made at the first failure.
        self._fold: LogFold | None = None
        #: What killed the background task, raised by stop() (issue 19: never silently).
        self._failure: BaseException | None = None
        self._watchdog = 0
        self._cache_timings()
        # State the scheduler keeps per elector (unused without one).
        self._sched_active = False
        self._sched_expired = False
        self._sched_op = False
        # Storages whose coroutines never look at the current task can be
        # stepped by the scheduler itself, without a Task per step.
        self._sched_inline = bool(getattr(storage, "inline_steps", False))
        self._cycled = False
        if config.peer_mode:
            assert config.peer_ca_cert is not None
            self.enable_peer_mode(config.peer_ca_cert)

    # -- public API --------------------------------------------------------------

    @property
    def config(self) -> ElectorConfig:
        """A copy of the current configuration."""
        return self._config.copy()

    @property
    def leader_id(self) -> str:
        """The id of the leader this node knows of ("" when none)."""
        return str(self._campaign.leader_id)

    @property
    def term(self) -> int:
        """The fencing token: our term while leading, else the observed leader's."""
        c = self._campaign
        return int(c.term if c.role == _core.Role.LEADER else c.observed_term)

    @property
    def nonce(self) -> str:
        """This incarnation's nonce, written into every record (new at each start)."""
        return str(self._campaign.nonce)

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._sched_active and not self._forked()

    def _forked(self) -> bool:
        # Rule 7: an elector inherited through fork() is inert in the child.
        return os.getpid() != self._pid

    @property
    def slot(self) -> _core.Slot:
        """The leadership-table slot this elector publishes into."""
        return self._slot

    def status(self) -> LeadershipStatus:
        """What this elector knows now."""
        c = self._campaign
        leading = bool(self._slot.is_leader())
        seen = _core.monotonic_ns() if leading else c.last_seen_alive_ns
        return LeadershipStatus(
            server_id=self._config.server_id,
            lockfile_path=self._config.lockfile_path,
            is_leader=leading,
            leader_id=c.leader_id,
            leader_addr=c.leader_addr,
            leader_last_seen=mono_to_wall(seen),
            last_election_time=mono_to_wall(c.last_election_ns),
            consecutive_fails=c.consecutive_fails,
            term=self.term,
            duplicate_id_nonce=c.duplicate_nonce,
            failure="" if self._failure is None else describe(self._failure),
        )

    async def start(self, *, wait_for_store: Duration = 0.0) -> None:
        """Check the storage, then campaign in a background task.

        Raises the storage's typed error (missing bucket, bad credentials) at
        once instead of retrying forever, and LifecycleError if running.

        ``wait_for_store`` (seconds; ``math.inf`` for ever) keeps trying a
        store that cannot be reached (:class:`~fastelect.StorageUnavailable`:
        refused, reset, timed out) for services that start before it: after
        0.1 s, then twice as long each time up to 5 s, with jitter, a WARNING
        per attempt.  A missing bucket or refused credentials still fail at
        once: waiting would not mend them.
        """
        if self._forked():
            raise LifecycleError(
                "this elector was inherited through fork(); create a new Elector in the child"
            )
        if self.running:
            raise LifecycleError(f"elector {self._config.server_id!r} is already running")
        await self._check_store(wait_seconds("wait_for_store", wait_for_store))
        sched = self._sched_chosen
        if sched is None:
            sched = default_scheduler()
        # Events, the hooks task and the expiry timer are made when first
        # needed: most of 100,000 electors never need them.
        self._leading = self._changed = self._first_cycle = None
        self._cycled = False
        self._stopping = False
        self._failure = None
        self._driver.restart(_core.monotonic_ns())  # rule 0: a fresh nonce
        sched._add(self)
        self._sched = sched
        self._sched_active = True
        self._log.info(
            "elector %s campaigning for %s", self._config.server_id, self._where, extra=self._extra
        )

    async def stop(self) -> None:
        """Stop campaigning; a leader releases its record so others take over at once.

        Runs ``on_lose`` if we were leading.  Safe to call twice.  Raises what
        made the elector fail, if something did (``status().failure``).
        """
        if not self._sched_active:
            if self._failure is not None and not self._forked():
                # It failed: the scheduler took it off and it stepped down.
                await self._finish_stop()
            failure, self._failure = self._failure, None
            if failure is not None:
                raise failure
            return
        self._sched_active = False
        if self._forked():
            # The campaign belongs to the parent: releasing its record from here
            # would end the parent's leadership behind its back.
            return
        self._stopping = True
        bound = float(self._config.storage_timeout) + 1.0  # type: ignore[arg-type]
        assert self._sched is not None
        await self._sched._remove(self, bound)
        await self._finish_stop()
        self._log.info("elector %s stopped", self._config.server_id, extra=self._extra)
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _fail(self, exc: BaseException) -> None:
        """Its step failed outside the storage's typed errors: end the elector loudly (issue 19).

        Called by the scheduler, which has already taken it off its wheel.

        A dead campaign renews nothing, so the node steps down at once
        (``is_leader()`` False, ``on_lose`` queued) instead of answering
        "leader" until its lease runs out; the failure is logged at ERROR with
        its traceback, shown by ``status().failure`` and raised by ``stop()``.
        """
        self._failure = exc
        self._sched_active = False
        self._log.error(
            "elector %s for %s failed and stopped campaigning: %s; stop() raises it",
            self._config.server_id,
            self._where,
            describe(exc),
            exc_info=exc,
            extra=self._extra,
        )
        d = self._driver
        d.step_down(_core.monotonic_ns())
        with contextlib.suppress(Exception):  # what failed may fail again; step-down holds
            self._dispatch(d.take_events())
        for event in (self._leading, self._changed, self._first_cycle):
            if event is not None:
                event.set()  # waiters wake and find the elector not running

    async def _finish_stop(self) -> None:
        # The leader hands its record back, then on_lose runs (rule 9).
        d = self._driver
        if d.begin_stop(_core.monotonic_ns()):
            self._dispatch(d.take_events())
            await self._write()
        d.stopped(_core.monotonic_ns())
        self._dispatch(d.take_events())
        await self._drain_hooks()
        for peer in [*self._retired_peers, self._peer]:
            if peer is not None:
                await peer.close()
        self._retired_peers = ()

    async def __aenter__(self) -> Elector:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def wait_for_leadership(self) -> None:
        """Return once this node leads (at once if it already does)."""
        while not self.is_leader():
            if not self.running:
                raise LifecycleError(self._not_running()) from self._failure
            if self._leading is None:
                self._leading = asyncio.Event()
            await self._leading.wait()
            if not self.is_leader():
                await asyncio.sleep(0)

    def _not_running(self) -> str:
        if self._failure is None:
            return "elector is not running"
        return f"elector is not running: it failed with {describe(self._failure)}"

    async def wait_for_election(self) -> LeadershipStatus:
        """Return once the first election cycle completed (leader or follower known)."""
        if not self.running:
            raise LifecycleError(self._not_running())
        if self._first_cycle is None:
            self._first_cycle = asyncio.Event()
            if self._cycled:
                self._first_cycle.set()
        if self._first_cycle is None:
            raise LifecycleError("elector is not running")
        await self._first_cycle.wait()
        return self.status()

    async def wait_for_next_election(
        self, since: LeadershipStatus | None = None
    ) -> LeadershipStatus:
        """Wait for the leadership to change and return the new status.

        With ``since`` (an earlier status), returns at once if the leader,
        term or our role already differ from it.
        """
        while True:
            if not self.running:
                raise LifecycleError(self._not_running())
            if self._changed is None:
                self._changed = asyncio.Event()
            changed = self._changed
            if since is not None:
                now = self.status()
                if (now.leader_id, now.term, now.is_leader) != (
                    since.leader_id,
                    since.term,
                    since.is_leader,
                ):
                    return now
            await changed.wait()
            if since is None:
                return self.status()

    def enable_peer_mode(self, ca_cert: bytes) -> None:
        """Check a stable leader through its health endpoint instead of storage."""
        if not self._config.server_addr:
            raise ConfigError("server_addr", "is required for peer mode (host:port)")
        checker = PeerChecker(ca_cert, float(self._config.peer_timeout))  # type: ignore[arg-type]
        old, self._peer = self._peer, checker
        if old is not None:
            # Closed by stop(), on the loop that opened it.
            self._retired_peers = (*self._retired_peers, old)
        self._config = self._config.copy(peer_mode=True, peer_ca_cert=bytes(ca_cert))
        self._campaign.set_peer_mode(True)
        self._kick()

    def update_config(self, config: ElectorConfig) -> None:
        """Apply new timings and hooks; the identity fields cannot change."""
        for field in ("lockfile_path", "server_id", "server_addr"):
            if getattr(config, field) != getattr(self._config, field):
                raise ConfigError(field, "cannot change on a running elector; make a new one")
        new = config.copy()
        self._driver.configure(
            new.ns("leader_timeout"),
            new.ns("frequent_interval"),
            new.ns("infrequent_interval"),
            new.ns("safety_margin"),
            new.ns("max_clock_skew"),
            new.peer_mode and self._peer is not None,
            storage_timeout_ns=new.ns("storage_timeout"),
            peer_timeout_ns=new.ns("peer_timeout"),
            hooks=hook_mask(new),
        )
        if new.peer_mode and self._peer is None:
            assert new.peer_ca_cert is not None
            self._config = new
            self.enable_peer_mode(new.peer_ca_cert)
        self._config = new
        self._cache_timings()
        self._kick()

    def _cache_timings(self) -> None:
        # Read on every step; computing them from the config each time costs more.
        cfg = self._config
        self._watchdog = (
            cfg.ns("infrequent_interval")
            + cfg.ns("leader_timeout")
            + cfg.ns("storage_timeout")
            + cfg.ns("peer_timeout")
        )

    # -- leader-scoped work --------------------------------------------------------

    # -- the loop ------------------------------------------------------------------

    def _kick(self) -> None:
        # Look at the campaign again now (stop, release, new config, expiry).
        if self._sched_active:
            assert self._sched is not None
            self._sched._kick(self)

    def _step_bound_ns(self, action: int, now: int) -> int:
        """How long the scheduler lets one step run before cancelling it."""
        return self._driver.step_bound_ns(action, now)

    # -- events and hooks ----------------------------------------------------------

    def _dispatch(self, events: int) -> None:
        if not events:
            return
        c = self._campaign
        if events & Event.EV_DUPLICATE_ID:
            self._report_duplicate(c.duplicate_nonce)
        if events & Event.EV_CYCLE:
            self._cycled = True
            if self._first_cycle is not None:
                self._first_cycle.set()
        if events & Event.EV_LOST:
            self._cancel_expiry()
            self._cancel_scoped()
            if self._leading is not None:
                self._leading.clear()
            self._log.info(
                "%s lost leadership of %s (term %d)",
                self._config.server_id,
                self._where,
                c.term,
                extra=self._extra,
            )
        if events & Event.EV_ACQUIRED:
            self._log.info(
                "%s acquired leadership of %s (term %d)",
                self._config.server_id,
                self._where,
                c.term,
                extra=self._extra,
            )
            if self._leading is not None:
                self._leading.set()
        if c.role == _core.Role.LEADER and (self._scoped or self._leading is not None):
            # Only while work depends on the lease: the scheduler renews on time anyway.
            self._arm_expiry(c.deadline_ns)
        if events & Event.EV_NEW_LEADER:
            # A released record keeps the id of the leader that left: nobody leads.
            leader = "" if c.obs_released else c.leader_id
            self._log.debug("leader of %s is now %r", self._where, leader, extra=self._extra)
        if self._driver.hooks_pending and self._hooks_task is None:
            self._start_hooks()
        changes = Event.EV_NEW_LEADER | Event.EV_ACQUIRED | Event.EV_LOST
        if events & changes and self._changed is not None:
            # Wake every waiter of this change; later waiters wait for the next one.
            self._changed.set()
            self._changed = None

    def _report_duplicate(self, nonce: str) -> None:
        # The driver reports each clashing nonce once.
        self._log.error(
            "another live process writes %s under this elector's id %r (its nonce %s, ours "
            "%s): server ids must be unique; only one of the two can lead",
            self._where,
            self._config.server_id,
            nonce or "(none)",
            self._campaign.nonce,
            extra={**self._extra, "duplicate_nonce": nonce},
        )
