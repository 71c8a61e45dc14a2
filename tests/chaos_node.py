"""One chaos-test node, run as a real subprocess by ``tests/test_faults.py``.

An :class:`~fastelect.Elector` on :class:`~fastelect.S3Storage` (pointed at
the node's fault-proxy port) campaigns for one lock. Two observers write JSON
lines to ``--log``, every time stamp on CLOCK_BOOTTIME (one clock for every
process on the host, so the lines of all nodes can be merged):

* a sampler *thread* asks ``is_leader()`` every couple of milliseconds and
  logs leadership runs: ``lead`` (with the term), ``beat`` while it lasts and
  ``unlead``. Stamps are the conservative side of each sample: a run starts
  at the stamp taken *after* its first True answer and ends at the stamp
  taken *before* its last one, so a logged run lies inside the real one.
* leader work, in ``Elector.leadership()``, as ``step`` lines: a step is
  ``is_leader()``, stamp, an await (the "side effect"), stamp,
  ``is_leader()`` with the same term. A step counts (``ok``) only if both
  checks passed, which is how the docs tell users to fence side effects.

``--broken`` wraps the elector in :class:`BrokenOracle`, which keeps
answering True for ``2 * lease`` after its last real True: the checker in
``test_faults.py`` must catch it.

Usage: ``python chaos_node.py --id n1 --endpoint URL --bucket B --prefix P
--log FILE --parent PID [--lease 0.5] [--broken]``; SIGTERM stops it cleanly, and it dies
with the test process (PR_SET_PDEATHSIG) so it never outlives a crashed run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastelect import Elector, ElectorConfig, LeadershipLost, S3Storage

_PR_SET_PDEATHSIG = 1
#: How often the sampler asks is_leader() (seconds).
SAMPLE_EVERY = 0.002
#: How often a running leadership is confirmed in the log (nanoseconds).
BEAT_EVERY_NS = 20_000_000


def boottime_ns() -> int:
    """CLOCK_BOOTTIME: system-wide, so stamps from every process compare."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class EventLog:
    """JSON lines appended with one write(2) each, safe from several threads.

    O_APPEND and unbuffered writes: a line is in the file the moment it is
    written, so a SIGKILL loses nothing already logged.
    """

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: str, **fields: Any) -> None:
        os.write(self._fd, (json.dumps({"ev": event, **fields}) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


class Oracle(Protocol):
    """What the observers ask: the elector itself, or a broken wrapper of it."""

    def is_leader(self) -> bool: ...

    def term(self) -> int: ...

    def leadership(self) -> contextlib.AbstractAsyncContextManager[int]: ...


class ElectorOracle:
    """The real elector."""

    def __init__(self, elector: Elector) -> None:
        self.elector = elector
        self.is_leader = elector.is_leader

    def term(self) -> int:
        # The slot's snapshot is consistent from any thread (seqlock); the
        # Campaign's attributes belong to the loop thread.
        return int(self.elector.slot.status()["term"])

    def leadership(self) -> contextlib.AbstractAsyncContextManager[int]:
        return self.elector.leadership()


class BrokenOracle:
    """Deliberately unsafe: answers True for ``hold_ns`` after the last real True."""

    def __init__(self, elector: Elector, hold_ns: int) -> None:
        self.elector = elector
        self._hold_ns = hold_ns
        self._last_true = 0
        self._term = 0

    def is_leader(self) -> bool:
        now = boottime_ns()
        if self.elector.is_leader():
            self._last_true = now
            self._term = int(self.elector.slot.status()["term"])
            return True
        return self._last_true > 0 and now - self._last_true < self._hold_ns

    def term(self) -> int:
        return self._term

    @contextlib.asynccontextmanager
    async def _leadership(self) -> AsyncIterator[int]:
        while not self.is_leader():
            await asyncio.sleep(SAMPLE_EVERY)
        yield self._term  # and, being broken, never cancels the block

    def leadership(self) -> contextlib.AbstractAsyncContextManager[int]:
        return self._leadership()


def sample(oracle: Oracle, log: EventLog, stop: threading.Event) -> None:
    """Log leadership runs as seen by is_leader() from this thread."""
    leading = False
    run_term = 0
    last_true = 0  # stamp before the latest True answer
    last_beat = 0
    while not stop.is_set():
        before = boottime_ns()
        term_a = oracle.term()
        answer = oracle.is_leader()
        term_b = oracle.term()
        after = boottime_ns()
        if answer and term_a != term_b:
            continue  # the slot changed around the answer: ask again
        if answer:
            if leading and term_a != run_term:
                log.write("unlead", t=last_true)  # a new leadership without a gap seen
                leading = False
            if not leading:
                log.write("lead", t=after, term=term_a)
                leading, run_term, last_beat = True, term_a, after
            last_true = before
            if before - last_beat >= BEAT_EVERY_NS:
                log.write("beat", t=before)
                last_beat = before
        elif leading:
            log.write("unlead", t=last_true)
            leading = False
        stop.wait(SAMPLE_EVERY)
    if leading:
        log.write("unlead", t=last_true)


async def work(oracle: Oracle, log: EventLog, step_s: float) -> None:
    """Leader work in steps, each fenced by is_leader() before and after."""
    while True:
        try:
            async with oracle.leadership() as term:
                while True:
                    ok = oracle.is_leader()
                    start = boottime_ns()
                    if not ok:
                        break
                    try:
                        await asyncio.sleep(step_s)
                    except LeadershipLost:
                        log.write("abort", s=start, t=boottime_ns(), term=term)
                        raise
                    end = boottime_ns()
                    ok = oracle.is_leader() and oracle.term() == term
                    log.write("step", s=start, e=end, term=term, ok=ok)
        except LeadershipLost:
            pass


async def run(args: argparse.Namespace, log: EventLog) -> None:
    lease = args.lease
    storage = S3Storage(
        args.bucket,
        args.prefix,
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        timeout=lease,
    )
    config = ElectorConfig(
        args.lock,
        args.id,
        frequent_interval=lease / 4,
        infrequent_interval=lease / 2,
        leader_timeout=lease,
    )
    elector = Elector(config, storage)
    oracle: Oracle = (
        BrokenOracle(elector, int(2 * lease * 1e9)) if args.broken else ElectorOracle(elector)
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    stop_sampler = threading.Event()
    sampler = threading.Thread(target=sample, args=(oracle, log, stop_sampler), daemon=True)
    await elector.start()
    sampler.start()
    worker = asyncio.create_task(work(oracle, log, lease / 20))
    log.write("up", t=boottime_ns(), pid=os.getpid())
    try:
        await stopping.wait()
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await elector.stop()
        stop_sampler.set()
        sampler.join()
        await storage.close()
        log.write("down", t=boottime_ns())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--id", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--lock", default="leader.json")
    parser.add_argument("--log", required=True)
    parser.add_argument("--lease", type=float, default=0.5, help="leader_timeout, seconds")
    parser.add_argument("--broken", action="store_true")
    parser.add_argument("--parent", type=int, required=True, help="pid of the test process")
    args = parser.parse_args(argv)
    # Die with the test process, even if it is SIGKILLed.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != args.parent:
        return 1  # the parent died before the prctl: nobody will reap us
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {args.id} %(levelname)s %(name)s: %(message)s",
    )
    log = EventLog(args.log)
    try:
        asyncio.run(run(args, log))
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
