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
import inspect
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

from . import _core
from ._core import Action, Campaign, Event, LeadershipTable
from ._hook_threads import HooksStuck, HookThreads
from ._logfold import LogFold, folded_suffix
from ._slot_pool import pooled_slot
from ._stepping import Stepper
from .config import Duration, ElectorConfig, wait_seconds
from .driver import (
    HOOK_ACQUIRE,
    HOOK_LOSE,
    HOOK_NEW_LEADER,
    READ_GARBAGE,
    READ_LONG_LEASE,
    Driver,
)
from .errors import (
    ConfigError,
    FastelectError,
    LifecycleError,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)
from .peer import PeerChecker
from .scheduler import Scheduler, default_scheduler
from .storage.base import BucketNotFound, MinimalStorage, ObjectNotFound, Storage, as_storage

__all__ = ["Elector", "LeadershipLost", "LeadershipStatus"]

T = TypeVar("T")
_NS = 1_000_000_000


class LeadershipLost(FastelectError):
    """Leader-only work was cancelled because this node's leadership ended."""


@dataclass(frozen=True, slots=True)
class LeadershipStatus:
    """A snapshot of what an elector knows (s3lect's fields plus ``term``)."""

    server_id: str
    lockfile_path: str
    is_leader: bool
    leader_id: str
    leader_addr: str
    #: When the leader was last confirmed alive (by storage or a peer check).
    leader_last_seen: datetime | None
    #: When leadership last changed hands as seen by this node.
    last_election_time: datetime | None
    consecutive_fails: int
    #: The fencing token of the current leadership (ours when leading).
    term: int
    #: The nonce of another live process writing under our ``server_id``
    #: ("" unless such a clash was seen; see ``docs/safety.md``, rule 0).
    duplicate_id_nonce: str = ""
    #: Why the elector's background task died ("" while it runs or after a
    #: clean stop); ``stop()`` raises that failure.
    failure: str = ""


# start(wait_for_store=...): the pause after the first failed check, and the cap.
_FIRST_STORE_RETRY = 0.1
_LAST_STORE_RETRY = 5.0
_jitter = random.Random()


class _HookTimeout(TimeoutError):
    """A hook ran past ``hook_timeout`` (rule 9: it counts as failed)."""


def _wake_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _mono_to_wall(mono_ns: int) -> datetime | None:
    if mono_ns <= 0:
        return None
    wall = time.time_ns() - (_core.monotonic_ns() - mono_ns)
    return datetime.fromtimestamp(wall / _NS, UTC)


class Elector(_core.LeaseHolder):
    """Campaigns for one lock record and answers ``is_leader()`` in nanoseconds.

    ``table``/``election`` choose where the leadership is published: by
    default a private table of one slot; pass a named
    :class:`~fastelect.LeadershipTable` to share it with other processes.
    The elector does not own ``storage``; close it yourself after ``stop()``.

    ``scheduler`` (a :class:`~fastelect.scheduler.Scheduler`) runs this
    elector from the scheduler's one task and timer wheel instead of a task, timers
    and events of its own, with renewals first under overload: the way to run
    thousands of elections in one process.  Without ``table=`` its slot then
    comes from the scheduler's pooled private tables.
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
        "_sched_bucket",
        "_sched_chosen",
        "_sched_coro",
        "_sched_deadline",
        "_sched_expired",
        "_sched_finished",
        "_sched_inline",
        "_sched_kicked",
        "_sched_kind",
        "_sched_op",
        "_sched_task",
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
            hooks=_hook_mask(config),
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
        self._sched_bucket = -1
        self._sched_task: asyncio.Task[None] | None = None
        self._sched_coro: Coroutine[Any, Any, None] | None = None
        self._sched_kind = 0
        self._sched_deadline = 0
        self._sched_kicked = False
        self._sched_expired = False
        self._sched_op = False
        self._sched_finished: asyncio.Future[None] | None = None
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
            leader_last_seen=_mono_to_wall(seen),
            last_election_time=_mono_to_wall(c.last_election_ns),
            consecutive_fails=c.consecutive_fails,
            term=self.term,
            duplicate_id_nonce=c.duplicate_nonce,
            failure="" if self._failure is None else _describe(self._failure),
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

    async def _check_store(self, wait: float) -> None:
        if wait <= 0:
            await self._storage.check()
            return
        give_up = time.monotonic() + wait
        pause = _FIRST_STORE_RETRY
        attempt = 0
        while True:
            try:
                await self._storage.check()
            except StorageUnavailable as exc:
                attempt += 1
                left = give_up - time.monotonic()
                if left <= 0:
                    raise
                delay = min(left, pause * (1.0 + _jitter.random() / 4))
                self._log.warning(
                    "%s cannot reach the store for %s at start (attempt %d): %s; next try in"
                    " %.1f s%s",
                    self._config.server_id,
                    self._where,
                    attempt,
                    exc,
                    delay,
                    "" if wait == math.inf else f", giving up in {left:.0f} s",
                    extra=self._extra,
                )
                await asyncio.sleep(delay)
                pause = min(pause * 2, _LAST_STORE_RETRY)
                continue
            if attempt:
                self._log.info(
                    "%s reached the store for %s after %d failed attempts",
                    self._config.server_id,
                    self._where,
                    attempt,
                    extra=self._extra,
                )
            return

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
            _describe(exc),
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
        return f"elector is not running: it failed with {_describe(self._failure)}"

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
            hooks=_hook_mask(new),
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

    @contextlib.asynccontextmanager
    async def leadership(self) -> AsyncIterator[int]:
        """``async with elector.leadership() as term:`` run a block only while leading.

        Waits for leadership, yields the term (fencing token) and cancels the
        block the moment leadership ends, raising :class:`LeadershipLost`.
        """
        await self.wait_for_leadership()
        task = asyncio.current_task()
        assert task is not None
        generation = self._driver.generation
        if self._scoped is None:
            self._scoped = set()
        self._scoped.add(task)
        if self._expiry is None and self._campaign.role == _core.Role.LEADER:
            # Scheduled electors arm the lease timer only while work depends on it.
            self._arm_expiry(self._campaign.deadline_ns)
        try:
            if generation != self._driver.generation or not self.is_leader():
                raise LeadershipLost("leadership ended before the block started")
            yield self.term
        except asyncio.CancelledError:
            if getattr(task, "_fastelect_lost", False):
                task._fastelect_lost = False  # type: ignore[attr-defined]
                task.uncancel()
                raise LeadershipLost(
                    f"{self._config.server_id} lost leadership of {self._where}"
                ) from None
            raise
        except LeadershipLost:
            if getattr(task, "_fastelect_lost", False):
                # The expiry timer cancelled us too; that cancel is answered here.
                task._fastelect_lost = False  # type: ignore[attr-defined]
                task.uncancel()
            raise
        finally:
            self._scoped.discard(task)

    def fence(self, term: int | None = None) -> int:
        """Check the lease now, before a side effect; return the term (fencing token).

        Raises :class:`LeadershipLost` unless this node leads at this instant
        (the same compiled check as ``is_leader()``) and, when ``term`` is
        given, still in that same leadership.  Use it in a ``leadership()``
        block before each write that must not happen outside the lease, and
        pass the term to systems that can reject stale ones.
        """
        if not self._slot.is_leader():
            raise LeadershipLost(f"{self._config.server_id} does not lead {self._where}")
        current = int(self._campaign.term)
        if term is not None and term != current:
            raise LeadershipLost(
                f"leadership of term {term} ended (now term {current}) at {self._where}"
            )
        return current

    async def run_while_leader(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Wait for leadership, then run ``fn()`` as guarded leader work.

        The coroutine is driven step by step and never resumed once the lease
        has ended (rule 6): a step already running when the deadline passes
        finishes, but no later step starts.  Returns ``fn``'s result, or
        raises :class:`LeadershipLost`.
        """
        async with self.leadership():
            driver = self._driver
            generation = driver.generation
            slot_is_leader = self._slot.is_leader

            def alive() -> bool:
                return generation == driver.generation and slot_is_leader()

            work = fn()
            if not inspect.iscoroutine(work):
                raise TypeError(f"run_while_leader needs a coroutine function, got {work!r}")
            guard = Stepper(work, alive)
            try:
                result: T = await guard
            except asyncio.CancelledError:
                if guard.lost:
                    raise LeadershipLost(
                        f"{self._config.server_id} lost leadership of {self._where}"
                    ) from None
                raise
            if guard.lost:
                raise LeadershipLost(
                    f"{self._config.server_id} lost leadership of {self._where} "
                    "(the work returned after being cancelled)"
                )
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the loop ------------------------------------------------------------------

    def _kick(self) -> None:
        # Look at the campaign again now (stop, release, new config, expiry).
        if self._sched_active:
            assert self._sched is not None
            self._sched._kick(self)

    async def _sched_step(self, action: int) -> None:
        """One step the scheduler started: the body of one turn of ``_run``."""
        d = self._driver
        self._sched_op = True
        try:
            if action == Action.READ:
                await self._read()
            elif action == Action.PEER_CHECK:
                await self._peer_check()
            else:
                await self._write()
        except asyncio.CancelledError:
            if not self._op_expired():
                raise
            # Only a peer check lets the scheduler's bound reach this far.
            d.peer_answered(_core.monotonic_ns(), False)
        except Exception:
            self._log.exception("elector step failed", extra=self._extra)
        finally:
            self._sched_op = False
            self._sched_expired = False
            sched = self._sched
            assert sched is not None
            try:
                events = d.take_events()
                if events:
                    self._dispatch(events)
            except Exception as exc:
                sched._failed(self, exc)
            sched._op_done(self)

    def _step_bound_ns(self, action: int, now: int) -> int:
        """How long the scheduler lets one step run before cancelling it."""
        return self._driver.step_bound_ns(action, now)

    def _op_expired(self) -> bool:
        """True (once) if the scheduler cancelled this step for outliving its bound."""
        if not self._sched_expired:
            return False
        self._sched_expired = False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True

    def _op_timeout(self) -> float:
        return self._driver.op_timeout_ns(_core.monotonic_ns()) / _NS

    async def _read(self) -> None:
        d = self._driver
        key = self._config.lockfile_path
        try:
            try:
                if self._sched_op:  # the scheduler bounds the step (one sweep, no timer)
                    body, etag = await self._storage.get(key)
                else:
                    async with asyncio.timeout(self._op_timeout()):
                        body, etag = await self._storage.get(key)
            except asyncio.CancelledError:
                if not self._op_expired():
                    raise
                raise TimeoutError(f"read of {self._where} outlived its bound") from None
        except ObjectNotFound:
            d.read_missing(_core.monotonic_ns())
            if self._fold is not None:
                self._storage_ok("read")
            return
        except (StorageError, TimeoutError, OSError) as exc:
            d.read_failed(_core.monotonic_ns(), isinstance(exc, StorageAuthError | BucketNotFound))
            self._storage_failed("read", exc)
            return
        # Rule 1: stamped when the answer arrived.
        seen = d.read_record(_core.monotonic_ns(), time.time_ns(), body, etag)
        if self._fold is not None:
            self._storage_ok("read")
        if seen == READ_GARBAGE:
            self._log.warning(
                "unreadable lock record at %s (etag %s): %s; it is replaced only once stale",
                self._where,
                etag,
                d.record_error,
                extra=self._extra,
            )
        elif seen == READ_LONG_LEASE:
            # Rule 1 honours the longer lease, so a crashed holder of this record
            # blocks the election that long: the driver says so once per record.
            record = d.record
            assert record is not None
            self._log.warning(
                "lock record at %s (leader %s, term %d) advertises a lease of %.3f s, more than "
                "10x ours (%.3f s): if its holder dies, the election is blocked for up to %.3f s",
                self._where,
                record.leader_id,
                record.term,
                record.lease_ms / 1000,
                self._config.lease,
                record.lease_ms / 1000,
                extra=self._extra,
            )

    async def _write(self) -> None:
        d = self._driver
        cfg = self._config
        kind, body, if_match, term, wall, cut = d.begin_write(_core.monotonic_ns(), time.time_ns())
        if cut:
            # A renewal advertising a shorter lease capped ours (rule 2): the
            # expiry that cancels leader work must follow it down.
            self._arm_expiry(self._campaign.deadline_ns)
        try:
            try:
                if self._sched_op:
                    etag = await self._storage.put_if_match(cfg.lockfile_path, body, if_match)
                else:
                    async with asyncio.timeout(self._op_timeout()):
                        etag = await self._storage.put_if_match(cfg.lockfile_path, body, if_match)
            except asyncio.CancelledError:
                if not self._op_expired():
                    raise
                raise TimeoutError(f"write of {self._where} outlived its bound") from None
        except PreconditionFailed:
            self._log.debug(
                "conditional %s of %s lost (term %d)",
                _core.ACTION_NAMES[kind],
                self._where,
                term,
                extra=self._extra,
            )
            d.write_conflicted(_core.monotonic_ns())
            if self._fold is not None:
                self._storage_ok("write")
            return
        except (StorageError, TimeoutError, OSError) as exc:
            d.write_failed(_core.monotonic_ns(), isinstance(exc, StorageAuthError | BucketNotFound))
            self._storage_failed(_core.ACTION_NAMES[kind], exc)
            return
        d.write_succeeded(_core.monotonic_ns(), etag, wall)
        if self._fold is not None:
            self._storage_ok("write")

    async def _peer_check(self) -> None:
        c = self._campaign
        if self._peer is None:
            self._driver.peer_answered(_core.monotonic_ns(), False)
            return
        answer = await self._peer.check(c.leader_addr, self._config.peer_health_path, c.leader_id)
        if not answer.ok:
            # Say it once per outage at INFO; a leader without a health server
            # would otherwise log this every other interval.
            level = logging.INFO if self._peer_healthy else logging.DEBUG
            self._log.log(
                level,
                "peer check of leader %s at %s failed (%s); reading %s",
                c.leader_id,
                c.leader_addr,
                answer.reason,
                self._where,
                extra=self._extra,
            )
        self._peer_healthy = answer.ok
        self._driver.peer_answered(_core.monotonic_ns(), answer.ok, answer.leader_id, answer.etag)

    def _storage_failed(self, action: str, exc: BaseException) -> None:
        # One WARNING line per failure: what failed, where, and what happens
        # next; repeats folded (a refused permission once per streak), and
        # the traceback only at DEBUG.
        self._last_error = exc
        c = self._campaign
        now = _core.monotonic_ns()
        op = "read" if action == "read" else "write"
        refused = isinstance(exc, StorageAuthError | BucketNotFound)
        fails = c.read_fails if op == "read" else c.write_fails
        if self._fold is None:
            self._fold = LogFold()
        admitted = self._fold.admit((op, type(exc).__name__), now, once=refused)
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                "%s of %s failed (%d in a row)",
                action,
                self._where,
                fails,
                exc_info=exc,
                extra=self._extra,
            )
        if admitted is None:
            return
        delay = max(0, c.next_at_ns - now) / _NS
        then = "at once" if delay < 0.001 else f"in {delay:.3g} s"
        step = _core.ACTION_NAMES[c.next_action]
        if c.role == _core.Role.LEADER:
            left = max(0, c.deadline_ns - now) / _NS
            upshot = f"still leading for {left:.3g} s of lease; next {step} {then}"
        else:
            upshot = f"next {step} {then}"
        if refused:
            upshot += ", then every F or slower until it works; said once until then"
        self._log.warning(
            "%s of %s failed (%d in a row): %s: %s; %s%s",
            action,
            self._where,
            fails,
            type(exc).__name__,
            exc or "no detail",
            upshot,
            folded_suffix(*admitted),
            extra=self._extra,
        )

    def _storage_ok(self, op: str) -> None:
        # A request of this kind was answered: its failure streak ended.
        assert self._fold is not None
        ended = self._fold.end(op, _core.monotonic_ns())
        if ended is not None:
            self._log.info(
                "%ss of %s work again%s",
                op,
                self._where,
                folded_suffix(*ended),
                extra=self._extra,
            )
        if not self._fold:
            self._fold = None  # back to the bare fast path

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

    def _arm_expiry(self, deadline_ns: int) -> None:
        # Leader-only work must not outlive the lease (rule 6), even if the loop
        # is busy awaiting a slow write when the deadline comes.
        self._cancel_expiry()
        loop = asyncio.get_running_loop()
        delay = max(0.0, (deadline_ns - _core.monotonic_ns()) / _NS)
        self._expiry = loop.call_later(delay, self._on_expiry)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _on_expiry(self) -> None:
        self._expiry = None
        c = self._campaign
        if c.role == _core.Role.LEADER and self.is_leader():
            # Renewals moved the deadline since this timer was armed (they raise
            # no event, so nothing re-armed it): follow the lease to its new end.
            self._arm_expiry(c.deadline_ns)
            return
        if not self.is_leader():
            self._cancel_scoped()
            if self._leading is not None:
                self._leading.clear()
            self._kick()

    def _cancel_scoped(self) -> None:
        if not self._scoped:
            return
        for task in list(self._scoped):
            task._fastelect_lost = True  # type: ignore[attr-defined]
            task.cancel("fastelect: leadership lost")
        self._scoped.clear()

    def _start_hooks(self) -> None:
        if self._forked():
            self._driver.drop_hooks()  # they belong to the parent's leadership
            return
        self._hooks_task = asyncio.get_running_loop().create_task(
            self._run_hooks(), name=f"fastelect-hooks-{self.election}"
        )

    async def _run_hooks(self) -> None:
        """Run the driver's queued hooks one at a time, then end (a new task per burst)."""
        d = self._driver
        cfg = self._config
        skipped = d.hooks_skipped
        try:
            while (hook := d.next_hook()) is not None:
                name = hook.name
                fn = getattr(cfg, name)
                failed = False
                if fn is not None:
                    try:
                        await self._call_hook(fn, hook.args)
                    except Exception as exc:
                        failed = True
                        late = isinstance(exc, _HookTimeout)
                        self._log.error(
                            "%s hook of %s failed: %s",
                            name,
                            cfg.server_id,
                            exc if late else repr(exc),
                            exc_info=not late,
                            extra=self._extra,
                        )
                    except BaseException:
                        d.hook_finished(False)
                        raise
                if d.hook_finished(failed) and not self._stopping:
                    self._kick()  # a release, or a campaign held back for these hooks
                cfg = self._config
        finally:
            self._hooks_task = None
        if d.hooks_skipped != skipped:
            # That leadership already ended: its work must not start now.
            self._log.debug(
                "on_acquire of %s skipped: the leadership ended before it could start",
                cfg.server_id,
                extra=self._extra,
            )
        if not d.lease_hooks and not self._stopping:
            self._kick()

    async def _call_hook(self, hook: Callable[..., Any], args: tuple[Any, ...]) -> None:
        timeout = float(self._config.hook_timeout)  # type: ignore[arg-type]
        sync = not inspect.iscoroutinefunction(hook)
        try:
            async with asyncio.timeout(timeout):
                if not sync:
                    await hook(*args)
                    return
                # A sync hook runs on a thread of this elector's own, so a slow or
                # hung one stalls neither renewals nor anything else in the process.
                threads = self._hook_threads
                if threads is None:
                    threads = self._hook_threads = HookThreads(
                        f"{self._config.server_id} on {self._where}"
                    )
                result = await threads.run(hook, *args)
                if inspect.isawaitable(result):
                    await result
        except HooksStuck:
            raise  # HookThreads' own bound: its message says what happened
        except TimeoutError:
            still = " (its thread runs on: Python cannot stop a thread)" if sync else ""
            raise _HookTimeout(
                f"did not finish within hook_timeout={timeout:g}s and counts as failed{still};"
                " keep hooks short and put leader work in leadership() (docs/safety.md, rule 9)"
            ) from None

    async def _drain_hooks(self) -> None:
        task = self._hooks_task
        if task is None:
            return
        # Each queued hook is bounded by hook_timeout on its own.
        each = float(self._config.hook_timeout)  # type: ignore[arg-type]
        timeout = each * (self._driver.hooks_pending + 1) + 1.0
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            self._log.error("hooks did not finish within %.1fs", timeout, extra=self._extra)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._driver.drop_hooks()
        self._hooks_task = None


def _hook_mask(config: ElectorConfig) -> int:
    """The driver's ``hooks`` bits for the hooks ``config`` sets."""
    return (
        (HOOK_ACQUIRE if config.on_acquire is not None else 0)
        | (HOOK_LOSE if config.on_lose is not None else 0)
        | (HOOK_NEW_LEADER if config.on_new_leader is not None else 0)
    )
