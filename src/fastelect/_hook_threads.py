"""An elector's own threads for its sync hooks (rule 9).

Why not ``asyncio.to_thread``: the loop's default executor is shared with
everything else in the process.  A sync hook that hangs keeps its thread (a
Python thread cannot be stopped), so a few hung hooks used to fill that
executor and with it delay storage I/O, other electors and later hooks; and
``concurrent.futures`` refuses new work once threading's shutdown hook has
run, before ``atexit`` handlers, so a sync ``on_lose`` at an ``atexit`` stop
never ran.

Each call here gets a daemon thread of its own, started for it, so a later
hook never waits behind a hung one.  Hooks are rare (leadership changes), so
a thread per call costs nothing that matters.  The bound is on hooks still
running: past ``max_running`` (earlier hooks hung past their timeout) a new
hook is not started and fails at once, so hung hooks cannot grow the process
without limit.  Where no thread may be started (interpreter shutdown, where
CPython 3.12 refuses), the hook runs inline on the caller's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Callable
from typing import Any

from ._futures import settle

__all__ = ["HookThreads", "HooksStuck"]


class HooksStuck(TimeoutError):
    """A hook was not started: too many earlier ones still run past their timeout."""


class HookThreads:
    """Run sync hooks each on a daemon thread of this object's own, at most ``max_running``."""

    __slots__ = ("_lock", "_max_running", "_name", "_pid", "_running")

    def __init__(self, name: str, *, max_running: int = 8) -> None:
        self._name = name
        self._max_running = max_running
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._running = 0

    @property
    def running(self) -> int:
        """Hooks running now, hung ones included."""
        return self._running if self._pid == os.getpid() else 0

    async def run(self, hook: Callable[..., Any], *args: Any) -> Any:
        """Run ``hook(*args)`` on a thread of its own and return (or raise) its outcome.

        Raises :class:`HooksStuck` (a :class:`TimeoutError`) at once if
        ``max_running`` earlier hooks are still running (hung past their timeouts).
        """
        if self._pid != os.getpid():
            # A forked child inherits none of the threads.
            self._pid, self._running, self._lock = os.getpid(), 0, threading.Lock()
        with self._lock:
            if self._running >= self._max_running:
                raise HooksStuck(
                    f"{self._running} earlier sync hooks of {self._name} are still running"
                    " past hook_timeout (a Python thread cannot be stopped), so this hook was"
                    " not started; keep hooks short and put leader work in leadership()"
                )
            self._running += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=self._work,
            args=(context, hook, args, future, loop),
            name=f"fastelect-hook {self._name}",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:
            # "can't create new thread at interpreter shutdown": run it here.
            try:
                return context.run(hook, *args)
            finally:
                with self._lock:
                    self._running -= 1
        return await future

    def _work(
        self,
        context: contextvars.Context,
        hook: Callable[..., Any],
        args: tuple[Any, ...],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = context.run(hook, *args)
        except BaseException as exc:
            error = exc
        finally:
            with self._lock:
                self._running -= 1
        # RuntimeError: the loop closed while the hook ran; nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, future, result, error)
