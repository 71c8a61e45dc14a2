"""Many elections in one process (issue 9 section 2): memory, CPU and overload.

Each election is its own lock key on one MemoryStorage with one elector, so
every elector leads and renews once per F: the figures are the driver's cost,
not the store's.

* ``test_scale_memory_and_cpu``: N scheduled electors (one
  :class:`~fastelect.scheduler.Scheduler`) against the same-run baseline of
  unscheduled electors (a task, events and timers each, a private table).
  Reports per-election memory (RSS delta / N, and tracemalloc over a sample),
  CPU per renew cycle (``time.process_time`` over a steady window divided by
  the renewals in it) and the leaders held.  Full mode: 100,000 elections at
  F = 5 s, T = 15 s (the issue's goal: all led, <= 8 KB each, <= 10 us CPU per
  renew cycle); gate mode: 10,000 at F = 1 s, T = 3 s.
* ``test_scale_overload``: 1x is the load that uses ~70 % of one core by the
  renew cost measured first; the process then takes 2x and 4x that many
  elections.  Reports the leaderships held at 1x that stay held (same term,
  never lost) at 2x and 4x, the total held, and the shed counter; the
  baseline is the same schedule with unscheduled electors.  Goal: >= 95 % held
  at 2x, and the shed counter and warning when it sheds.

The machine is shared: CPU-time figures are the ones to trust; the load
average at each measurement is stored with the figures (``uptime``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from benchkit import GATE, Result, record
from fastelect import Elector, ElectorConfig, MemoryStorage
from fastelect.scheduler import Scheduler

#: The issue's targets.
MAX_BYTES_PER_ELECTION = 8 * 1024
MAX_US_PER_RENEW = 10.0
MIN_HELD_AT_2X = 0.95

N = 10_000 if GATE else 100_000
F, T = (1.0, 3.0) if GATE else (5.0, 15.0)
#: The unscheduled baseline costs ~28 KB and a task each: a tenth as many.
N_BASELINE = 2_000 if GATE else 10_000
#: The overload schedule's interval: short, so a few seconds hold many cycles
#: and a few thousand elections saturate a core.
OVER_F, OVER_T = (0.1, 0.5) if GATE else (0.5, 2.5)
#: Most 1x elections (4x is four times as many electors, and memory).  High
#: enough that 1x really is ~70 % of a core at ~6 us per renew: a lower cap
#: would leave 2x short of saturation and prove nothing.
OVER_MAX_N1 = 12_000 if GATE else 60_000
#: The unscheduled baseline runs 1x and 2x only, on at most this many at 1x:
#: at ~20 us per renew its 2x is past one core too.
OVER_BASE_N1 = 4_000 if GATE else 20_000
#: The fleet that calibrates 1x.
OVER_PROBE_N = 8_000 if GATE else 20_000
#: How long each overload phase is watched, in leases.
OVER_WATCH_LEASES = 3 if GATE else 4


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def _config(i: int, f: float, t: float, prefix: str = "scale") -> ElectorConfig:
    return ElectorConfig(
        f"{prefix}/{i}.json",
        "bench-node",
        frequent_interval=f,
        infrequent_interval=f,
        leader_timeout=t,
        storage_timeout=min(1.0, t / 3),
    )


async def _stop_all(electors: list[Elector]) -> None:
    """Stop electors a thousand at a time (one at a time takes a loop turn each)."""
    for i in range(0, len(electors), 1000):
        await asyncio.gather(*(e.stop() for e in electors[i : i + 1000]))


async def _wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s: {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


@dataclass
class Fleet:
    """Figures of one fleet of electors, scheduled or not."""

    n: int
    rss_per: float
    led_after_s: float
    us_per_renew: float
    cpu_share: float
    leaders: int
    load: str


async def _fleet(n: int, f: float, t: float, scheduler: Scheduler | None) -> Fleet:
    """Start ``n`` electors, wait until all lead, measure a steady window, stop them."""
    storage = MemoryStorage()
    gc.collect()
    rss0 = _rss()
    started = time.monotonic()
    electors = [Elector(_config(i, f, t), storage, scheduler=scheduler) for i in range(n)]
    for e in electors:
        await e.start()
    try:
        led_after = await _wait(
            lambda: sum(e.is_leader() for e in electors) == n,
            # Starting 100,000 at once sheds most first steps (they come back
            # over one to two intervals) and gen-2 GC passes of a few hundred
            # ms hold campaigns back: all lead within about a minute.
            600,
            f"not all {n} electors lead",
        )
        led_after = time.monotonic() - started
        # Settle a cycle, then measure over ~3 intervals in CPU time.
        await asyncio.sleep(f)
        rss = _rss() - rss0
        puts0 = storage.stats.puts
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(3 * f)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        renewals = storage.stats.puts - puts0
        leaders = sum(e.is_leader() for e in electors)
        return Fleet(
            n,
            rss / n,
            led_after,
            cpu / max(renewals, 1) * 1e6,
            cpu / wall,
            leaders,
            _load(),
        )
    finally:
        await _stop_all(electors)


async def _tracemalloc_per_election(n: int, f: float, t: float) -> float:
    """Python heap bytes per scheduled election (all led), traced over ``n`` electors."""
    storage = MemoryStorage()
    scheduler = Scheduler()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        electors = [
            Elector(_config(i, f, t, "traced"), storage, scheduler=scheduler) for i in range(n)
        ]
        for e in electors:
            await e.start()
        await _wait(lambda: all(e.is_leader() for e in electors), 60, "traced fleet never led")
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    await _stop_all(electors)
    scheduler.close()
    return grown / n


def _fleet_in_child(n: int, f: float, t: float, scheduled: bool) -> tuple[Fleet, int]:
    """Run ``_fleet`` in a fresh interpreter: RSS deltas in a process that ran
    other fleets before count reused heap as free.  Returns it and the shed count."""
    args = [sys.executable, __file__, str(n), str(f), str(t), "1" if scheduled else "0"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, f"fleet child failed:\n{done.stderr[-4000:]}"
    out = orjson.loads(done.stdout.strip().splitlines()[-1])
    shed = out.pop("shed")
    return Fleet(**out), shed


def _child_main(argv: list[str]) -> None:
    import uvloop

    logging.basicConfig(level=logging.ERROR)
    n, f, t, scheduled = int(argv[0]), float(argv[1]), float(argv[2]), argv[3] == "1"
    scheduler = Scheduler() if scheduled else None
    fleet = uvloop.run(_fleet(n, f, t, scheduler))
    shed = scheduler.stats.shed if scheduler is not None else 0
    print(orjson.dumps({**dataclasses.asdict(fleet), "shed": shed}).decode())


#: The full mode starts 100,000 electors: far past the suite's 120 s timeout.
LONG = pytest.mark.timeout(120 if GATE else 1800)


@LONG
def test_scale_memory_and_cpu(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """N scheduled elections all led: bytes per election and CPU per renew cycle."""
    logging.getLogger("fastelect").setLevel(logging.WARNING)
    figures: dict[str, Any] = {}

    def run() -> None:
        # Each fleet in a process of its own (uvloop), one after the other.
        ours, shed = _fleet_in_child(N, F, T, scheduled=True)
        baseline, _ = _fleet_in_child(N_BASELINE, F, T, scheduled=False)
        traced = loop.run_until_complete(_tracemalloc_per_election(min(N, 5_000), F, T))
        figures.update(ours=ours, baseline=baseline, traced=traced, shed=shed)

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    ours, baseline = figures["ours"], figures["baseline"]
    assert ours.leaders == N, f"only {ours.leaders} of {N} scheduled elections led"
    assert baseline.leaders == N_BASELINE
    extra = {
        "elections": N,
        "frequent_s": F,
        "lease_s": T,
        "led_after_s": round(ours.led_after_s, 1),
        "cpu_share_of_a_core": round(ours.cpu_share, 3),
        "tracemalloc_bytes_per_election": round(figures["traced"]),
        "baseline_elections": N_BASELINE,
        "baseline_cpu_share": round(baseline.cpu_share, 3),
        "shed_at_start": figures["shed"],
        "load": ours.load,
        "note": (
            f"{N} elections at F={F:g}s: all led after {ours.led_after_s:.1f}s, "
            f"{ours.rss_per / 1024:.1f} KB RSS and {figures['traced'] / 1024:.1f} KB traced each, "
            f"{ours.us_per_renew:.1f} us CPU per renew ({ours.cpu_share:.0%} of a core); "
            f"baseline {N_BASELINE} unscheduled: {baseline.rss_per / 1024:.1f} KB, "
            f"{baseline.us_per_renew:.1f} us ({ours.load})"
        ),
    }
    record(
        benchmark,
        Result(
            "scheduled elections, bytes each",
            "KB RSS",
            ours.rss_per / 1024,
            baseline.rss_per / 1024,
            "unscheduled Electors",
            target=2.0,
            limit=MAX_BYTES_PER_ELECTION / 1024,
            extra=extra,
            paired=False,
        ),
    )
    record(
        benchmark,
        Result(
            "scheduled renew cycle CPU",
            "us CPU/renew",
            ours.us_per_renew,
            baseline.us_per_renew,
            "unscheduled Electors",
            target=1.5,
            # One fleet run each: the ratio swung 1.3-2.2x between runs, too wide to gate.
            gated=False,
            limit=MAX_US_PER_RENEW,
            extra={"load": ours.load, "baseline_load": baseline.load},
            paired=False,
        ),
    )


# -- overload ---------------------------------------------------------------------------


@dataclass
class Phase:
    """What one load level kept."""

    load_factor: int
    electors: int
    leaders: int
    held_from_1x: float
    shed: int
    cpu_share: float
    load: str


async def _overload(
    n1: int, scheduler: Scheduler | None, factors: tuple[int, ...] = (1, 2, 4)
) -> list[Phase]:
    """1x, then 2x, then 4x elections on one process; what the 1x leaders keep."""
    storage = MemoryStorage()
    electors: list[Elector] = []
    phases: list[Phase] = []
    held: dict[Elector, int] = {}
    try:
        for factor in factors:
            # New elections arrive a few hundred at a time, as a service adds
            # them: one burst of thousands of constructors would block the loop
            # longer than a lease, whatever the scheduler does.
            for i in range(len(electors), n1 * factor):
                e = Elector(_config(i, OVER_F, OVER_T, "over"), storage, scheduler=scheduler)
                await e.start()
                electors.append(e)
                if i % 250 == 0:
                    await asyncio.sleep(0)
            if factor == 1:
                fleet = list(electors)
                await _wait(
                    lambda: all(e.is_leader() for e in fleet),  # noqa: B023 (awaited at once)
                    120,
                    f"1x ({n1}) never all led",
                )
                held = {e: e.term for e in fleet}
            shed0 = scheduler.stats.shed if scheduler else 0
            cpu0, wall0 = time.process_time(), time.monotonic()
            # Watch: a 1x leadership counts as kept only if it never lapsed.
            kept = set(held)
            end = time.monotonic() + OVER_WATCH_LEASES * OVER_T
            while time.monotonic() < end:
                kept = {e for e in kept if e.is_leader() and e.term == held[e]}
                await asyncio.sleep(OVER_T / 20)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            phases.append(
                Phase(
                    factor,
                    len(electors),
                    sum(e.is_leader() for e in electors),
                    len(kept) / len(held),
                    (scheduler.stats.shed if scheduler else 0) - shed0,
                    cpu / wall,
                    _load(),
                )
            )
    finally:
        await _stop_all(electors)
    return phases


@LONG
def test_scale_overload(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Past saturation the process keeps the leaderships it holds and sheds the rest."""
    logging.getLogger("fastelect").setLevel(logging.WARNING)
    figures: dict[str, Any] = {}

    def run() -> None:
        # Calibrate 1x: the renew cost of a scheduled fleet at this interval,
        # of a size near 1x's (a small fleet stays in cache and costs less).
        probe = loop.run_until_complete(_fleet(OVER_PROBE_N, OVER_F, OVER_T, Scheduler()))
        # 0.6, not 0.7: the probe's steady window misses what 1x adds (its
        # wheel turns, stragglers); 1x then measures ~70 % (reported as cpu).
        n1 = int(0.6 * OVER_F / (probe.us_per_renew * 1e-6))
        n1 = max(1_000, min(n1, OVER_MAX_N1))
        scheduler = Scheduler()
        ours = loop.run_until_complete(_overload(n1, scheduler))
        scheduler.close()
        base = loop.run_until_complete(_overload(min(n1, OVER_BASE_N1), None, (1, 2)))
        figures.update(n1=n1, probe=probe, ours=ours, base=base, stats=scheduler.stats)

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    ours: list[Phase] = figures["ours"]
    base: list[Phase] = figures["base"]
    n1 = figures["n1"]
    extra: dict[str, Any] = {"n1": n1, "frequent_s": OVER_F, "lease_s": OVER_T}
    lines = []
    for p, b in zip(ours, [*base, None], strict=True):
        extra[f"x{p.load_factor}"] = {
            "electors": p.electors,
            "leaders": p.leaders,
            "held_from_1x": round(p.held_from_1x, 4),
            "shed": p.shed,
            "cpu_share": round(p.cpu_share, 3),
            "load": p.load,
        }
        text = (
            f"{p.load_factor}x ({p.electors}): {p.leaders} led, {p.held_from_1x:.1%} of 1x kept, "
            f"shed {p.shed}, cpu {p.cpu_share:.0%} ({p.load})"
        )
        if b is not None:
            extra[f"baseline_x{b.load_factor}"] = {
                "electors": b.electors,
                "leaders": b.leaders,
                "held_from_1x": round(b.held_from_1x, 4),
                "cpu_share": round(b.cpu_share, 3),
                "load": b.load,
            }
            text += (
                f" [baseline {b.electors}: {b.leaders} led, {b.held_from_1x:.1%} kept, "
                f"cpu {b.cpu_share:.0%}]"
            )
        lines.append(text)
    extra["note"] = f"1x = {n1} elections at F={OVER_F:g}s; " + "; ".join(lines)
    extra["max_renew_lag_ms"] = round(figures["stats"].max_renew_lag_ns / 1e6, 1)
    at2, base2 = ours[1], base[1]
    # Recorded as the share *lost*, so lower is better like every other figure.
    record(
        benchmark,
        Result(
            "1x leaderships lost at 2x load",
            "fraction",
            1 - at2.held_from_1x,
            1 - base2.held_from_1x,
            "unscheduled Electors",
            gated=False,
            limit=1 - MIN_HELD_AT_2X,
            extra=extra,
        ),
    )
    assert ours[1].shed + ours[2].shed > 0, "nothing was shed past saturation"
    if GATE and not benchmark.disabled:
        # Like every gate: fail at half the target (here: half the 1x leaderships lost).
        assert at2.held_from_1x >= MIN_HELD_AT_2X / 2, (
            f"only {at2.held_from_1x:.1%} of the 1x leaderships survived 2x load: a collapse"
        )


if __name__ == "__main__":
    # The child of _fleet_in_child: python test_scale_bench.py N F T SCHEDULED
    _child_main(sys.argv[1:])
