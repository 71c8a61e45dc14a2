"""The Elector's storage and peer steps: performs what its driver asks for, and logs it.

A mixin of :class:`~fastelect.Elector` (its methods run on the elector's own
attributes; nothing else calls them but the elector and its scheduler's
``_sched_step`` call).  Each step feeds the outcome to the
:class:`~fastelect.driver.Driver` with the instant it arrived (rule 1).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from typing import TYPE_CHECKING, cast

from . import _core
from ._core import Action
from ._logfold import LogFold, folded_suffix
from .driver import READ_GARBAGE, READ_LONG_LEASE
from .errors import PreconditionFailed, StorageAuthError, StorageError, StorageUnavailable
from .storage.base import BucketNotFound, ObjectNotFound

if TYPE_CHECKING:
    from .config import ElectorConfig
    from .driver import Driver
    from .elector import Elector
    from .peer import PeerChecker
    from .scheduler import Scheduler
    from .storage.base import Storage

__all__ = ["StorageSteps"]

_NS = 1_000_000_000
# start(wait_for_store=...): the pause after the first failed check, and the cap.
_FIRST_STORE_RETRY = 0.1
_LAST_STORE_RETRY = 5.0
_jitter = random.Random()


class StorageSteps:
    """Reads, conditional writes and peer checks of one elector (a mixin of Elector)."""

    if not TYPE_CHECKING:
        __slots__ = ()  # the elector's own slots hold the state
    else:
        _config: ElectorConfig
        _storage: Storage
        _log: logging.Logger
        _extra: dict[str, str]
        _where: str
        _driver: Driver
        _campaign: _core.Campaign
        _sched: Scheduler | None
        _sched_op: bool
        _sched_expired: bool
        _fold: LogFold | None
        _peer: PeerChecker | None
        _peer_healthy: bool
        _last_error: BaseException | None

        def _arm_expiry(self, deadline_ns: int) -> None: ...
        def _dispatch(self, events: int) -> None: ...

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
                sched._failed(cast("Elector", self), exc)
            sched._op_done(cast("Elector", self))

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
