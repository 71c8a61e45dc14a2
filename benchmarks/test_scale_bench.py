"""Many default Electors in one process (issue 17): leaderships kept, memory, CPU, overload.

Every elector here is built the way users build one, ``Elector(config,
storage)`` with no ``scheduler=``: it runs on its event loop's default
:class:`~fastelect.scheduler.Scheduler` and takes a pooled slot.  Each
election is its own lock key on one MemoryStorage with one elector, so every
elector leads and renews once per F: the figures are the driver's cost, not
the store's.

The baselines, measured in the same run (there is no other way to run an
Elector any more, so the baseline is the floor every elector stands on):

* **bare renewer** (CPU): a child process holding the same N records in a
  MemoryStorage and renewing each once per F with nothing but the store's
  conditional write, ``put_if_match(key, body, etag)`` on a pre-built body of
  the same size as an elector's record, due renewals started together every
  5 ms (the scheduler's resolution) and resumed together after their one
  loop turn.  No campaign, no record encoding, no timer wheel: what any
  driver of these renewals pays at least.  It runs *at the same time* as the
  fleet, in a process of its own, and both measure the same windows (a
  handshake on stdin starts them together), so a minute in which the shared
  machine is slower is slower for both.
* **bare records** (memory): that child's RSS growth for the N records and the
  key and etag it keeps for each -- what storing the elections costs before
  any elector exists.

Each fleet and its baseline run in fresh interpreters (uvloop): RSS deltas in
a process that ran other fleets before would count reused heap as free.

* ``test_scale_leaderships_and_memory``: N electors at F = 1 s, T = 3 s (full
  mode 60,000, gate mode 10,000).  Once all lead, each leadership held is
  watched over a few leases (full 4, gate 2): it counts as kept if
  ``is_leader()`` answered True at every sample (every T/20) and at the end,
  with the same term and no loss counted in its slot.  Reports the share lost
  (issue: <= 5 %), against the share of its leases the bare renewer beside it
  ran too late to keep; a share of 0 has no ratio, so gate mode asserts
  instead that at most half were lost ("a collapse").  And the RSS per
  election (issue: <= 8 KB), gated as the ratio bare-record bytes / election
  bytes.
* ``test_scale_renew_cpu``: N electors at F = 5 s, T = 15 s (full 100,000,
  gate 20,000): this process's CPU per renewal over whole intervals (median
  of the windows; issue: <= 6.5 us), gated as the ratio bare-renewer CPU /
  elector CPU.
* ``test_scale_overload``: 1x is the load that uses about half of one core
  by the renew cost of a probe fleet (under the default ``campaign_limit``,
  0.6, so every 1x election can lead); the process then takes 2x and 4x
  that many default electors.  Reports the 1x leaderships that stay held (same
  term, never lost) at 2x and 4x, and the shed counter.  Its baseline is the
  1x phase itself: what the same leaderships lose over the same watch before
  the load grows (the machine's own noise).  Goal: >= 95 % kept at 2x; gate
  mode asserts at least half the goal, and that something was shed.

A process past the scheduler's ``campaign_limit`` starts no new campaigns,
so on a loaded machine not every one of a full-mode fleet may lead: after
three minutes the figures are taken over those that do, and the count is
reported.  Gate mode requires every election to lead.

The machine is shared: CPU-time figures are the ones to trust; the load
average at each measurement is stored with the figures (``uptime``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from benchkit import GATE, Result, record
from fastelect import Elector, ElectorConfig, MemoryStorage
from fastelect.scheduler import SchedulerStats, default_scheduler

#: The issue's targets.
MAX_BYTES_PER_ELECTION = 8 * 1024
MAX_US_PER_RENEW = 6.5
MIN_KEPT = 0.95
MIN_HELD_AT_2X = 0.95

#: Leaderships kept and memory: the issue's 60,000 at F = 1 s, T = 3 s.
HELD_N = 10_000 if GATE else 60_000
HELD_F, HELD_T = 1.0, 3.0
#: Leases the held leaderships are watched over.
HELD_LEASES = 2 if GATE else 4
#: CPU per renewal: the issue's 100,000 at F = 5 s, T = 15 s.
CPU_N = 20_000 if GATE else 100_000
CPU_F, CPU_T = 5.0, 15.0
#: Windows of one interval each (every elector renews once in each).
CPU_WINDOWS = 2 if GATE else 4
#: The bare renewer's tick: the default scheduler's resolution.
TICK = 0.005
#: The overload schedule's interval: short, so a few seconds hold many cycles
#: and a few thousand elections saturate a core.
OVER_F, OVER_T = (0.1, 0.5) if GATE else (0.5, 2.5)
#: Most 1x elections (4x is four times as many electors, and memory).
OVER_MAX_N1 = 12_000 if GATE else 60_000
#: The fleet that calibrates 1x.
OVER_PROBE_N = 4_000 if GATE else 20_000
#: How long each overload phase is watched, in leases.
OVER_WATCH_LEASES = 3 if GATE else 4


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def _key(prefix: str, i: int) -> str:
    return f"{prefix}/{i}.json"


def _config(i: int, f: float, t: float, prefix: str = "scale") -> ElectorConfig:
    return ElectorConfig(
        _key(prefix, i),
        "bench-node",
        frequent_interval=f,
        infrequent_interval=f,
        leader_timeout=t,
        storage_timeout=min(1.0, t / 3),
    )


def _losses(e: Elector) -> int:
    return int(e.slot.status()["counters"]["losses"])


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


# -- the two children: a fleet of default electors, and the bare renewer -----------------


async def _go() -> None:
    """Say "ready" to the parent and wait for its "go" (the loop keeps running)."""
    print(orjson.dumps({"ready": True}).decode(), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    assert line.strip() == "go", f"expected 'go' from the parent, got {line!r}"


async def _windows(count: int, length: float, puts: Callable[[], int]) -> list[float]:
    """This process's CPU us per renewal in ``count`` windows of ``length`` seconds."""
    out = []
    for _ in range(count):
        cpu0, puts0 = time.process_time(), puts()
        await asyncio.sleep(length)
        out.append((time.process_time() - cpu0) / max(puts() - puts0, 1) * 1e6)
    return out


async def _fleet(
    n: int, f: float, t: float, windows: int, watch: float, lead_timeout: float
) -> dict[str, Any]:
    """``n`` default electors: RSS once they lead, CPU per renewal, the leaderships kept.

    A process past ``campaign_limit`` starts no new campaigns (each won one is
    a renewal more per interval): on a loaded machine not all ``n`` may lead.
    After ``lead_timeout`` s the figures are taken over those that do.
    """
    storage = MemoryStorage()
    gc.collect()
    rss0 = _rss()
    started = time.monotonic()
    electors = [Elector(_config(i, f, t), storage) for i in range(n)]
    for e in electors:
        await e.start()
    try:
        # Starting 100,000 at once sheds most first steps (they come back over
        # one to two intervals): on a quiet machine all lead within a minute.
        give_up = time.monotonic() + lead_timeout
        while not all(e.is_leader() for e in electors) and time.monotonic() < give_up:
            await asyncio.sleep(0.1)
        led_after = time.monotonic() - started
        await asyncio.sleep(f)  # settle a cycle
        rss = _rss() - rss0
        held = {e: (e.term, _losses(e)) for e in electors if e.is_leader()}
        unbroken = set(held)

        async def sample() -> None:
            # A leadership that answers False at any sample lapsed, even if the
            # same term carries on after a late renewal.
            while True:
                unbroken.difference_update([e for e in unbroken if not e.is_leader()])
                await asyncio.sleep(t / 20)

        await _go()
        wall0 = time.monotonic()
        sampler = asyncio.create_task(sample()) if watch > 0 else None
        try:
            us = await _windows(windows, f, lambda: storage.stats.puts)
            if time.monotonic() - wall0 < watch:
                await asyncio.sleep(watch - (time.monotonic() - wall0))
        finally:
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
        kept = sum(
            1
            for e, (term, lost) in held.items()
            if e in unbroken and e.is_leader() and e.term == term and _losses(e) == lost
        )
        stats = default_scheduler().stats
        return {
            "n": n,
            "rss_per": rss / n,
            "led_after_s": led_after,
            "us_per_renew": us,
            "held": len(held),
            "kept": kept,
            "shed": stats.shed,
            "dropped": stats.dropped_leaderships,
            "load": _load(),
        }
    finally:
        await _stop_all(electors)


def _bare_body() -> bytes:
    """A record of an elector's shape and size (the one its core writes), built once."""
    return orjson.dumps(
        {
            "leaderID": "bench-node",
            "leaderAddr": "",
            "lastUpdated": "2026-01-01T00:00:00.000000Z",
            "term": 1,
            "leaseMs": 3000,
            "renewal": 1,
            "nonce": "0123456789abcdef",
            "v": 1,
        }
    )


async def _bare(n: int, f: float, t: float, windows: int) -> dict[str, Any]:
    """The same ``n`` records renewed once per ``f`` by nothing but ``put_if_match``."""
    storage = MemoryStorage()
    body = _bare_body()
    gc.collect()
    rss0 = _rss()
    keys = [_key("scale", i) for i in range(n)]
    etags = [await storage.put_if_match(k, body, "") for k in keys]
    rss = _rss() - rss0
    put = storage.put_if_match
    lapsed = [0]

    async def renew() -> None:
        start, done = time.monotonic(), 0
        while True:
            now = time.monotonic()
            due = int((now - start) / f * n)
            # Renewals this late (due + T - F) would have let their lease lapse:
            # the machine starved even the floor.  Counted per tick, not per write.
            in_time = int((now - (t - f) - start) / f * n)
            if in_time > done:
                lapsed[0] += min(in_time, due) - done
            # Start every due write; each yields once (its loop turn), then all
            # are resumed together, as the scheduler resumes its inline steps.
            pending: list[tuple[int, Coroutine[Any, Any, str]]] = []
            while done < due:
                i = done % n
                done += 1
                coro = put(keys[i], body, etags[i])
                try:
                    coro.send(None)
                except StopIteration as stop:
                    etags[i] = stop.value
                else:
                    pending.append((i, coro))
            await asyncio.sleep(0)
            for i, coro in pending:
                try:
                    coro.send(None)
                except StopIteration as stop:
                    etags[i] = stop.value
                else:
                    raise AssertionError("MemoryStorage.put_if_match yielded twice")
            await asyncio.sleep(TICK)

    task = asyncio.create_task(renew())
    try:
        await asyncio.sleep(f)  # settle a cycle
        await _go()
        lapsed[0] = 0
        us = await _windows(windows, f, lambda: storage.stats.puts)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {
        "n": n,
        "rss_per": rss / n,
        "us_per_renew": us,
        "lapsed": lapsed[0],
        "body_bytes": len(body),
        "load": _load(),
    }


def _child_main(argv: list[str]) -> None:
    """``python test_scale_bench.py fleet|bare N F T WINDOWS WATCH LEAD_TIMEOUT``: JSON out."""
    import uvloop

    logging.basicConfig(level=logging.ERROR)
    kind, n, f, t, windows, watch, lead_timeout = argv
    if kind == "fleet":
        out = uvloop.run(
            _fleet(int(n), float(f), float(t), int(windows), float(watch), float(lead_timeout))
        )
    else:
        out = uvloop.run(_bare(int(n), float(f), float(t), int(windows)))
    print(orjson.dumps(out).decode(), flush=True)


def _side_by_side(
    n: int, f: float, t: float, windows: int, watch: float, lead_timeout: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the fleet and the bare renewer as two children that measure the same windows."""
    args = [str(n), str(f), str(t), str(windows), str(watch), str(lead_timeout)]
    kinds = ("fleet", "bare")
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, kind, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind in kinds
    ]
    try:
        for kind, p in zip(kinds, procs, strict=True):
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                _, err = p.communicate(timeout=30)
                raise AssertionError(
                    f"scale child {kind} failed before its windows:\n{err[-4000:]}"
                )
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for kind, p in zip(kinds, procs, strict=True):
            out, err = p.communicate(timeout=900)
            assert p.returncode == 0, f"scale child {kind} failed:\n{err[-4000:]}"
            results.append(orjson.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
    return results[0], results[1]


#: How long a fleet may take until all lead before its figures are taken over
#: those that do (full mode: reported; gate mode: all must lead).
LEAD_TIMEOUT = 60.0 if GATE else 180.0


def _check_led(led: int, n: int, load: str) -> None:
    """Gate mode: every election led.  Full mode: at least some, the rest reported."""
    assert led > 0, f"none of {n} default elections led ({load})"
    if GATE:
        assert led == n, (
            f"only {led} of {n} default elections led within {LEAD_TIMEOUT:g}s ({load})"
        )


#: The full mode starts 100,000 electors: far past the suite's 120 s timeout.
LONG = pytest.mark.timeout(120 if GATE else 1800)


@LONG
def test_scale_leaderships_and_memory(benchmark: Any) -> None:
    """N default elections all led: the leaderships kept over a few leases, bytes each."""
    figures: dict[str, Any] = {}
    watch = HELD_LEASES * HELD_T

    def run() -> None:
        windows = int(watch / HELD_F)
        figures["ours"], figures["bare"] = _side_by_side(
            HELD_N, HELD_F, HELD_T, windows, watch, LEAD_TIMEOUT
        )

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    ours, bare = figures["ours"], figures["bare"]
    _check_led(ours["held"], HELD_N, ours["load"])
    lost = 1 - ours["kept"] / ours["held"]
    us, bare_us = statistics.median(ours["us_per_renew"]), statistics.median(bare["us_per_renew"])
    extra = {
        "elections": HELD_N,
        "frequent_s": HELD_F,
        "lease_s": HELD_T,
        "watched_s": watch,
        "led_after_s": round(ours["led_after_s"], 1),
        "led": ours["held"],
        "kept": ours["kept"],
        "bare_lapsed": bare["lapsed"],
        "shed_at_start": ours["shed"],
        "dropped": ours["dropped"],
        "us_per_renew": [round(x, 2) for x in ours["us_per_renew"]],
        "bare_us_per_renew": [round(x, 2) for x in bare["us_per_renew"]],
        "record_bytes": bare["body_bytes"],
        "load": ours["load"],
        "note": (
            f"{HELD_N} default elections at F={HELD_F:g}s, T={HELD_T:g}s: {ours['held']} led "
            f"after {ours['led_after_s']:.1f}s, {ours['kept']} of them kept over {watch:g}s, "
            f"{ours['rss_per'] / 1024:.2f} KB RSS each "
            f"(bare record {bare['rss_per'] / 1024:.2f} KB), "
            f"{us:.2f} us CPU per renewal with the watch's sampling (bare {bare_us:.2f} us) "
            f"({ours['load']})"
        ),
    }
    record(
        benchmark,
        Result(
            "default elections, bytes each",
            "KB RSS",
            ours["rss_per"] / 1024,
            bare["rss_per"] / 1024,
            "the bare records in MemoryStorage",
            # The ratio at which an election costs the limit.
            target=round(bare["rss_per"] / MAX_BYTES_PER_ELECTION, 3),
            limit=MAX_BYTES_PER_ELECTION / 1024,
            extra=extra,
            paired=False,
        ),
    )
    # Recorded as the share *lost*, so lower is better like every other figure.
    # Its baseline: the share of its leases the bare renewer, beside it, ran
    # too late to keep (usually 0 as well: a share of 0 has no ratio to gate).
    record(
        benchmark,
        Result(
            f"leaderships lost over {HELD_LEASES} leases",
            "fraction",
            lost,
            bare["lapsed"] / bare["n"],
            "leases the bare renewer ran too late for",
            gated=False,
            limit=1 - MIN_KEPT,
            paired=False,
        ),
    )
    if GATE and not benchmark.disabled:
        # Like the overload gate: fail at half the leaderships lost, a collapse.
        assert lost <= 1 - MIN_KEPT / 2, (
            f"{lost:.1%} of {ours['held']} leaderships lapsed over {watch:g}s at "
            f"F={HELD_F:g}s ({ours['load']}); rerun: FASTELECT_BENCH_GATE=1 pytest "
            "benchmarks/test_scale_bench.py -k leaderships"
        )


@LONG
def test_scale_renew_cpu(benchmark: Any) -> None:
    """N default elections at F = 5 s: this process's CPU per renewal, against the bare renewer."""
    figures: dict[str, Any] = {}

    def run() -> None:
        figures["ours"], figures["bare"] = _side_by_side(
            CPU_N, CPU_F, CPU_T, CPU_WINDOWS, 0.0, LEAD_TIMEOUT
        )

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    ours, bare = figures["ours"], figures["bare"]
    _check_led(ours["held"], CPU_N, ours["load"])
    us, bare_us = statistics.median(ours["us_per_renew"]), statistics.median(bare["us_per_renew"])
    record(
        benchmark,
        Result(
            "default elections, CPU per renewal",
            "us CPU/renew",
            us,
            bare_us,
            "bare put_if_match renewer, same keys and schedule",
            # The ratio at which a renewal costs the limit.
            target=round(bare_us / MAX_US_PER_RENEW, 3),
            limit=MAX_US_PER_RENEW,
            extra={
                "elections": CPU_N,
                "frequent_s": CPU_F,
                "lease_s": CPU_T,
                "led_after_s": round(ours["led_after_s"], 1),
                "led": ours["held"],
                "us_per_renew": [round(x, 2) for x in ours["us_per_renew"]],
                "bare_us_per_renew": [round(x, 2) for x in bare["us_per_renew"]],
                "rss_kb_per_election": round(ours["rss_per"] / 1024, 2),
                "load": ours["load"],
                "note": (
                    f"{CPU_N} default elections at F={CPU_F:g}s: {ours['held']} led after "
                    f"{ours['led_after_s']:.1f}s, {us:.2f} us CPU per renewal over "
                    f"{CPU_WINDOWS} intervals (bare {bare_us:.2f} us), "
                    f"{ours['rss_per'] / 1024:.2f} KB RSS each ({ours['load']})"
                ),
            },
            samples=CPU_WINDOWS,
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


async def _probe(n: int, f: float, t: float) -> float:
    """CPU us per renewal of ``n`` default electors at ``f``, all leading, in this process."""
    storage = MemoryStorage()
    electors = [Elector(_config(i, f, t, "probe"), storage) for i in range(n)]
    for e in electors:
        await e.start()
    try:
        await _wait(lambda: all(e.is_leader() for e in electors), 60, f"probe: not all {n} lead")
        await asyncio.sleep(f)
        return statistics.median(await _windows(3, max(f, 0.5), lambda: storage.stats.puts))
    finally:
        await _stop_all(electors)


async def _overload(
    n1: int, factors: tuple[int, ...] = (1, 2, 4)
) -> tuple[list[Phase], SchedulerStats]:
    """1x, then 2x, then 4x default electors on one process; what the 1x leaders keep."""
    storage = MemoryStorage()
    scheduler = default_scheduler()
    electors: list[Elector] = []
    phases: list[Phase] = []
    held: dict[Elector, int] = {}
    try:
        for factor in factors:
            # New elections arrive a few hundred at a time, as a service adds
            # them: one burst of thousands of constructors would block the loop
            # longer than a lease, whatever the scheduler does.
            for i in range(len(electors), n1 * factor):
                e = Elector(_config(i, OVER_F, OVER_T, "over"), storage)
                await e.start()
                electors.append(e)
                if i % 250 == 0:
                    await asyncio.sleep(0)
            if factor == 1:
                fleet = list(electors)
                await _wait(
                    lambda: all(e.is_leader() for e in fleet),  # noqa: B023 (awaited at once)
                    60 if GATE else 180,
                    f"1x ({n1}) never all led",
                )
                held = {e: e.term for e in fleet}
            shed0 = scheduler.stats.shed
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
                    scheduler.stats.shed - shed0,
                    cpu / wall,
                    _load(),
                )
            )
    finally:
        await _stop_all(electors)
    return phases, dataclasses.replace(scheduler.stats)


@LONG
def test_scale_overload(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """Past saturation the process keeps the leaderships it holds and sheds the rest."""
    logging.getLogger("fastelect").setLevel(logging.ERROR)
    figures: dict[str, Any] = {}

    def run() -> None:
        # Calibrate 1x: the renew cost of a default fleet at this interval.
        probe_us = loop.run_until_complete(_probe(OVER_PROBE_N, OVER_F, OVER_T))
        # Half a core by the probe (1x then measures a little more: the probe's
        # window misses the watch's own checks): under the scheduler's default
        # campaign_limit (0.6), so every 1x election may campaign and lead; 2x
        # is then about a whole core.
        n1 = int(0.45 * OVER_F / (probe_us * 1e-6))
        n1 = max(1_000, min(n1, OVER_MAX_N1))
        phases, stats = loop.run_until_complete(_overload(n1))
        figures.update(n1=n1, probe_us=probe_us, ours=phases, stats=stats)

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    ours: list[Phase] = figures["ours"]
    n1 = figures["n1"]
    extra: dict[str, Any] = {
        "n1": n1,
        "probe_us_per_renew": round(figures["probe_us"], 2),
        "frequent_s": OVER_F,
        "lease_s": OVER_T,
    }
    lines = []
    for p in ours:
        extra[f"x{p.load_factor}"] = {
            "electors": p.electors,
            "leaders": p.leaders,
            "held_from_1x": round(p.held_from_1x, 4),
            "shed": p.shed,
            "cpu_share": round(p.cpu_share, 3),
            "load": p.load,
        }
        lines.append(
            f"{p.load_factor}x ({p.electors}): {p.leaders} led, {p.held_from_1x:.1%} of 1x kept, "
            f"shed {p.shed}, cpu {p.cpu_share:.0%} ({p.load})"
        )
    extra["note"] = f"1x = {n1} default elections at F={OVER_F:g}s; " + "; ".join(lines)
    extra["max_renew_lag_ms"] = round(figures["stats"].max_renew_lag_ns / 1e6, 1)
    extra["dropped_leaderships"] = figures["stats"].dropped_leaderships
    at1, at2 = ours[0], ours[1]
    # Recorded as the share *lost*, so lower is better like every other figure.
    record(
        benchmark,
        Result(
            "1x leaderships lost at 2x load",
            "fraction",
            1 - at2.held_from_1x,
            1 - at1.held_from_1x,
            "the same leaderships over the 1x watch",
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
    # A child of _side_by_side (see _child_main for its arguments).
    _child_main(sys.argv[1:])
