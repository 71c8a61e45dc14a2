"""Awaiting a coroutine one step at a time from inside another awaitable.

Two places drive a coroutine by hand instead of awaiting it: guarded leader
work (``Elector.run_while_leader``, rule 6: no step resumes once the lease
ended) and the scheduler's inline steps, which it starts itself and hands to
a Task only when they wait on a future.  :class:`Stepper` is that loop, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any

__all__ = ["Stepper"]

#: ``Stepper(yielded=...)`` default: the coroutine has not run yet.
_UNSTARTED: Any = object()


class Stepper:
    """Runs ``coro`` to its end, passing each of its yields up to the awaiting Task.

    ``alive``, if given, is asked before every resume; once it answers False,
    ``CancelledError`` is thrown into the coroutine instead of resuming it
    and :attr:`lost` turns True.  ``yielded``: what the coroutine yielded when
    someone else already started it (the Task then waits on that first).
    Whatever the Task throws in (its ``cancel()``) is thrown into the coroutine.
    """

    __slots__ = ("_alive", "_coro", "_yielded", "lost")

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        alive: Callable[[], bool] | None = None,
        yielded: object = _UNSTARTED,
    ) -> None:
        self._coro = coro
        self._alive = alive
        self._yielded = yielded
        #: True once ``alive()`` said False and the coroutine was cancelled.
        self.lost = False

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, alive = self._coro, self._alive
        yielded = self._yielded
        started = yielded is not _UNSTARTED
        value: Any = None
        exc: BaseException | None = None
        while True:
            if started:
                try:
                    value = yield yielded
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as thrown:  # the task's cancel() and friends
                    exc = thrown
            started = True
            if alive is not None and not alive():
                self.lost = True
                exc = asyncio.CancelledError("fastelect: the lease ended")
            try:
                yielded = coro.send(value) if exc is None else coro.throw(exc)
            except StopIteration as done:
                return done.value
            value, exc = None, None
