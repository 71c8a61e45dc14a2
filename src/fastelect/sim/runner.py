"""Many schedules, in parallel over processes, stopping at the first violation."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .world import SimFailure, run_schedule

__all__ = ["BLOCK", "RunSummary", "run_block", "run_many"]

#: Seeds per unit of work handed to a worker process.
BLOCK = 250


@dataclass(slots=True)
class RunSummary:
    """What a run of many schedules did."""

    base: int
    schedules: int = 0
    events: int = 0
    acquisitions: int = 0
    work_steps: int = 0
    seconds: float = 0.0
    stats: dict[str, int] = field(default_factory=dict)
    #: The first violation found (its message names the seed), or "".
    failure: str = ""
    failed_seed: int | None = None

    @property
    def rate(self) -> float:
        """Schedules per second of wall time."""
        return self.schedules / self.seconds if self.seconds else 0.0


_BlockResult = tuple[int, int, int, int, dict[str, int], str, int | None]


def run_block(start: int, count: int, mutant: str | None = None, lockstep: int = 0) -> _BlockResult:
    """Run seeds ``start .. start + count - 1``; stop at the first violation.

    ``mutant``: as :func:`~fastelect.sim.world.run_schedule` takes it;
    ``lockstep``: run the compiled Campaign and its twin in lockstep in the
    schedules whose seed is a multiple of it (1: every one; 0: none).
    """
    done = events = acq = work = 0
    stats: dict[str, int] = {}
    for seed in range(start, start + count):
        try:
            r = run_schedule(seed, mutant=mutant, lockstep=lockstep > 0 and seed % lockstep == 0)
        except SimFailure as exc:
            return done, events, acq, work, stats, str(exc), seed
        done += 1
        events += r.events
        acq += r.acquisitions
        work += r.work_steps
        for key, n in r.stats.items():
            stats[key] = stats.get(key, 0) + n
    return done, events, acq, work, stats, "", None


def _block(args: tuple[int, int, str | None, int]) -> _BlockResult:
    return run_block(*args)


def run_many(
    base: int,
    schedules: int,
    jobs: int = 0,
    progress: Callable[[RunSummary], None] | None = None,
    *,
    mutant: str | None = None,
    lockstep: int = 0,
    block: int = BLOCK,
) -> RunSummary:
    """Run seeds ``base .. base + schedules - 1`` on ``jobs`` processes (0: all cores).

    Each job takes disjoint blocks of ``block`` consecutive seeds.  Stops
    at the first violation and reports it (with its seed) in the summary.
    ``lockstep``: as :func:`run_block` takes it.  With a ``mutant``, blocks
    are taken in seed order, so the violation reported is that of the lowest
    failing seed: the mutant was caught after ``failed_seed - base + 1``
    schedules.
    """
    jobs = jobs or os.cpu_count() or 1
    summary = RunSummary(base)
    blocks = [
        (s, min(block, base + schedules - s), mutant, lockstep)
        for s in range(base, base + schedules, block)
    ]
    started = time.perf_counter()

    def absorb(res: _BlockResult) -> bool:
        done, events, acq, work, stats, failure, seed = res
        summary.schedules += done
        summary.events += events
        summary.acquisitions += acq
        summary.work_steps += work
        for key, n in stats.items():
            summary.stats[key] = summary.stats.get(key, 0) + n
        summary.seconds = time.perf_counter() - started
        if failure and not summary.failure:
            summary.failure, summary.failed_seed = failure, seed
        if progress is not None:
            progress(summary)
        return bool(failure)

    if jobs == 1:
        for args in blocks:
            if absorb(run_block(*args)):
                break
        return summary
    # spawn: a clean interpreter per worker, nothing inherited from the caller.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs) as pool:
        results = pool.imap(_block, blocks) if mutant else pool.imap_unordered(_block, blocks)
        for res in results:
            if absorb(res):
                pool.terminate()
                break
    summary.seconds = time.perf_counter() - started
    return summary


def print_progress(summary: RunSummary) -> None:
    """One line per finished block: schedules done and the rate."""
    print(
        f"  {summary.schedules:>9} schedules  {summary.rate:8.1f}/s  "
        f"{summary.seconds:8.1f} s  {summary.acquisitions} leaderships",
        file=sys.stderr,
        flush=True,
    )
