"""Leader-only work of an Elector: ``leadership()``, ``fence()``, ``run_while_leader()``.

A mixin of :class:`~fastelect.Elector`.  Work that depends on the lease is
cancelled at its end by a timer at the deadline (rule 6), even while the
elector's step awaits a slow write; guarded work is never resumed after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import _core
from ._stepping import Stepper
from .status import LeadershipLost

if TYPE_CHECKING:
    from .config import ElectorConfig
    from .driver import Driver

__all__ = ["LeaderWork"]

T = TypeVar("T")
_NS = 1_000_000_000


class LeaderWork:
    """Leadership-scoped blocks, fencing and guarded leader work (a mixin of Elector)."""

    if not TYPE_CHECKING:
        __slots__ = ()  # the elector's own slots hold the state
    else:
        _config: ElectorConfig
        _driver: Driver
        _campaign: _core.Campaign
        _slot: _core.Slot
        _where: str
        _expiry: asyncio.TimerHandle | None
        _scoped: set[asyncio.Task[Any]] | None
        _leading: asyncio.Event | None

        # The Elector's own methods and property, as this mixin sees them.
        _kick: Callable[[], None]
        is_leader: Callable[[], bool]
        wait_for_leadership: Callable[[], Awaitable[None]]

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
            yield int(self._campaign.term)  # leading: our term (Elector.term)
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
