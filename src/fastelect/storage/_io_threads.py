"""A storage's own few threads for blocking calls, usable at interpreter exit.

Why not ``asyncio.to_thread`` (the loop's default executor): it is shared with
everything else in the process (a hung hook or a slow user job delays lock
I/O), and ``concurrent.futures`` refuses new work once threading's shutdown
hook has run, which is *before* ``atexit`` handlers, so a release at exit
failed with "cannot schedule new futures after shutdown" and the record
waited out its lease.

These threads are daemon threads: a call hung in the kernel never keeps the
interpreter from exiting, and they keep serving ``atexit`` handlers. Where no
new thread may be started (CPython 3.12 refuses thread creation once
threading's shutdown hook ran), a call that finds no thread to take it runs
inline on the caller's thread instead.

Bounds: at most ``max_threads`` threads (a call hung in the kernel keeps its
thread; the rest keep serving) and at most ``max_waiting`` calls queued
behind busy threads; past that a call fails at once with
:class:`~fastelect.errors.StorageUnavailable` instead of piling up. A queued
call whose awaiting task was cancelled (its timeout ran out) is dropped
without running. Idle threads exit after ``idle_s`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .._futures import settle
from ..errors import StorageUnavailable

__all__ = ["IOThreads"]

T = TypeVar("T")


class _Job(Generic[T]):
    __slots__ = ("args", "fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        future: asyncio.Future[T],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.fn = fn
        self.args = args
        self.future = future
        self.loop = loop


class IOThreads:
    """Run blocking calls on up to ``max_threads`` daemon threads of this object's own."""

    def __init__(
        self,
        name: str,
        *,
        max_threads: int = 8,
        max_waiting: int = 256,
        idle_s: float = 10.0,
    ) -> None:
        self._name = name
        self._max_threads = max_threads
        self._max_waiting = max_waiting
        self._idle_s = idle_s
        self._reset()

    def _reset(self) -> None:
        # Also the fork handler: a forked child inherits none of the threads,
        # and possibly a condition some parent thread held at the fork.
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Job[Any]] = collections.deque()
        self._threads = 0
        self._idle = 0
        self._closing = False

    @property
    def threads(self) -> int:
        """Threads alive now (busy, hung or idle)."""
        return self._threads

    @property
    def waiting(self) -> int:
        """Calls queued behind busy threads (cancelled ones included until dropped)."""
        return len(self._queue)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on one of the threads and return (or raise) its outcome."""
        if self._pid != os.getpid():
            self._reset()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(fn, args, future, loop)
        spawn = False
        with self._cond:
            if len(self._queue) >= self._max_waiting:
                self._drop_cancelled()
                if len(self._queue) >= self._max_waiting:
                    raise StorageUnavailable(
                        f"{self._name}: {self._threads} I/O threads are busy and"
                        f" {len(self._queue)} calls are waiting for them; the filesystem"
                        " is not answering"
                    )
            self._closing = False
            self._queue.append(job)
            if len(self._queue) > self._idle and self._threads < self._max_threads:
                self._threads += 1
                spawn = True
            self._cond.notify()
        if spawn:
            try:
                threading.Thread(
                    target=self._work, name=f"fastelect-io {self._name}", daemon=True
                ).start()
            except RuntimeError:
                # "can't create new thread at interpreter shutdown" (3.12): run
                # inline unless a live thread has taken the call already.
                with self._cond:
                    self._threads -= 1
                    try:
                        self._queue.remove(job)
                    except ValueError:
                        taken = True
                    else:
                        taken = False
                if not taken:
                    return fn(*args)  # outside the condition: other threads keep serving
        return await future

    def close(self) -> None:
        """Let idle threads exit now instead of after ``idle_s`` (busy ones finish first)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def _drop_cancelled(self) -> None:
        live = [job for job in self._queue if not job.future.cancelled()]
        self._queue.clear()
        self._queue.extend(live)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                while not self._queue:
                    # Closing, or idle for idle_s, and still nothing to do: exit.
                    idle = self._closing or not self._cond.wait(self._idle_s)
                    if idle and not self._queue:
                        self._idle -= 1
                        self._threads -= 1
                        return
                self._idle -= 1
                job = self._queue.popleft()
            if job.future.cancelled():
                continue  # the caller gave up before the call started
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.fn(*job.args)
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                job.loop.call_soon_threadsafe(settle, job.future, result, error)
            del job, result, error
