"""Fault injection against real S3 servers and real processes (issue 10 §2).

Three elector subprocesses (``chaos_node.py``) campaign for one lock through
a fault proxy (``faultproxy.py``, one port per node) while the test injects,
phase by phase: latency up to 2T, replies held past the lease, requests
delivered after the client gave up, resets before and after the server saw
a request, a blackholed node, a partitioned node, SIGSTOP of the leader for
longer than its lease, CPU starvation (nice 19 and one CPU beside busy
loops) and SIGKILL mid-write followed by a restart under the same id.

Every node logs, on CLOCK_BOOTTIME, its leadership runs as sampled from a
separate thread and its fenced leader-work steps. :func:`check_history`, a
pure function over the merged logs, then asserts that no two incarnations'
leaderships overlap, that no committed work steps of two incarnations
overlap, that terms never decrease (and no term is held twice), and that a
leader existed for most of the run. The checker has its own tests on
hand-made logs, and a deliberately broken elector run through the same
harness must fail it.

Stores: every test takes ``store``, parametrized by name. On moto the proxy
serialises PUTs per object: moto evaluates a PUT's ``If-Match`` /
``If-None-Match`` and then stores the object without a lock, so two
concurrent conditional PUTs can both succeed, which no real S3 allows; the
elector's safety rests on the store arbitrating them. Stores that arbitrate
themselves (SeaweedFS) run without it.

Budget: one pass through every fault kind (about 30 s per store) by
default; ``FASTELECT_FAULTS_S=600`` keeps injecting for that many seconds.
``FASTELECT_FAULTS_SEED`` fixes the fault schedule (kinds, order, delays);
process timing still varies from run to run, so a seed narrows a failure
down but does not replay it exactly.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

from faultproxy import CLEAR, FaultProxy, Faults
from helpers import boto3_client, wait_for

NODE = Path(__file__).with_name("chaos_node.py")
LEASE = 0.5  # T, seconds; F = T/4 and I = T/2 in chaos_node.py
NODES = ("n1", "n2", "n3")
MIN_COVERAGE = 0.5  # "a leader exists for most of the run"
_MS = 1_000_000


def boottime_ns() -> int:
    """The clock every node stamps its log with (system-wide)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


# -- the checker: a pure function over merged logs ------------------------------------


@dataclass(frozen=True)
class Run:
    """One leadership as one incarnation's sampler saw it: [start, end] in BOOTTIME ns."""

    node: str
    start: int
    end: int
    term: int


@dataclass(frozen=True)
class Step:
    """One committed leader-work step (fenced by is_leader() on both sides)."""

    node: str
    start: int
    end: int
    term: int


@dataclass(frozen=True)
class NodeLog:
    """What one incarnation logged (``node`` is ``id#incarnation``)."""

    node: str
    runs: tuple[Run, ...] = ()
    steps: tuple[Step, ...] = ()
    aborted: int = 0


@dataclass(frozen=True)
class Verdict:
    """The checker's answer: violations (empty = safe) and what the run looked like."""

    violations: tuple[str, ...]
    coverage: float
    leaderships: int
    terms: int
    steps: int

    @property
    def ok(self) -> bool:
        return not self.violations


def parse_log(node: str, text: str) -> NodeLog:
    """Read a ``chaos_node.py`` log; a run still open at the end ends at its last beat."""
    runs: list[Run] = []
    steps: list[Step] = []
    aborted = 0
    open_run: tuple[int, int] | None = None  # (start, term)
    last_true = 0
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut short by SIGKILL cannot be, but a torn read can
        kind = event["ev"]
        if kind == "lead":
            open_run = (event["t"], event["term"])
            last_true = event["t"]
        elif kind == "beat":
            last_true = max(last_true, event["t"])
        elif kind == "unlead" and open_run is not None:
            start, term = open_run
            # A run of one sample ends (stamp before) earlier than it starts
            # (stamp after): keep it as an instant.
            runs.append(Run(node, start, max(start, event["t"]), term))
            open_run = None
        elif kind == "step" and event["ok"]:
            steps.append(Step(node, event["s"], event["e"], event["term"]))
        elif kind == "abort":
            aborted += 1
    if open_run is not None:
        start, term = open_run
        runs.append(Run(node, start, max(start, last_true), term))
    return NodeLog(node, tuple(runs), tuple(steps), aborted)


def _overlaps(items: Iterable[Run | Step], what: str, origin: int) -> list[str]:
    """Pairs of items from different incarnations whose open intervals intersect."""
    found: list[str] = []
    latest: dict[str, Run | Step] = {}  # per incarnation: the item reaching furthest
    for item in sorted(items, key=lambda i: (i.start, i.end)):
        for node, other in latest.items():
            if node != item.node and other.start < item.end and item.start < other.end:
                overlap = (min(other.end, item.end) - item.start) / _MS
                found.append(
                    f"{what} overlap by {overlap:.1f} ms: {_describe(other, origin)} and "
                    f"{_describe(item, origin)}"
                )
        previous = latest.get(item.node)
        if previous is None or item.end > previous.end:
            latest[item.node] = item
    return found


def _describe(item: Run | Step, origin: int) -> str:
    return (
        f"{item.node} term {item.term} [{(item.start - origin) / _MS:+.1f}, "
        f"{(item.end - origin) / _MS:+.1f}] ms"
    )


def _term_order(items: Iterable[Run | Step], what: str, origin: int) -> list[str]:
    """Terms must not decrease in time order, and one term belongs to one incarnation."""
    found: list[str] = []
    highest: Run | Step | None = None
    for item in sorted(items, key=lambda i: (i.start, i.end)):
        if highest is not None:
            if item.term < highest.term:
                found.append(
                    f"{what} term decreased: {_describe(item, origin)} after "
                    f"{_describe(highest, origin)}"
                )
                continue
            if item.term == highest.term and item.node != highest.node:
                found.append(
                    f"{what} term {item.term} held by two incarnations: "
                    f"{_describe(highest, origin)} and {_describe(item, origin)}"
                )
        if highest is None or item.term >= highest.term:
            highest = item
    return found


def _coverage(runs: Iterable[Run], window: tuple[int, int]) -> float:
    lo, hi = window
    if hi <= lo:
        return 0.0
    covered = 0
    reach = lo
    for run in sorted(runs, key=lambda r: r.start):
        start, end = max(run.start, reach), min(run.end, hi)
        if end > start:
            covered += end - start
            reach = end
    return covered / (hi - lo)


def check_history(
    logs: Sequence[NodeLog], window: tuple[int, int], *, min_coverage: float = MIN_COVERAGE
) -> Verdict:
    """Check merged node logs for the election's safety and liveness properties.

    ``window`` is the (start, end) in BOOTTIME ns over which a leader must
    have existed at least ``min_coverage`` of the time. Safety is checked
    over everything logged.
    """
    runs = [run for log in logs for run in log.runs]
    steps = [step for log in logs for step in log.steps]
    origin = window[0]
    violations = [
        *_overlaps(runs, "leadership", origin),
        *_overlaps(steps, "work step", origin),
        *_term_order(runs, "leadership", origin),
        *_term_order(steps, "work step", origin),
    ]
    coverage = _coverage(runs, window)
    if coverage < min_coverage:
        violations.append(
            f"a leader existed for {coverage:.0%} of the run, expected at least {min_coverage:.0%}"
        )
    return Verdict(
        violations=tuple(violations),
        coverage=coverage,
        leaderships=len(runs),
        terms=len({run.term for run in runs}),
        steps=len(steps),
    )


# -- the checker's own tests ----------------------------------------------------------------


def _log(
    node: str, *runs: tuple[int, int, int], steps: Iterable[tuple[int, int, int]] = ()
) -> NodeLog:
    return NodeLog(
        node,
        tuple(Run(node, s * _MS, e * _MS, t) for s, e, t in runs),
        tuple(Step(node, s * _MS, e * _MS, t) for s, e, t in steps),
    )


WINDOW = (0, 100 * _MS)


def test_checker_accepts_leaderships_that_touch() -> None:
    verdict = check_history(
        [
            _log("a#0", (0, 50, 1), steps=[(10, 50, 1)]),
            _log("b#0", (50, 100, 2), steps=[(50, 60, 2)]),
        ],
        WINDOW,
    )
    assert verdict.ok, verdict.violations
    assert verdict.coverage == 1.0 and verdict.leaderships == 2 and verdict.terms == 2


def test_checker_rejects_overlapping_leaderships() -> None:
    verdict = check_history([_log("a#0", (0, 51, 1)), _log("b#0", (50, 100, 2))], WINDOW)
    assert len(verdict.violations) == 1
    assert verdict.violations[0].startswith("leadership overlap by 1.0 ms: a#0 term 1")


def test_checker_rejects_an_instant_inside_another_leadership() -> None:
    verdict = check_history([_log("a#0", (0, 100, 1)), _log("b#0", (40, 40, 2))], WINDOW)
    assert any("leadership overlap" in v for v in verdict.violations), verdict.violations


def test_checker_rejects_a_restarted_node_overlapping_its_old_incarnation() -> None:
    verdict = check_history([_log("a#0", (0, 60, 1)), _log("a#1", (50, 100, 2))], WINDOW)
    assert any("leadership overlap" in v for v in verdict.violations), verdict.violations


def test_checker_rejects_overlapping_work_steps() -> None:
    verdict = check_history(
        [
            _log("a#0", (0, 50, 1), steps=[(40, 55, 1)]),
            _log("b#0", (50, 100, 2), steps=[(54, 60, 2)]),
        ],
        WINDOW,
    )
    assert [v.split(":")[0] for v in verdict.violations] == ["work step overlap by 1.0 ms"]


def test_checker_rejects_a_decreasing_term() -> None:
    verdict = check_history([_log("a#0", (0, 50, 3)), _log("b#0", (50, 100, 2))], WINDOW)
    assert [v.split(":")[0] for v in verdict.violations] == ["leadership term decreased"]


def test_checker_rejects_one_term_held_by_two_incarnations() -> None:
    verdict = check_history([_log("a#0", (0, 50, 4)), _log("a#1", (60, 100, 4))], WINDOW)
    assert [v.split(":")[0] for v in verdict.violations] == [
        "leadership term 4 held by two incarnations"
    ]


def test_checker_accepts_one_leadership_sampled_as_two_runs() -> None:
    verdict = check_history([_log("a#0", (0, 40, 4), (45, 100, 4))], WINDOW)
    assert verdict.ok, verdict.violations


def test_checker_requires_a_leader_for_most_of_the_run() -> None:
    verdict = check_history([_log("a#0", (0, 30, 1)), _log("b#0", (60, 80, 2))], WINDOW)
    assert verdict.coverage == pytest.approx(0.5)
    assert check_history([_log("a#0", (0, 30, 1))], WINDOW).violations == (
        "a leader existed for 30% of the run, expected at least 50%",
    )


def test_parse_log_closes_runs_and_keeps_only_committed_steps() -> None:
    lines = [
        {"ev": "up", "t": 1, "pid": 7},
        {"ev": "lead", "t": 10, "term": 3},
        {"ev": "step", "s": 11, "e": 15, "term": 3, "ok": True},
        {"ev": "step", "s": 16, "e": 19, "term": 3, "ok": False},
        {"ev": "beat", "t": 20},
        {"ev": "unlead", "t": 25},
        {"ev": "lead", "t": 40, "term": 5},
        {"ev": "unlead", "t": 39},  # one sample: ends before it starts
        {"ev": "lead", "t": 50, "term": 6},
        {"ev": "abort", "s": 51, "t": 52, "term": 6},
        {"ev": "beat", "t": 70},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"ev": "be'
    log = parse_log("a#0", text)
    assert log.runs == (Run("a#0", 10, 25, 3), Run("a#0", 40, 40, 5), Run("a#0", 50, 70, 6))
    assert log.steps == (Step("a#0", 11, 15, 3),)
    assert log.aborted == 1


# -- the harness: real processes behind the fault proxy -------------------------------------


@dataclass(frozen=True)
class Store:
    """An S3 endpoint and bucket the chaos runs use."""

    name: str
    endpoint: str
    bucket: str
    #: Serialise PUTs per object in the proxy (the store does not arbitrate them itself).
    serialise_puts: bool


# name -> (endpoint fixture, bucket fixture, serialise PUTs in the proxy)
_STORES = {
    "moto": ("moto_server", "s3_bucket", True),
    "seaweedfs": ("seaweedfs_server", "seaweedfs_bucket", False),
}


@pytest.fixture(
    params=[
        pytest.param("moto", marks=pytest.mark.s3),
        pytest.param("seaweedfs", marks=pytest.mark.seaweedfs),
    ]
)
def store(request: pytest.FixtureRequest) -> Store:
    """The store a chaos run uses, by name (fixtures are looked up only when used)."""
    endpoint_fixture, bucket_fixture, serialise = _STORES[request.param]
    return Store(
        request.param,
        request.getfixturevalue(endpoint_fixture),
        request.getfixturevalue(bucket_fixture),
        serialise,
    )


@dataclass
class Incarnation:
    """One process of one node id."""

    name: str
    number: int
    log_path: Path
    err_path: Path
    proc: subprocess.Popen[bytes]
    #: Killed on purpose: its exit is not a failure.
    killed: bool = False
    up: bool = False
    leading: bool = False
    _offset: int = 0

    @property
    def key(self) -> str:
        return f"{self.name}#{self.number}"

    def refresh(self) -> None:
        """Read the log lines written since the last call."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            kind = json.loads(line)["ev"]
            if kind == "up":
                self.up = True
            elif kind == "lead":
                self.leading = True
            elif kind in ("unlead", "down"):
                self.leading = False

    def stderr_tail(self, size: int = 3000) -> str:
        try:
            return self.err_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return "(no stderr)"


BUSY_LOOP = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
    "while True:\n"
    "    pass\n"
)


class Cluster:
    """Node subprocesses behind a fault proxy, with the faults the scenarios need.

    A context manager: on exit every process it started (nodes of every
    incarnation, busy loops) is killed and reaped, whatever happened.
    """

    def __init__(
        self, tmp: Path, store: Store, proxy: FaultProxy, *, names: Sequence[str], broken: bool
    ) -> None:
        self.tmp = tmp
        self.store = store
        self.proxy = proxy
        self.names = tuple(names)
        self.broken = broken
        self.prefix = f"chaos-{uuid.uuid4().hex}"
        self.current: dict[str, Incarnation] = {}
        self.incarnations: list[Incarnation] = []
        self._busy: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, name: str) -> Incarnation:
        """Start a new incarnation of node ``name``."""
        number = sum(1 for i in self.incarnations if i.name == name)
        log_path = self.tmp / f"{name}.{number}.jsonl"
        err_path = self.tmp / f"{name}.{number}.stderr"
        with err_path.open("wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(NODE),
                    *("--id", name, "--endpoint", self.proxy.url(name)),
                    *("--bucket", self.store.bucket, "--prefix", self.prefix),
                    *("--log", str(log_path), "--lease", str(LEASE)),
                    *("--parent", str(os.getpid())),
                    *(["--broken"] if self.broken else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        incarnation = Incarnation(name, number, log_path, err_path, proc)
        self.incarnations.append(incarnation)
        self.current[name] = incarnation
        return incarnation

    def wait_up(self, timeout: float = 30.0) -> None:
        """Wait until every current incarnation has started campaigning."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            waiting = [i.key for i in self.current.values() if not i.up]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes {waiting} did not start within {timeout} s")
            time.sleep(0.02)
            for incarnation in self.current.values():
                incarnation.refresh()

    def check_alive(self) -> None:
        """Fail if a node exited that the test did not kill."""
        for incarnation in self.incarnations:
            if not incarnation.killed and incarnation.proc.poll() is not None:
                raise AssertionError(
                    f"node {incarnation.key} exited with code {incarnation.proc.returncode}:\n"
                    f"{incarnation.stderr_tail()}"
                )

    def leader(self) -> str | None:
        """The node whose current incarnation logs an open leadership, if any."""
        self.check_alive()
        leading = []
        for name, incarnation in self.current.items():
            incarnation.refresh()
            if incarnation.leading and not incarnation.killed:
                leading.append(name)
        return leading[-1] if leading else None

    def wait_leader(self, timeout: float, *, not_: str | None = None) -> str:
        """Wait for a leader (other than ``not_``); fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            name = self.leader()
            if name is not None and name != not_:
                return name
            if time.monotonic() > deadline:
                others = f" other than {not_}" if not_ else ""
                raise AssertionError(f"no leader{others} within {timeout} s")
            time.sleep(0.01)

    def pid(self, name: str) -> int:
        return self.current[name].proc.pid

    def kill(self, name: str) -> None:
        """SIGKILL the node's current incarnation (it may already be dead)."""
        incarnation = self.current[name]
        incarnation.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(incarnation.proc.pid, signal.SIGKILL)

    def starve(self, name: str, seconds: float) -> None:
        """Nice 19 and one CPU shared with two busy loops, for ``seconds``; then restored."""
        cpu = min(os.sched_getaffinity(0))
        pid = self.pid(name)
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        saved = {
            tid: (os.sched_getaffinity(tid), os.getpriority(os.PRIO_PROCESS, tid))
            for tid in threads
        }
        try:
            # Affinity and nice are per thread on Linux: set them on every thread.
            for tid in threads:
                os.sched_setaffinity(tid, {cpu})
                os.setpriority(os.PRIO_PROCESS, tid, 19)
            for _ in range(2):
                self._busy.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(cpu)]))
            time.sleep(seconds)
        finally:
            self._stop_busy()
            for tid, (cpus, nice) in saved.items():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.sched_setaffinity(tid, cpus)
                    os.setpriority(os.PRIO_PROCESS, tid, nice)

    def _stop_busy(self) -> None:
        for proc in self._busy:
            proc.kill()
            proc.wait()
        self._busy.clear()

    def logs(self) -> list[NodeLog]:
        """Every incarnation's log, parsed."""
        return [
            parse_log(i.key, i.log_path.read_text() if i.log_path.exists() else "")
            for i in self.incarnations
        ]

    def close(self) -> None:
        """Kill and reap every process this cluster started."""
        self._stop_busy()
        for incarnation in self.incarnations:
            proc = incarnation.proc
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a stopped process dies on SIGKILL too
                    proc.kill()
            proc.wait(10)


@dataclass
class Phase:
    """One injected fault, for the failure report."""

    kind: str
    target: str
    start: int
    end: int = 0
    note: str = ""


@dataclass
class Chaos:
    """Runs fault phases against a cluster; ``seed`` decides kinds, order and delays."""

    cluster: Cluster
    seed: int
    rng: random.Random = field(init=False)
    phases: list[Phase] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    KINDS = (
        "latency",
        "hold_reply",
        "late_request",
        "reset_before",
        "reset_after",
        "blackhole",
        "partition",
        "sigstop",
        "starve",
        "kill_mid_write",
    )

    def schedule(self, seconds: float) -> Iterator[str]:
        """Every kind once (shuffled), then more shuffled passes until ``seconds`` passed."""
        started = time.monotonic()
        for pass_number in itertools.count():
            if pass_number and time.monotonic() - started >= seconds:
                return
            kinds = list(self.KINDS)
            self.rng.shuffle(kinds)
            for kind in kinds:
                if pass_number and time.monotonic() - started >= seconds:
                    return
                yield kind

    def run(self, seconds: float) -> None:
        for kind in self.schedule(seconds):
            self.settle()
            target = self.cluster.wait_leader(12 * LEASE)
            phase = Phase(kind, target, boottime_ns())
            self.phases.append(phase)
            try:
                getattr(self, f"_{kind}")(target, phase)
            finally:
                self.cluster.proxy.clear()
                phase.end = boottime_ns()
        self.settle()

    def settle(self) -> None:
        """No faults, every node up, then a lease of calm."""
        self.cluster.proxy.clear()
        self.cluster.wait_up()
        time.sleep(LEASE)

    def trace(self, origin: int) -> str:
        return "\n".join(
            f"  {(p.start - origin) / _MS:+9.1f} .. {(p.end - origin) / _MS:+9.1f} ms  "
            f"{p.kind:<14} {p.target} {p.note}"
            for p in self.phases
        )

    def _hold(self, target: str, faults: Faults, seconds: float) -> None:
        self.cluster.proxy.set(target, faults)
        time.sleep(seconds)

    def _latency(self, target: str, phase: Phase) -> None:
        phase.target = "all"
        for name in self.cluster.names:
            self.cluster.proxy.set(name, Faults(latency=2 * LEASE))
        time.sleep(4 * LEASE)

    def _hold_reply(self, target: str, phase: Phase) -> None:
        self._hold(target, Faults(hold_reply=1.5 * LEASE), 3 * LEASE)

    def _late_request(self, target: str, phase: Phase) -> None:
        self._hold(target, Faults(late_request=1.5 * LEASE), 3 * LEASE)

    def _reset_before(self, target: str, phase: Phase) -> None:
        self._hold(target, Faults(reset_before=0.5), 3 * LEASE)

    def _reset_after(self, target: str, phase: Phase) -> None:
        self._hold(target, Faults(reset_after=0.5), 3 * LEASE)

    def _blackhole(self, target: str, phase: Phase) -> None:
        self._hold(target, Faults(blackhole=True), 3 * LEASE)

    def _partition(self, target: str, phase: Phase) -> None:
        self._hold(target, Faults(partition=True), 3 * LEASE)

    def _sigstop(self, target: str, phase: Phase) -> None:
        pid = self.cluster.pid(target)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(2 * LEASE)
        finally:
            os.kill(pid, signal.SIGCONT)

    def _starve(self, target: str, phase: Phase) -> None:
        self.cluster.starve(target, 3 * LEASE)

    def _kill_mid_write(self, target: str, phase: Phase) -> None:
        # The proxy kills the node when its next PUT has arrived, then forwards
        # that PUT late, possibly after the new incarnation started.
        delay = self.rng.uniform(0.0, 4 * LEASE)
        phase.note = f"PUT delivered {delay * 1000:.0f} ms after the kill"
        killed = threading.Event()
        cluster = self.cluster

        def kill() -> None:
            cluster.kill(target)
            cluster.proxy.set(target, CLEAR)  # the new incarnation's requests pass
            killed.set()

        cluster.proxy.set(target, Faults(on_put=kill, late_request=delay))
        if not killed.wait(4 * LEASE):
            raise AssertionError(f"leader {target} sent no PUT within {4 * LEASE} s")
        cluster.current[target].proc.wait(5)
        cluster.start(target)


def _seed() -> int:
    value = os.environ.get("FASTELECT_FAULTS_SEED")
    return int(value) if value else random.SystemRandom().randrange(2**32)


def _report(verdict: Verdict, chaos: Chaos | None, cluster: Cluster, origin: int, seed: int) -> str:
    lines = [
        f"seed {seed} (rerun: FASTELECT_FAULTS_SEED={seed} python -m pytest {__file__})",
        f"logs in {cluster.tmp}",
        f"{len(verdict.violations)} violation(s):",
        *(f"  {v}" for v in verdict.violations[:20]),
        f"coverage {verdict.coverage:.1%}, {verdict.leaderships} leaderships, "
        f"{verdict.terms} terms, {verdict.steps} committed steps",
    ]
    if chaos is not None:
        lines += ["phases (ms from the start of the run):", chaos.trace(origin)]
    lines.append(f"proxy: {cluster.proxy.stats()}")
    return "\n".join(lines)


@contextlib.contextmanager
def running_cluster(
    tmp_path: Path, store: Store, *, seed: int, broken: bool = False
) -> Iterator[Cluster]:
    """A proxy and one incarnation per node, all started and campaigning."""
    with (
        FaultProxy(store.endpoint, NODES, seed=seed, serialise_puts=store.serialise_puts) as proxy,
        Cluster(tmp_path, store, proxy, names=NODES, broken=broken) as cluster,
    ):
        for name in NODES:
            cluster.start(name)
        cluster.wait_up()
        yield cluster


def _faults_seconds() -> float:
    value = os.environ.get("FASTELECT_FAULTS_S", "0")
    try:
        return float(value)
    except ValueError:
        raise pytest.UsageError(f"FASTELECT_FAULTS_S must be seconds, not {value!r}") from None


@pytest.mark.slow
@pytest.mark.timeout(0)
def test_no_two_leaders_under_faults(tmp_path: Path, store: Store) -> None:
    """Every fault kind against three real nodes: safe throughout, a leader most of the time."""
    seed = _seed()
    seconds = _faults_seconds()
    failure: AssertionError | None = None
    with running_cluster(tmp_path, store, seed=seed) as cluster:
        cluster.wait_leader(20 * LEASE)
        chaos = Chaos(cluster, seed)
        start = boottime_ns()
        try:
            chaos.run(seconds)
            cluster.check_alive()
        except AssertionError as exc:
            failure = exc  # reported below with the seed, the phases and the history
        end = boottime_ns()
    # Checked once every process is dead: the logs are complete.
    verdict = check_history(cluster.logs(), (start, end))
    report = _report(verdict, chaos, cluster, start, seed)
    print(report)
    if failure is not None:
        raise AssertionError(f"{failure}\n{report}") from failure
    assert verdict.ok, report
    stats = cluster.proxy.stats()
    # The faults really happened (a no-op injector would pass the checker too).
    totals: dict[str, int] = {}
    for counts in stats.values():
        for kind, count in counts.items():
            totals[kind] = totals.get(kind, 0) + count
    for kind in (
        "delayed",
        "held_reply",
        "late_request",
        "reset_before",
        "reset_after",
        "blackholed",
        "on_put",
    ):
        assert totals.get(kind, 0) > 0, f"no {kind} fault was injected\n{report}"
    assert totals.get("partition_cut", 0) + totals.get("partition_refused", 0) > 0, report
    assert sum(1 for i in cluster.incarnations if i.killed) >= 1, report
    # Most kinds end a leadership (the resets and latency may not): takeovers happened.
    assert verdict.terms >= 6, f"too few leadership changes\n{report}"


@pytest.mark.slow
@pytest.mark.parametrize("broken", [True, False], ids=["broken", "real"])
def test_checker_catches_an_elector_that_answers_true_after_its_lease(
    tmp_path: Path, moto_server: str, s3_bucket: str, broken: bool
) -> None:
    """A wrapper answering True for 2T past its last real True fails; the real elector passes.

    Same harness, same scenario: partition the leader until another node
    takes over, then let the run settle.
    """
    seed = _seed()
    store = Store("moto", moto_server, s3_bucket, serialise_puts=True)
    with running_cluster(tmp_path, store, seed=seed, broken=broken) as cluster:
        old = cluster.wait_leader(20 * LEASE)
        start = boottime_ns()
        cluster.proxy.set(old, Faults(partition=True))
        cluster.wait_leader(12 * LEASE, not_=old)
        time.sleep(3 * LEASE)  # past the broken wrapper's 2T of false answers
        cluster.proxy.clear()
        end = boottime_ns()
    verdict = check_history(cluster.logs(), (start, end), min_coverage=0.0)
    report = _report(verdict, None, cluster, start, seed)
    if not broken:
        assert verdict.ok, report
        return
    kinds = {v.split(" by ")[0] for v in verdict.violations}
    assert {"leadership overlap", "work step overlap"} <= kinds, report


@pytest.mark.slow
def test_restarted_node_does_not_adopt_its_dead_incarnations_late_write(
    tmp_path: Path, store: Store
) -> None:
    """Rule 0: a write sent by a killed incarnation, landing late, is not the new one's.

    ``a`` tries to take over a partitioned leader; the proxy SIGKILLs it on
    that PUT and holds the PUT. ``a`` restarts under the same id, reads the
    old record, then its reads fail while the dead incarnation's PUT lands;
    its own takeover (same term and renewal number as the dead one's) then
    gets 412 and its renewals are blackholed. Adopting the dead write would
    date the new incarnation's lease from its own, later send time, while
    ``b`` (let back in when the dead write lands) counts from the landing:
    their leaderships would overlap. Whatever ``a`` does, the history must
    stay safe.
    """
    seed = _seed()
    with running_cluster(tmp_path, store, seed=seed) as cluster:
        proxy = cluster.proxy
        old = cluster.wait_leader(20 * LEASE)
        a, b = (name for name in NODES if name != old)
        start = boottime_ns()
        gate = proxy.gate()
        killed = threading.Event()

        def kill() -> None:
            cluster.kill(a)
            killed.set()

        def cut_renewals() -> None:
            proxy.set(a, Faults(blackhole=True, only=frozenset({"PUT"})))

        proxy.set(b, Faults(blackhole=True))  # b stays out of the first round
        proxy.set(a, Faults(on_put=kill, hold_until=gate, only=frozenset({"PUT"})))
        proxy.set(old, Faults(partition=True))  # the leader's lease runs out
        assert killed.wait(12 * LEASE), f"{a} never tried to take over from {old}"
        cluster.current[a].proc.wait(5)
        answered = proxy.stats()[a].get("status_200", 0)
        proxy.set(a, CLEAR)
        cluster.start(a)
        cluster.wait_up()
        # HEAD (start-up check) and the first GET answered: t is now.
        wait_for(
            lambda: proxy.stats()[a].get("status_200", 0) >= answered + 2,
            10 * LEASE,
            f"the restarted {a} did not read the lock",
        )
        proxy.set(a, Faults(reset_before=1.0, only=frozenset({"GET"}), on_put=cut_renewals))
        gate.open()  # the dead incarnation's takeover lands now
        proxy.clear(b)
        cluster.wait_leader(12 * LEASE, not_=old)
        time.sleep(4 * LEASE)
        proxy.clear()
        end = boottime_ns()
    verdict = check_history(cluster.logs(), (start, end), min_coverage=0.0)
    report = _report(verdict, None, cluster, start, seed)
    print(report)
    assert proxy.stats()[a].get("gated", 0) == 1, report
    assert verdict.ok, report


# -- the proxy itself, against moto ------------------------------------------------------


@pytest.fixture
def s3_through(moto_server: str, s3_bucket: str) -> Iterator[Callable[..., Any]]:
    """Makes boto3 clients whose requests go through a proxy (one attempt, short timeouts)."""
    clients: list[Any] = []

    def make(url: str, timeout: float = 1.0) -> Any:
        config = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        client = boto3_client("s3", url, config=config)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def proxy(moto_server: str) -> Iterator[FaultProxy]:
    """A proxy with one node, "a", in front of moto (PUTs not serialised)."""
    with FaultProxy(moto_server, ["a"], seed=1) as running:
        yield running


def _exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise
    return True


def test_proxy_forwards_requests_and_counts_them(
    proxy: FaultProxy, s3_through: Callable[..., Any], s3_bucket: str
) -> None:
    client = s3_through(proxy.url("a"))
    key = f"plain-{uuid.uuid4().hex}"
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"x" * 70_000)
    assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"x" * 70_000
    assert _exists(client, s3_bucket, key)  # HEAD: a response without a body
    stats = proxy.stats()["a"]
    assert (stats["PUT"], stats["GET"], stats["HEAD"]) == (1, 1, 1)
    assert stats["status_200"] == 3


@pytest.mark.parametrize(
    ("faults", "reaches_server"),
    [
        pytest.param(Faults(reset_before=1.0), False, id="reset_before"),
        pytest.param(Faults(reset_after=1.0), True, id="reset_after"),
        pytest.param(Faults(partition=True), False, id="partition"),
    ],
)
def test_proxy_resets_connections(
    proxy: FaultProxy,
    s3_through: Callable[..., Any],
    moto_server: str,
    s3_bucket: str,
    faults: Faults,
    reaches_server: bool,
) -> None:
    client = s3_through(proxy.url("a"), timeout=5.0)
    direct = s3_through(moto_server)
    key = f"reset-{uuid.uuid4().hex}"
    proxy.set("a", faults)
    started = time.monotonic()
    with pytest.raises(BotoCoreError):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    assert time.monotonic() - started < 2.0, "a reset must fail fast, not time out"
    assert _exists(direct, s3_bucket, key) is reaches_server
    proxy.clear()
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"y")  # a fresh connection works


def test_proxy_delivers_a_late_request_after_the_client_gave_up(
    proxy: FaultProxy, s3_through: Callable[..., Any], moto_server: str, s3_bucket: str
) -> None:
    client = s3_through(proxy.url("a"), timeout=0.3)
    direct = s3_through(moto_server)
    key = f"late-{uuid.uuid4().hex}"
    proxy.set("a", Faults(late_request=0.8))
    with pytest.raises(ReadTimeoutError):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    assert not _exists(direct, s3_bucket, key)
    wait_for(lambda: _exists(direct, s3_bucket, key), 5.0, "the late PUT never reached moto")
    assert proxy.stats()["a"]["client_gone"] == 1


@pytest.mark.parametrize(("hold", "times_out"), [(0.8, True), (0.15, False)])
def test_proxy_holds_replies(
    proxy: FaultProxy,
    s3_through: Callable[..., Any],
    moto_server: str,
    s3_bucket: str,
    hold: float,
    times_out: bool,
) -> None:
    client = s3_through(proxy.url("a"), timeout=0.4)
    direct = s3_through(moto_server)
    key = f"held-{uuid.uuid4().hex}"
    proxy.set("a", Faults(hold_reply=hold))
    started = time.monotonic()
    if times_out:
        with pytest.raises(ReadTimeoutError):
            client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    else:
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
        assert time.monotonic() - started >= hold
    assert _exists(direct, s3_bucket, key), "the server must have seen the held request"


def test_proxy_blackhole_accepts_and_never_answers(
    proxy: FaultProxy, s3_through: Callable[..., Any], moto_server: str, s3_bucket: str
) -> None:
    client = s3_through(proxy.url("a"), timeout=0.3)
    key = f"void-{uuid.uuid4().hex}"
    proxy.set("a", Faults(blackhole=True))
    with pytest.raises(ReadTimeoutError):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    assert not _exists(s3_through(moto_server), s3_bucket, key)


def test_proxy_latency_delays_within_its_bound(
    proxy: FaultProxy, s3_through: Callable[..., Any], s3_bucket: str
) -> None:
    client = s3_through(proxy.url("a"), timeout=2.0)
    proxy.set("a", Faults(latency=0.2))
    started = time.monotonic()
    for _ in range(5):
        client.list_objects_v2(Bucket=s3_bucket, MaxKeys=1)
    elapsed = time.monotonic() - started
    assert proxy.stats()["a"]["delayed"] == 5
    assert 0.05 < elapsed < 5 * 0.2 + 1.0


def test_proxy_calls_on_put_once_before_forwarding(
    proxy: FaultProxy, s3_through: Callable[..., Any], moto_server: str, s3_bucket: str
) -> None:
    client = s3_through(proxy.url("a"))
    direct = s3_through(moto_server)
    key = f"hook-{uuid.uuid4().hex}"
    seen: list[bool] = []
    proxy.set("a", Faults(on_put=lambda: seen.append(_exists(direct, s3_bucket, key))))
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"y")
    assert seen == [False], "called once, before the first PUT reached the server"


def test_proxy_serialises_conditional_puts_for_moto(
    moto_server: str, s3_bucket: str, s3_through: Callable[..., Any]
) -> None:
    """With serialise_puts, concurrent creates of one key have exactly one winner on moto."""
    names = [f"c{i}" for i in range(6)]
    key = f"race-{uuid.uuid4().hex}"
    with FaultProxy(moto_server, names, serialise_puts=True) as proxy:
        clients = [s3_through(proxy.url(name), timeout=5.0) for name in names]
        barrier = threading.Barrier(len(clients))
        outcomes: list[str] = []

        def create(client: Any) -> None:
            barrier.wait(5)
            try:
                client.put_object(Bucket=s3_bucket, Key=key, Body=b"x", IfNoneMatch="*")
                outcomes.append("won")
            except ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])

        threads = [threading.Thread(target=create, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert sorted(outcomes) == ["PreconditionFailed"] * 5 + ["won"], outcomes


def test_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="latency"):
        Faults(latency=-1)
    with pytest.raises(ValueError, match="reset_after"):
        Faults(reset_after=1.5)


def test_proxy_gate_holds_only_the_chosen_methods_until_opened(
    proxy: FaultProxy, s3_through: Callable[..., Any], moto_server: str, s3_bucket: str
) -> None:
    client = s3_through(proxy.url("a"), timeout=0.3)
    direct = s3_through(moto_server)
    key = f"gated-{uuid.uuid4().hex}"
    gate = proxy.gate()
    proxy.set("a", Faults(hold_until=gate, only=frozenset({"PUT"})))
    with pytest.raises(ReadTimeoutError):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    client.list_objects_v2(Bucket=s3_bucket, MaxKeys=1)  # a GET passes the gate
    assert not _exists(direct, s3_bucket, key)
    gate.open()
    wait_for(lambda: _exists(direct, s3_bucket, key), 5.0, "the gated PUT never reached moto")
