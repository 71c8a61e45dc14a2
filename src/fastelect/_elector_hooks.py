"""The Elector's hooks: run what its driver queued, one at a time, each bounded (rule 9).

A mixin of :class:`~fastelect.Elector`.  The driver keeps the queue and its
rule 9 accounting; this runs each hook (a sync one on a thread of the
elector's own, :mod:`fastelect._hook_threads`) within ``hook_timeout`` and
reports how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._hook_threads import HooksStuck, HookThreads
from .driver import HOOK_ACQUIRE, HOOK_LOSE, HOOK_NEW_LEADER

if TYPE_CHECKING:
    from .config import ElectorConfig
    from .driver import Driver

__all__ = ["HookRunner", "hook_mask"]


class _HookTimeout(TimeoutError):
    """A hook ran past ``hook_timeout`` (rule 9: it counts as failed)."""


def hook_mask(config: ElectorConfig) -> int:
    """The driver's ``hooks`` bits for the hooks ``config`` sets."""
    return (
        (HOOK_ACQUIRE if config.on_acquire is not None else 0)
        | (HOOK_LOSE if config.on_lose is not None else 0)
        | (HOOK_NEW_LEADER if config.on_new_leader is not None else 0)
    )


class HookRunner:
    """Runs an elector's queued hooks on a task made per burst (a mixin of Elector)."""

    if not TYPE_CHECKING:
        __slots__ = ()  # the elector's own slots hold the state
    else:
        _config: ElectorConfig
        _driver: Driver
        _log: logging.Logger
        _extra: dict[str, str]
        _where: str
        _stopping: bool
        _hooks_task: asyncio.Task[None] | None
        _hook_threads: HookThreads | None
        election: str

        _forked: Callable[[], bool]

        def _kick(self) -> None: ...

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
