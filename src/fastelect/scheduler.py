"""One task and one timer wheel driving many electors on one event loop, renewals first.

An :class:`~fastelect.Elector` built with ``scheduler=`` owns no task, timer
or event of its own: the :class:`Scheduler` keeps one timer wheel (due times
rounded to ``resolution``) for all its electors and one driver task that, at
each wake-up, asks every due
:class:`~fastelect._core.Campaign` what it needs and starts that step as a
short task.  Leaderships share pooled leadership tables (256 slots each)
unless an elector brings its own ``table=``.

Under overload the order is fixed:

1. due renewals (and releases) start first, always: they protect held leases;
2. reads and peer checks next, within ``max_inflight`` steps in flight;
3. campaigns (CREATE / TAKEOVER) last, and only while the process keeps up.

The process "keeps up" while due work starts within ``lag_limit`` of its due
time (a lateness that lasts ``lag_limit``: one late turn, a GC pass or a
blocking call elsewhere, is not overload) and its load (the larger of the
process's CPU share of one core, counted once it drives 1,000 electors or
more, and the driver's share of wall time, over half a second) stays under
``cpu_limit``.  When it does not, waiting polls and campaigns are *shed*: put back by one to two
``frequent_interval`` (jittered), counted in :attr:`Scheduler.stats` and
reported by a rate-limited WARNING.  Campaigns stop earlier, past
``campaign_limit``: a won campaign is one more renewal every interval.
Shedding only delays a step, which the rules allow: a follower that reads
later takes over later, never earlier (rule 1 counts from when a read's
answer arrived), and a renewal's lease still counts from the moment its
write begins (rule 2), so a late renewal never extends a lease.

If the leaderships already held need more than the process has, renewals
run later every round and would all lapse together.  Once a due renewal is
past three quarters of its slack (the time from its due moment to its
lease's end) while the load stays over ``cpu_limit``, the newest quarter of
the leaderships due in that turn step down instead (counted as
``dropped_leaderships``; stepping down early is always safe), so the older
ones keep being renewed.  What is not guaranteed: a process that
is starved outright (stopped, or its loop blocked by other code for longer
than the slack) loses its leases like any other; ``is_leader()`` still turns
False at each deadline by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Coroutine
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from . import _core
from ._core import Action, LeadershipTable, Slot
from ._schedule_policy import SchedulePolicy, SchedulerStats
from ._stepping import Stepper
from .driver import HOLD
from .errors import ConfigError, LifecycleError

if TYPE_CHECKING:
    from .elector import Elector

__all__ = ["Scheduler", "SchedulerStats", "default_scheduler"]

_NS = 1_000_000_000
_RENEW = int(Action.RENEW)
_RELEASE = int(Action.RELEASE)
_WAIT = int(Action.WAIT)
_STOPPED = int(_core.Role.STOPPED)
_C_SHED_STEPS = int(_core.Counter.C_SHED_STEPS)
_C_OVERLOAD_STEPDOWNS = int(_core.Counter.C_OVERLOAD_STEPDOWNS)
#: How often in-flight steps are checked against their time bound.
_SWEEP_NS = 50_000_000
#: CPU use is measured over windows of this length.
_CPU_WINDOW_NS = 500_000_000
#: Electors below which the process's CPU share is not taken for this
#: scheduler's load (only the driver's own share of wall time is).
_CPU_SIGNAL_ELECTORS = 1000

# What the scheduler uses of an Elector (its side of the executor, in one
# place): ``_driver`` (the sans-I/O step: poll, take_events, step_down,
# hold_until, step_bound_ns, campaign), ``_slot`` (heartbeat, counters),
# ``_watchdog``, ``_dispatch(events)``, ``_stopping``, ``_fail(exc)``,
# ``_sched_step(action)`` (the step's I/O) and ``_sched_expired`` (read by
# that step to tell a time-bound cancel from its own), ``_sched_inline``.
# Every other piece of per-elector executor state (the wheel, what is in
# flight, tasks, kicks) lives here or in the policy, keyed by elector.
_campaign_of = attrgetter("_driver.campaign")
_frequent_of = attrgetter("_driver.frequent_ns")


class Scheduler:
    """Drives many :class:`~fastelect.Elector` objects from one task on one loop.

    Pass it as ``Elector(config, storage, scheduler=scheduler)``; everything
    else about the elector (``is_leader()``, ``leadership()``, hooks,
    ``stop()`` releasing, peer mode) works as without it.  A scheduler binds
    to the event loop of the first elector started on it.

    ``max_inflight``: reads and campaign writes in flight at once (renewals
    are never held back by it).  ``lag_limit``: seconds due work may wait
    before the process counts as overloaded.  ``cpu_limit``: fraction of one
    core (or of the driver's wall time, whichever is higher) past which
    campaigns and polls are shed.  ``campaign_limit``: the same fraction past
    which no new campaign starts (a won campaign adds a renewal per interval).
    ``warn_interval``: least seconds between two overload warnings.
    ``resolution``: the driver wakes at most once per this many seconds and
    then starts everything due, so a step may start up to this late (a late
    step is always safe: a renewal's lease counts from when it begins).

    The decisions (the wheel, renew-first, shedding, the overload
    step-down) are :class:`~fastelect._schedule_policy.SchedulePolicy`'s,
    sans I/O; this class performs them on the event loop.
    """

    def __init__(
        self,
        *,
        max_inflight: int = 512,
        lag_limit: float = 0.1,
        cpu_limit: float = 0.9,
        campaign_limit: float = 0.6,
        warn_interval: float = 10.0,
        resolution: float = 0.005,
        logger: logging.Logger | None = None,
    ) -> None:
        if not isinstance(max_inflight, int) or isinstance(max_inflight, bool):
            raise ConfigError("max_inflight", f"must be an integer, not {max_inflight!r}")
        if max_inflight < 1:
            raise ConfigError("max_inflight", f"must be at least 1, not {max_inflight}")
        for name, value in (
            ("lag_limit", lag_limit),
            ("warn_interval", warn_interval),
            ("resolution", resolution),
        ):
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(name, f"must be a positive number of seconds, not {value!r}")
        if not isinstance(cpu_limit, int | float) or isinstance(cpu_limit, bool):
            raise ConfigError("cpu_limit", f"must be a number, not {cpu_limit!r}")
        if not 0 < cpu_limit <= 1:
            raise ConfigError("cpu_limit", f"must be in (0, 1] (of one core), not {cpu_limit}")
        if not isinstance(campaign_limit, int | float) or not 0 < campaign_limit <= cpu_limit:
            raise ConfigError(
                "campaign_limit", f"must be in (0, cpu_limit={cpu_limit}], not {campaign_limit!r}"
            )
        self.max_inflight = max_inflight
        self.lag_limit_ns = int(lag_limit * _NS)
        self.cpu_limit = float(cpu_limit)
        self.campaign_limit = float(campaign_limit)
        self.warn_interval_ns = int(warn_interval * _NS)
        self.resolution_ns = int(resolution * _NS)
        self._log = logger or logging.getLogger(__name__)
        self._policy: SchedulePolicy[Elector] = SchedulePolicy(
            max_inflight=max_inflight,
            lag_limit_ns=self.lag_limit_ns,
            cpu_limit=self.cpu_limit,
            campaign_limit=self.campaign_limit,
            resolution_ns=self.resolution_ns,
            campaign_of=_campaign_of,
            frequent_of=_frequent_of,
        )
        #: Counters since the scheduler was made.
        self.stats: SchedulerStats = self._policy.stats
        self._active: set[Elector] = set()
        # Steps in flight: elector -> its kind (RENEW for a release too).
        self._inflight: dict[Elector, int] = {}
        # Steps run by a Task of their own: elector -> (task, deadline).
        self._tasks: dict[Elector, tuple[asyncio.Task[None], int]] = {}
        # Electors kicked while a step was in flight: re-queued at once when it ends.
        self._kicked: set[Elector] = set()
        # stop() waits for the step in flight: elector -> the future it waits on.
        self._finished: dict[Elector, asyncio.Future[None]] = {}
        # Electors whose storage steps inline (see _step).
        self._inline: set[Elector] = set()
        # Inline steps that yielded to the loop once (asyncio.sleep(0)): resumed
        # by the driver at its next turn, as a Task would be, without being one.
        self._resume: dict[Elector, Coroutine[Any, Any, None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wake_at = 0
        self._next_sweep = 0
        self._cpu_mark = (0, 0)
        self._cpu_busy = 0.0
        self._tables: list[LeadershipTable] = []
        self._slots_taken = 0
        self._last_warn_ns = 0
        self._shed_since_warn = 0
        self._dropped_since_warn = 0
        self._busy_ns = 0

    # -- public API ----------------------------------------------------------------

    @property
    def electors(self) -> int:
        """Electors running on this scheduler now."""
        return len(self._active)

    @property
    def overloaded(self) -> bool:
        """True if the last half second's load was over ``cpu_limit``."""
        return self._policy.busy > self.cpu_limit

    @property
    def _busy(self) -> float:
        # The larger of CPU share and the driver's share of wall time (the policy's input).
        return self._policy.busy

    @_busy.setter
    def _busy(self, value: float) -> None:
        self._policy.busy = value

    def close(self) -> None:
        """Unmap the pooled tables; only once every elector on them has stopped."""
        if self._active:
            raise LifecycleError(f"{len(self._active)} electors still run on this scheduler")
        for table in self._tables:
            table.close()
        self._tables.clear()

    # -- what Elector calls ----------------------------------------------------------

    def _new_slot(self, server_id: str) -> tuple[LeadershipTable, Slot]:
        """A slot in a pooled private table (one 256-slot table per 256 electors)."""
        index = self._slots_taken % 256
        if index == 0:
            self._tables.append(LeadershipTable(slots=256))
        self._slots_taken += 1
        table = self._tables[-1]
        # Private, unnamed tables: the name only has to be unique inside one.
        return table, table.slot(f"s{index}", server_id)

    def _add(self, elector: Elector) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        elif self._loop is not loop:
            raise LifecycleError("a Scheduler drives electors of one event loop only")
        self._active.add(elector)
        if elector._sched_inline:
            self._inline.add(elector)
        self._push(elector, _core.monotonic_ns())
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drive(), name="fastelect-scheduler")

    def _forget(self, elector: Elector) -> None:
        self._active.discard(elector)
        self._inline.discard(elector)
        self._kicked.discard(elector)
        self._policy.unschedule(elector)

    async def _remove(self, elector: Elector, bound: float) -> None:
        """Take ``elector`` off the wheel; wait up to ``bound`` s for its step in flight."""
        self._forget(elector)
        if elector not in self._inflight:
            return
        assert self._loop is not None
        finished = self._finished[elector] = self._loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(finished), bound)
        except TimeoutError:
            held = self._tasks.get(elector)
            if held is not None:
                task = held[0]
                task.cancel()
                await asyncio.wait({task})
        finally:
            self._finished.pop(elector, None)

    def _failed(self, elector: Elector, exc: BaseException) -> None:
        """An elector's step raised past its own guard: end that elector, loudly, not the rest."""
        if elector not in self._active:
            return
        self._forget(elector)
        elector._fail(exc)

    def _kick(self, elector: Elector) -> None:
        """Look at ``elector``'s campaign again now (stop, release, new config, expiry)."""
        if elector not in self._active:
            return
        if elector in self._inflight:
            self._kicked.add(elector)  # re-queued at once when its step ends
            return
        self._push(elector, 0)

    # -- the wheel -----------------------------------------------------------------

    def _push(self, elector: Elector, due_ns: int) -> None:
        at = self._policy.push(elector, due_ns)
        if 0 <= at < self._wake_at:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._wake_at = 0

    def _op_done(self, elector: Elector) -> None:
        """A step ended (its last act): schedule the elector's next one."""
        kind = self._inflight.pop(elector, _RENEW)
        if self._tasks:
            self._tasks.pop(elector, None)
        if self._finished:
            finished = self._finished.get(elector)
            if finished is not None and not finished.done():
                finished.set_result(None)
        if self._policy.ended(kind):
            self._wake()
        if elector in self._active:
            if self._kicked and elector in self._kicked:
                self._kicked.discard(elector)
                self._push(elector, 0)
            else:
                self._push(elector, elector._driver.campaign.next_at_ns)

    def _start(self, elector: Elector, action: int, now: int) -> None:
        self._inflight[elector] = self._policy.began(action)
        if elector in self._inline:
            self._step(elector, elector._sched_step(action), None)
            return
        assert self._loop is not None
        task = self._loop.create_task(elector._sched_step(action))
        self._tasks[elector] = (task, now + elector._driver.step_bound_ns(action, now))

    def _step(self, elector: Elector, coro: Coroutine[Any, Any, None], value: None) -> None:
        """Run an inline step until it yields; a Task costs more than the whole step.

        Only for storages that declare ``inline_steps`` (their coroutines never
        look at the current task).  A bare yield (``asyncio.sleep(0)``, ``YieldNow``) is
        resumed at the driver's next turn; a step that waits on a future is
        handed to a Task of its own from there on.
        """
        try:
            yielded = coro.send(value)
        except StopIteration:
            return  # the step's own ``finally`` already called _op_done
        except Exception as exc:  # the step guards itself; this is a bug past its guard
            self._failed(elector, exc)
            self._op_done(elector)
            return
        if yielded is None:
            self._resume[elector] = coro
            return
        assert self._loop is not None
        now = _core.monotonic_ns()
        kind = self._inflight.get(elector, _RENEW)
        task = self._loop.create_task(_handed_off(coro, yielded))
        self._tasks[elector] = (task, now + elector._driver.step_bound_ns(kind, now))

    # -- the driver ----------------------------------------------------------------

    async def _drive(self) -> None:
        try:
            await self._drive_turns()
        except Exception as exc:
            # A bug in the executor itself: its electors renew nothing from now
            # on, so each steps down at once and fails loudly (stop() raises it).
            self._log.error(
                "fastelect scheduler failed: %s; its %d electors stopped campaigning",
                exc,
                len(self._active),
                exc_info=exc,
            )
            for elector in list(self._active):
                self._failed(elector, exc)
            # Said once, above, and raised by each elector's stop(): the task
            # itself ends quietly rather than as an unretrieved exception.
        finally:
            # Idle (or its loop shut down): hold no reference to the loop, so a
            # loop's default scheduler goes with its loop (default_scheduler).
            self._task = None
            if not self._active and not self._inflight:
                self._loop = None
                # Entries left behind by re-scheduling name stopped electors.
                self._policy.clear()
                self._resume.clear()

    async def _drive_turns(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self._policy
        while self._active or self._inflight:
            if self._resume:
                resume, self._resume = self._resume, {}
                for elector, coro in resume.items():
                    self._step(elector, coro, None)
                resume.clear()  # a finished coroutine must not wait here for the next turn
            now = _core.monotonic_ns()
            if self._inflight and now >= self._next_sweep:
                self._sweep(now)
            self._measure_cpu(now)
            lag = self._take_due(now)
            self._start_ready(now, lag)
            self._busy_ns += _core.monotonic_ns() - now
            # Sleep until the next due step, the next sweep or a kick.
            wake = policy.next_due_ns()
            if wake < 0:
                wake = now + _NS
            if self._inflight:
                wake = min(wake, self._next_sweep)
            if self._resume or policy.has_room():
                wake = now  # steps to resume, or room freed meanwhile: go round again
            if wake <= now:
                self._wake_at = 0
                await asyncio.sleep(0)
                continue
            # One wake-up per resolution serves every step due by then: a timer
            # and a loop turn per step would cost more than the steps.
            wake = max(wake, now + self.resolution_ns)
            waiter = self._waiter = loop.create_future()
            self._wake_at = wake
            timer = loop.call_at(loop.time() + (wake - now) / _NS, _set_done, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
                self._wake_at = 0

    def _take_due(self, now: int) -> int:
        """Poll every due elector; start renewals, queue the rest; return the worst lag."""
        policy = self._policy
        stats = self.stats
        due, lag = policy.take_due(now)
        renewals: list[Elector] = []
        for elector in due:
            if elector._stopping:
                continue  # stopped meanwhile
            d = elector._driver
            try:
                action = d.poll(now)
                events = d.take_events()
                if events:
                    elector._dispatch(events)
                elector._slot.heartbeat(now, elector._watchdog)
            except Exception as exc:  # a bug: it ends this elector, loudly, not the others
                self._failed(elector, exc)
                continue
            if action == _WAIT:
                c = d.campaign
                if c.role != _STOPPED:
                    self._push(elector, c.next_at_ns)
                continue
            if action == HOLD:
                # Rule 9: the last leadership's hooks finish first; they kick it.
                self._push(elector, d.hold_until(now))
                continue
            if action == _RENEW:
                renewals.append(elector)
            elif action == _RELEASE:
                stats.renewals += 1
                self._start(elector, action, now)
            else:
                policy.queue(elector, action, now)
        if renewals:
            self._renew(renewals, now)
        return lag

    def _renew(self, renewals: list[Elector], now: int) -> None:
        """Start due renewals; if they run so late that leases are at risk, drop the newest.

        The policy (``SchedulePolicy.renew``) decides which; here the
        dropped ones step down (no write: stepping down early is always
        safe) and the rest start.
        """
        start, drop = self._policy.renew(renewals, now)
        if drop:
            for elector in drop:
                d = elector._driver
                d.step_down(now)
                elector._slot.count(_C_OVERLOAD_STEPDOWNS)
                try:
                    elector._dispatch(d.take_events())
                except Exception as exc:
                    self._failed(elector, exc)
                    continue
                self._push(elector, d.hold_until(now))
            self._warn(now, dropped_now=len(drop))
        for elector in start:
            self._start(elector, _RENEW, now)

    def _start_ready(self, now: int, lag: int) -> None:
        policy = self._policy
        if not policy.ready:
            return
        starts, shed = policy.start_ready(now, lag, self._waiting)
        for elector, action in starts:
            self._start(elector, action, now)
        if shed:
            for elector, _ in shed:
                elector._slot.count(_C_SHED_STEPS)  # for /metrics, per election
            self._warn(now, shed_now=len(shed))

    def _waiting(self, elector: Elector) -> bool:
        """True if a queued step of ``elector`` is still its next one."""
        return not elector._stopping and elector in self._active and elector not in self._inflight

    def _warn(self, now: int, shed_now: int = 0, dropped_now: int = 0) -> None:
        """One WARNING per ``warn_interval`` at most, with what was shed meanwhile."""
        self._shed_since_warn += shed_now
        self._dropped_since_warn += dropped_now
        if self._last_warn_ns and now - self._last_warn_ns < self.warn_interval_ns:
            return
        stats = self.stats
        self._log.warning(
            "fastelect scheduler overloaded (%d electors, %.0f%% busy, renewals up to %.0f ms "
            "late): put back %d polls and campaigns, stepped down from %d of the newest "
            "leaderships; the others are renewed first",
            len(self._active),
            self._policy.busy * 100,
            stats.max_renew_lag_ns / 1e6,
            self._shed_since_warn,
            self._dropped_since_warn,
            extra={
                "electors": len(self._active),
                "shed": self._shed_since_warn,
                "dropped": self._dropped_since_warn,
                "shed_total": stats.shed,
                "dropped_total": stats.dropped_leaderships,
            },
        )
        self._last_warn_ns = now
        self._shed_since_warn = 0
        self._dropped_since_warn = 0

    def _sweep(self, now: int) -> None:
        """Cancel steps that outlived their bound; the step reports a timeout."""
        self._next_sweep = now + _SWEEP_NS
        for elector, (task, deadline) in list(self._tasks.items()):
            if now >= deadline and not task.done() and not elector._sched_expired:
                elector._sched_expired = True
                self.stats.timeouts += 1
                task.cancel("fastelect: storage step timed out")

    def _measure_cpu(self, now: int) -> None:
        start, cpu = self._cpu_mark
        if now - start < _CPU_WINDOW_NS:
            return
        cpu_now = time.process_time_ns()
        if start:
            # CPU share alone misses a process starved by its neighbours; the
            # driver's share of wall time alone misses work done in step tasks.
            # But the process's CPU is the scheduler's doing only when it drives
            # many electors (1,000 cost under 1 % of a core): below that a busy
            # process is the application's, and shedding would only slow failover.
            self._cpu_busy = (cpu_now - cpu) / (now - start)
            ours = self._cpu_busy if len(self._active) >= _CPU_SIGNAL_ELECTORS else 0.0
            self._policy.busy = max(ours, self._busy_ns / (now - start))
        self._busy_ns = 0
        self._cpu_mark = (now, cpu_now)


async def _handed_off(coro: Coroutine[Any, Any, None], yielded: object) -> None:
    await Stepper(coro, yielded=yielded)


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


#: Each event loop's default scheduler (``default_scheduler``).
_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Scheduler]
_defaults = weakref.WeakKeyDictionary()


def default_scheduler() -> Scheduler:
    """The running event loop's scheduler for electors built without ``scheduler=``.

    One per loop, made on first use and gone with its loop: every elector of
    a process shares its timer wheel, its renew-first order under overload,
    and its pooled tables.
    """
    loop = asyncio.get_running_loop()
    scheduler = _defaults.get(loop)
    if scheduler is None:
        scheduler = _defaults[loop] = Scheduler()
    return scheduler
