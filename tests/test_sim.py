"""The deterministic simulator: many schedules of the real compiled Campaign.

``test_default_run`` runs FASTELECT_SIM_SCHEDULES (default 600) schedules on
two worker processes from a fixed base seed, so CI is deterministic and the
run stays well under 30 s on a loaded 2-core machine (about 14 s at load 5,
with every process's executor simulated).
The fixed seeds reach every fault and recovery path the coverage check names.
Every second schedule (FASTELECT_SIM_LOCKSTEP: every N-th; 0: none) also runs
the pure-Python twin of the rules in lockstep with the compiled Campaign,
which costs about 2.5 times a plain schedule (tests/test_sim_mutants.py).
Long runs: ``FASTELECT_SIM_SCHEDULES=10000`` here, or ``python -m
fastelect.sim --schedules 1000000``.  Set FASTELECT_SIM_SEED to an integer (or
``random``) to explore other seeds.  A violation fails with its seed, a short
trace and the command that replays it.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastelect import _core
from fastelect.sim import SimFailure, run_schedule, world
from fastelect.sim.checker import Checker, Violation
from fastelect.sim.failover import DEFAULT_TIMING, MODES, failover_params, measure
from fastelect.sim.oracle import RuleOracle
from fastelect.sim.runner import run_many

#: The suite's budget: explicit and small, so a loaded CI box stays far from
#: the pytest timeout; the long runs are the CLI's (and this variable's) job.
SCHEDULES = int(os.environ.get("FASTELECT_SIM_SCHEDULES", "600"))
#: Run the twin in lockstep in the schedules whose seed is a multiple of this.
LOCKSTEP = int(os.environ.get("FASTELECT_SIM_LOCKSTEP", "2"))


def _base_seed() -> int:
    value = os.environ.get("FASTELECT_SIM_SEED", "")
    if not value:
        return 0
    if value == "random":
        return random.SystemRandom().randrange(2**40)
    return int(value)


def _say(capsys: pytest.CaptureFixture[str], line: str) -> None:
    # The seed range and the figures belong in every run's output, not only a failing one's.
    with capsys.disabled():
        print("\n" + line)


def test_the_simulator_runs_the_compiled_campaign() -> None:
    assert world.Campaign is _core.Campaign
    assert Path(_core.__file__).suffix in (".so", ".pyd")


def test_default_run(capsys: pytest.CaptureFixture[str]) -> None:
    base = _base_seed()
    summary = run_many(base, SCHEDULES, jobs=2, lockstep=LOCKSTEP)
    twin = f", the twin in lockstep in every {LOCKSTEP}" if LOCKSTEP else ""
    line = (
        f"simulator: seeds {base}..{base + SCHEDULES - 1}{twin}: {summary.schedules} schedules in "
        f"{summary.seconds:.1f} s ({summary.rate:.0f}/s on 2 processes), "
        f"{summary.acquisitions} leaderships, {summary.work_steps} guarded work steps"
    )
    _say(capsys, line)
    assert not summary.failure, f"{line}\n{summary.failure}"
    assert summary.schedules == SCHEDULES
    # Every fault and every interesting recovery path was reached: a change that
    # quietly stopped injecting one would otherwise make this run vacuous.
    missing = [key for key in world.COVERAGE if not summary.stats.get(key)]
    assert not missing, f"{line}\nnever happened: {missing}; counts {summary.stats}"
    # And by family (the executor's shedding and overload among them): printed, and each reached.
    _say(capsys, "coverage by family:\n" + world.format_families(summary.stats))
    unreached = [f for f, c in world.by_family(summary.stats).items() if not sum(c.values())]
    assert not unreached, f"{line}\nno counter of families {unreached} was reached"


def test_a_seed_replays_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for _ in range(2):
        result = run_schedule(17, trace=True)
        outputs.append((capsys.readouterr().out, result))
    assert outputs[0][0] == outputs[1][0] and len(outputs[0][0].splitlines()) > 100
    assert outputs[0][1] == outputs[1][1]
    run_schedule(18, trace=True)
    assert capsys.readouterr().out != outputs[0][0]


def _fail_at_third_step(monkeypatch: pytest.MonkeyPatch, *, only_once: bool = False) -> None:
    real = Checker.work_step
    fired: list[int] = []

    def work_step(self: Checker, t: int, node: int, term: int) -> None:
        if self.work_steps == 2 and not (only_once and fired):
            fired.append(t)
            raise Violation("leader-work", t, f"planted failure in n{node}")
        real(self, t, node, term)

    monkeypatch.setattr(Checker, "work_step", work_step)


def test_a_failure_prints_seed_trace_and_replay_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_at_third_step(monkeypatch)
    with pytest.raises(SimFailure) as info:
        run_schedule(7)
    text = str(info.value)
    assert text.startswith("seed=7: [leader-work]") and "planted failure" in text
    assert "python -m fastelect.sim --seed 7 --trace" in text
    trace = text.split("what | role term deadline):\n", 1)[1].splitlines()
    assert 10 <= len(trace) <= 40 and trace[-1].split()[3:5] == ["work", "step"], trace[-3:]
    assert "NOT REPRODUCED" not in text
    assert info.value.seed == 7 and info.value.violation.rule == "leader-work"


def test_a_failure_that_does_not_replay_is_reported_as_such(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fail_at_third_step(monkeypatch, only_once=True)
    with pytest.raises(SimFailure, match="NOT REPRODUCED on replay"):
        run_schedule(7)


def test_run_many_stops_at_the_first_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_at_third_step(monkeypatch)
    summary = run_many(40, 5, jobs=1)
    assert summary.failed_seed == 40 and summary.schedules == 0
    assert summary.failure.startswith("seed=40:")


def test_the_liveness_check_fires_when_the_bound_is_too_short() -> None:
    # The leader crashes; its restart at the heal is a new incarnation that must
    # wait a lease, so demanding a leader right after the heal must fail.
    p = failover_params(3, "crash-s3")
    p.faults = [(p.faults[0][0], world.NF_CRASH_LEADER, -1, 10 * DEFAULT_TIMING.lease)]
    p.faults_end = p.faults[0][0] + 1_000_000
    p.live_by = p.faults_end + 50_000_000
    with pytest.raises(SimFailure, match=r"\[liveness\] .* no node leads"):
        run_schedule(3, params=p)


@pytest.mark.parametrize("mode", MODES)
def test_failover_times_lie_within_their_bounds(
    mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [measure(seed, mode) for seed in range(150)]
    runs += [measure(seed, mode, DEFAULT_TIMING) for seed in range(50)]
    outside = [
        f"seed={f.seed}: {f.took / 1e6:.1f} ms not in [{f.lower / 1e6:.1f}, {f.upper / 1e6:.1f}]"
        for f in runs
        if not f.lower <= f.took <= f.upper
    ]
    assert not outside, outside[:5]
    defaults = runs[150:]
    to_lower = min(f.took - f.lower for f in runs) / 1e6
    line = (
        f"failover {mode}: closest to the lower bound {to_lower:.0f}"
        f" ms, to the upper {min(f.upper - f.took for f in runs) / 1e6:.0f} ms; with the "
        f"default timings {min(f.took for f in defaults) / 1e9:.2f}..."
        f"{max(f.took for f in defaults) / 1e9:.2f} s"
    )
    _say(capsys, line)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastelect.sim", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_replays_one_seed_and_runs_many() -> None:
    one = _cli("--seed", "5")
    assert one.returncode == 0, one.stderr
    assert "seed=5: ok" in one.stdout
    traced = _cli("--seed", "5", "--trace")
    assert traced.returncode == 0 and len(traced.stdout.splitlines()) > 100
    many = _cli("--schedules", "40", "--jobs", "2", "--base", "1000")
    assert many.returncode == 0, many.stderr
    assert "ok: 40 schedules" in many.stdout and "seeds 1000 .. 1039" in many.stderr
    bad = _cli("--schedules", "0")
    assert bad.returncode == 2 and "--schedules must be positive" in bad.stderr


def test_the_rule_oracle_sees_every_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {}
    for name in ("observed", "wrote", "begin_write", "leading", "configured"):
        real = getattr(RuleOracle, name)

        def counted(self: RuleOracle, *args: object, _real: Any = real, _name: str = name) -> None:
            calls[_name] = calls.get(_name, 0) + 1
            _real(self, *args)

        monkeypatch.setattr(RuleOracle, name, counted)
    for seed in range(30):
        # Wiring only: a violation (the core's to fix) must not hide the counts.
        with contextlib.suppress(SimFailure):
            run_schedule(seed)
    assert all(calls.get(n, 0) > 0 for n in ("observed", "wrote", "begin_write", "leading"))
    assert calls.get("configured", 0) > 0, calls


class _ForgetsInvalidTerms(_core.Campaign):
    """A mutant core: the in-bounds term of an invalid record is dropped (issue 19, item 2)."""

    def observe_garbage(self, now_ns: int, etag: str, term: int | None = None) -> None:
        super().observe_garbage(now_ns, etag, None)


def test_hostile_records_catch_a_core_that_forgets_their_term(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hostile writes (not JSON, a term out of range, an in-bounds term with
    # an absurd leaseMs) are part of every run; a core that lets terms go back
    # past one of them must fail within a few seeds.
    monkeypatch.setattr(world, "Campaign", _ForgetsInvalidTerms)
    for seed in range(100):
        try:
            run_schedule(seed)
        except SimFailure as exc:
            assert exc.violation.rule in ("rule-5", "terms"), str(exc)
            return
    pytest.fail("100 schedules with hostile records never caught terms going back")


def test_hostile_records_are_written_and_replaced() -> None:
    # Each variant is drawn, and electors replace what it wrote (only after
    # their own T: the oracle checks rule 1 on every takeover of one).
    stats: dict[str, int] = {}
    variants: set[int] = set()
    real = world.World._corrupt

    def corrupt(self: world.World, t: int, variant: int) -> None:
        before = self.keys[0].etag
        real(self, t, variant)
        if self.keys[0].etag != before:
            variants.add(variant)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(world.World, "_corrupt", corrupt)
        for seed in range(60):
            for key, n in run_schedule(seed).stats.items():
                stats[key] = stats.get(key, 0) + n
    assert len(variants) == 3, variants
    assert stats.get("corrupt-replaced", 0) > 0 and stats.get("corrupt-term-kept", 0) > 0, stats


def test_hooks_catch_a_driver_that_campaigns_while_hooks_run() -> None:
    # Half the schedules run hooks, some hung to hook_timeout; a driver that
    # campaigns while the last leadership's hooks still run (0.1's Elector,
    # mutant rule9) starts on_lose of leadership N inside N+1. Seed 607
    # shows it (docs/simulator.md).
    with pytest.raises(SimFailure) as info:
        run_schedule(607, mutant="rule9")
    assert info.value.violation.rule == "hooks", str(info.value)
    assert "on_lose of leadership" in str(info.value) and "after leadership" in str(info.value)
    assert run_schedule(607).stats.get("campaign-held")
