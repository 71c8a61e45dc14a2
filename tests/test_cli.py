"""The ``fastelect`` command, run for real: ``python -m fastelect.cli`` in subprocesses.

Sidecar children append ``leader term pid monotonic-time kind`` lines to a
shared file; CLOCK_MONOTONIC is one clock for every process on the host, so
the lines from different sidecars can be ordered and checked for overlap.
(The lease clock is CLOCK_BOOTTIME; the two agree on a host that has not
been suspended during the test, as a test host is not.)
Every subprocess is killed in ``finally``; waits are bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fastelect.record import encode_record
from health_helpers import lead
from helpers import S3_REGION, MotoAuth, free_port, wait_for

OPENSSL = "/usr/bin/openssl"
CLI = [sys.executable, "-m", "fastelect.cli"]

CHILD = """
import os, signal, sys, time
out, mode = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
who = f"{os.environ['FASTELECT_LEADER_ID']} {os.environ['FASTELECT_TERM']} {os.getpid()}"

def line(kind):
    with open(out, "a") as f:  # O_APPEND: whole lines, even from several processes
        f.write(f"{who} {time.monotonic():.6f} {kind}\\n")

def on_term(*_):
    line("TERM")
    if mode != "ignore-term":
        sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
line("start")
while True:
    line("beat")
    time.sleep(0.02)
"""


def cli(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run the command to completion."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


@dataclass(frozen=True)
class Line:
    leader: str
    term: int
    pid: int
    t: float
    kind: str


def read_lines(path: Path) -> list[Line]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        parts = raw.split()
        if len(parts) == 5:
            lines.append(Line(parts[0], int(parts[1]), int(parts[2]), float(parts[3]), parts[4]))
    return sorted(lines, key=lambda line: line.t)


def assert_exclusive(lines: list[Line]) -> list[tuple[str, int, int]]:
    """No two children ever interleave, and each new one runs under a higher term."""
    blocks: list[tuple[str, int, int]] = []
    for line in lines:
        key = (line.leader, line.term, line.pid)
        if not blocks or blocks[-1] != key:
            assert key not in blocks, f"{key} ran again after another child: overlap"
            blocks.append(key)
    terms = [term for _, term, _ in blocks]
    assert terms == sorted(terms) and len(set(terms)) == len(terms), f"terms {terms}"
    return blocks


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        # ProcessLookupError: reaped between the open and the read.
        return True


class Procs:
    """Started subprocesses, each killed (with its process group) after the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []

    def start(self, *args: str, name: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed by Popen owner
        try:
            proc = subprocess.Popen([*CLI, *args], stdout=log, stderr=subprocess.STDOUT, **kwargs)
        finally:
            log.close()  # the child has its own copy
        self.procs.append(proc)
        self.names.append(name)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def table(self, name: str) -> str:
        """The leadership table the sidecar started as ``name`` publishes (from its log)."""
        found = wait_for(
            lambda: re.search(r"publishing the leadership in table (\S+)", self.log(name)),
            30,
            f"sidecar {name} never said which table it publishes",
        )
        return found.group(1)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a test may have frozen it
                proc.kill()
            proc.wait(timeout=30)
        for name in self.names:
            found = re.search(r"publishing the leadership in table (\S+)", self.log(name))
            if found:
                remove_stale_table(found.group(1))


def remove_stale_table(name: str) -> None:
    """Remove the leadership table a SIGKILLed sidecar left in /dev/shm (if its owner is gone)."""
    from fastelect import FastelectError, attach
    from fastelect._core import shm_path

    try:
        reader = attach(name)
    except FastelectError:
        return  # none (the sidecar stopped cleanly and removed it)
    with reader:
        if reader.stale:
            Path(shm_path(name)).unlink(missing_ok=True)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return path


def s3_url(endpoint: str, bucket: str, prefix: str | None = None) -> str:
    prefix = prefix or f"cli-{uuid.uuid4().hex[:12]}"
    return f"s3://{bucket}/{prefix}?endpoint_url={endpoint}&region={S3_REGION}"


# -- the command itself ---------------------------------------------------------------


def test_module_and_version_and_help() -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("fastelect ")
    done = cli("--help")
    assert done.returncode == 0
    assert "{demo,run,status,check,certs}" in done.stdout and "_demo-node" not in done.stdout


# -- demo -----------------------------------------------------------------------------


# Short: three calm phases of 1 s, a lease of 1 s, polls every 0.25 s.
DEMO_TIMING = ("--duration", "3", "--leader-timeout", "1", "--frequent-interval", "0.25")
FAILOVER = re.compile(
    r"failover after a (crash|release) \((\S+) (node-\d) -> (node-\d)\):\s+"
    r"([\d.]+) s\s+bound ([\d.]+) s"
)


@pytest.mark.slow
def test_demo_on_the_embedded_default_prints_both_failovers_within_bounds() -> None:
    done = cli("demo", *DEMO_TIMING, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    found = {m.group(1): m for m in FAILOVER.finditer(done.stdout)}
    assert set(found) == {"crash", "release"}, done.stdout
    crash, release = found["crash"], found["release"]
    assert crash.group(2) == "SIGKILL" and release.group(2) == "SIGTERM"
    # The bounds the config promises: T + F after a crash, F after a release.
    assert float(crash.group(6)) == pytest.approx(1.25)
    assert float(release.group(6)) == pytest.approx(0.25)
    assert float(crash.group(5)) <= 1.25 + 0.3
    assert float(release.group(5)) <= 0.25 + 0.3
    # Not a TTY: plain event lines, no escape sequences.
    assert "\x1b[" not in done.stdout
    assert "became leader (term 1)" in done.stdout


@pytest.mark.slow
def test_demo_in_one_process_on_memory_with_json_output() -> None:
    done = cli("demo", "--store", "memory://", "--nodes", "2", "--json", *DEMO_TIMING, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] and result["nodes"] == 2
    kinds = [f["kind"] for f in result["failovers"]]
    assert kinds == ["crash", "graceful"]
    for failover in result["failovers"]:
        assert failover["within_bound"]
        assert failover["seconds"] <= failover["bound_s"] + result["allowance_s"]
    # With two nodes the crashed one must have come back to take the last turn.
    terms = [f["term"] for f in result["failovers"]]
    assert terms[0] < terms[1]


# -- run: the sidecar -------------------------------------------------------------------


def sidecar_args(store: str, server_id: str, out: Path, child: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--store",
        store,
        "--id",
        server_id,
        *extra,
        "--",
        sys.executable,
        str(child),
        str(out),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", pytest.param("s3", marks=pytest.mark.s3)])
def test_two_sidecars_run_the_child_on_exactly_one_and_hand_over_on_sigkill(
    kind: str, tmp_path: Path, procs: Procs, child_script: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "file":
        store = store_url(tmp_path)
        lease, freq = 1.0, 0.2
    else:
        store = s3_url(request.getfixturevalue("moto_server"), request.getfixturevalue("s3_bucket"))
        lease, freq = 1.5, 0.3
    timing = [
        "--leader-timeout",
        str(lease),
        "--frequent-interval",
        str(freq),
        "--infrequent-interval",
        str(freq),
        "--grace",
        "1",
    ]
    out = tmp_path / "out.txt"
    sidecars = {
        sid: procs.start(*sidecar_args(store, sid, out, child_script, *timing), name=sid)
        for sid in ("a", "b")
    }

    first = wait_for(lambda: read_lines(out), 30, "no child started")[0]
    time.sleep(5 * freq)
    assert {line.leader for line in read_lines(out)} == {first.leader}
    # status sees the live leader.
    status = cli("status", "--store", store, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["leader_id"] == first.leader

    # SIGKILL the leader's sidecar: its child dies with it, at once.
    t_kill = time.monotonic()
    sidecars[first.leader].kill()
    wait_for(lambda: pid_gone(first.pid), 1.0, f"child {first.pid} outlived its sidecar")
    other = "b" if first.leader == "a" else "a"
    takeover = wait_for(
        lambda: next((x for x in read_lines(out) if x.leader == other), None),
        lease + freq + 10,
        "the other sidecar never took over",
    )
    # It waited out the lease (measured from the dead leader's last renewal,
    # at most one interval before the kill), and took the next term.
    assert takeover.t - t_kill >= lease - freq - 0.1
    assert takeover.t - t_kill <= lease + freq + 2.0
    assert takeover.term > first.term
    last_old = max(x.t for x in read_lines(out) if x.leader == first.leader)
    assert last_old < takeover.t

    # SIGTERM the survivor: it stops the child, releases and exits 0.
    survivor = sidecars[other]
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=10) == 0, procs.log(other)
    assert pid_gone(takeover.pid)
    lines = read_lines(out)
    assert [line.kind for line in lines if line.pid == takeover.pid][-1] == "TERM"
    blocks = assert_exclusive(lines)
    assert [leader for leader, _, _ in blocks] == [first.leader, other]
    status = cli("status", "--store", store, "--json")
    assert status.returncode == 3
    assert json.loads(status.stdout)["state"] == "released"


def test_child_exit_releases_and_passes_its_status_on(tmp_path: Path) -> None:
    store = store_url(tmp_path)
    done = cli(
        "run",
        "--store",
        store,
        "--id",
        "a",
        "-q",
        "--",
        sys.executable,
        "-c",
        "import os, sys; print('term', os.environ['FASTELECT_TERM'],"
        " os.environ['FASTELECT_LEADER_ID']); sys.exit(7)",
    )
    assert done.returncode == 7, done.stderr
    assert done.stdout == "term 1 a\n"  # the child's stdout is passed through
    status = cli("status", "--store", store)
    assert status.returncode == 3 and "released" in status.stdout


def test_child_killed_by_a_signal_exits_128_plus_n(tmp_path: Path) -> None:
    done = cli(
        "run",
        "--store",
        f"file://{tmp_path}",
        "--id",
        "a",
        "-q",
        "--",
        sys.executable,
        "-c",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    )
    assert done.returncode == 128 + signal.SIGKILL


def test_restart_runs_the_child_again_under_the_same_term(tmp_path: Path, procs: Procs) -> None:
    runs = tmp_path / "runs.txt"
    script = f"import os; open({str(runs)!r}, 'a').write(os.environ['FASTELECT_TERM'] + '\\n')"
    sidecar = procs.start(
        "run",
        "--store",
        store_url(tmp_path),
        "--id",
        "a",
        "--restart",
        "--restart-delay",
        "0.05",
        "--",
        sys.executable,
        "-c",
        script,
        name="a",
    )
    wait_for(lambda: runs.exists() and len(runs.read_text().split()) >= 3, 30, "no restarts")
    sidecar.send_signal(signal.SIGTERM)
    assert sidecar.wait(timeout=10) == 0
    assert set(runs.read_text().split()) == {"1"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_sigint_and_sighup_stop_the_child_and_release(
    sig: signal.Signals, tmp_path: Path, procs: Procs, child_script: Path
) -> None:
    store = store_url(tmp_path)
    out = tmp_path / "out.txt"
    sidecar = procs.start(*sidecar_args(store, "a", out, child_script), name="a")
    first = wait_for(lambda: read_lines(out), 30, "no child started")[0]
    sidecar.send_signal(sig)
    assert sidecar.wait(timeout=15) == 0, procs.log("a")
    assert pid_gone(first.pid)
    assert [x.kind for x in read_lines(out)][-1] == "TERM"  # stopped in order, not killed
    assert f"received {sig.name}: stopping" in procs.log("a")
    status = cli("status", "--store", store, "--json")
    assert status.returncode == 3 and json.loads(status.stdout)["state"] == "released"


def test_the_child_environment_names_the_lock_term_leader_and_table(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    script = (
        "import json, os\n"
        "print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('FASTELECT_')}))"
    )
    done = cli(
        "run",
        "--store",
        f"file://{store_dir}",
        "--id",
        "a",
        "--lock",
        "jobs/nightly.json",
        "--shm",
        f"env-{os.getpid()}",
        "-q",
        "--",
        sys.executable,
        "-c",
        script,
    )
    assert done.returncode == 0, done.stderr
    # Only what the runner adds: FASTELECT_* names this test inherited (CI's
    # FASTELECT_EXTRAS, say) pass through untouched.
    env = {k: v for k, v in json.loads(done.stdout).items() if k not in os.environ}
    # The stored object's own name (what storage.describe() logs), so a child
    # can say which lock it runs under.
    lock = env.pop("FASTELECT_LOCK")
    assert lock == f"file://{store_dir.resolve()}/jobs%2Fnightly.json"
    assert Path(lock.removeprefix("file://")).is_file()
    assert env == {
        "FASTELECT_TERM": "1",
        "FASTELECT_LEADER_ID": "a",
        "FASTELECT_SHM": f"env-{os.getpid()}",
    }


@pytest.mark.slow
def test_lease_running_out_without_renewal_stops_the_child_before_the_deadline(
    tmp_path: Path, procs: Procs, child_script: Path
) -> None:
    # Renewals fail while the test holds the store's write lock (FileStorage
    # serialises writers with flock), so the lease runs out with the sidecar
    # alive and well: its guard must SIGTERM the child, then SIGKILL it (the
    # child ignores SIGTERM) before the deadline.
    lease, freq, margin = 1.0, 0.2, 0.1
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    out = tmp_path / "out.txt"
    sidecar = procs.start(
        "run",
        "--store",
        f"file://{store_dir}",
        "--id",
        "a",
        "--leader-timeout",
        str(lease),
        "--frequent-interval",
        str(freq),
        "--safety-margin",
        str(margin),
        "--grace",
        "5",
        "--",
        sys.executable,
        str(child_script),
        str(out),
        "ignore-term",
        name="a",
    )
    first = wait_for(lambda: read_lines(out), 30, "no child started")[0]
    lock_file = store_dir / ".leader.json.lock"
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        t_lock = time.monotonic()
        # Every renewal sent after t_lock fails, so the deadline is at most
        # t_lock + T - margin (the last renewal was sent before t_lock).
        deadline_bound = t_lock + lease - margin
        wait_for(lambda: pid_gone(first.pid), lease + 2, "the child outlived the lease")
        time.sleep(0.1)
    finally:
        os.close(fd)
    lines = [x for x in read_lines(out) if x.pid == first.pid]
    terms = [x for x in lines if x.kind == "TERM"]
    # Exactly one SIGTERM (from the watchdog, or the guard thread off Linux):
    # the sidecar, seeing the lease end, does not send a second one.
    assert len(terms) == 1, "the child never got SIGTERM, or got two"
    # SIGTERM came well before the deadline (T - margin - F) / 2 = 0.35 s ahead,
    # and the child (ignoring it) was SIGKILLed before the deadline.
    assert terms[0].t < deadline_bound - 0.2
    assert lines[-1].t < deadline_bound + 0.01
    assert sidecar.poll() is None  # the sidecar lives on and campaigns again
    sidecar.send_signal(signal.SIGTERM)
    assert sidecar.wait(timeout=10) == 0
    assert "about to run out without a renewal" in procs.log("a")


def test_shm_publishes_the_leadership_to_the_child_and_other_processes(
    tmp_path: Path, procs: Procs
) -> None:
    name = f"cli-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    report = tmp_path / "report.txt"
    script = (
        "import os, time, fastelect\n"
        "reader = fastelect.attach(os.environ['FASTELECT_SHM'])\n"
        f"open({str(report)!r}, 'w').write(str(reader.is_leader('default')))\n"
        "time.sleep(60)\n"
    )
    sidecar = procs.start(
        "run",
        "--store",
        store_url(tmp_path),
        "--id",
        "a",
        "--shm",
        name,
        "--",
        sys.executable,
        "-c",
        script,
        name="a",
    )
    wait_for(lambda: report.exists() and report.read_text(), 30, "the child never reported")
    assert report.read_text() == "True"
    from fastelect import attach

    with attach(name) as reader:
        assert reader.is_leader("default")
        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(timeout=10) == 0
        assert not reader.is_leader("default") and reader.closed
    assert not Path(f"/dev/shm/fastelect.{name}").exists()


def test_health_endpoint_is_served_while_leading(tmp_path: Path, procs: Procs) -> None:
    tls = tmp_path / "tls"
    assert cli("certs", "--out", str(tls), "--ip", "127.0.0.1").returncode == 0
    port = free_port()
    sidecar = procs.start(
        "run",
        "--store",
        store_url(tmp_path),
        "--id",
        "a",
        "--health-bind",
        f"127.0.0.1:{port}",
        "--tls-cert",
        str(tls / "server-cert.pem"),
        "--tls-key",
        str(tls / "server-key.pem"),
        name="a",
    )
    context = ssl.create_default_context(cafile=str(tls / "ca-cert.pem"))
    url = f"https://127.0.0.1:{port}/health/leadership"

    def leader_answer() -> dict[str, Any] | None:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, context=context, timeout=1) as response,
        ):
            if response.status == 200:
                answer: dict[str, Any] = json.load(response)
                return answer
        return None

    answer = wait_for(leader_answer, 30, "the health endpoint never said leader")
    assert answer["leaderID"] == "a" and answer["term"] == 1
    sidecar.send_signal(signal.SIGTERM)
    assert sidecar.wait(timeout=15) == 0


# -- run: the lease watchdog ------------------------------------------------------------

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the watchdog process is Linux-only"
)


def proc_state(pid: int) -> str:
    """The one-letter state of ``pid`` ("T" when stopped), "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone, or reaped while read
        return ""


def watchdogs_of(sidecar: int) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the live lease watchdogs ``sidecar`` started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        if int(stat[1]) == sidecar and stat[0] not in "ZX" and "_watchdog.py" in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def freeze_outside_the_store_lock(pid: int, lock_file: Path) -> None:
    """SIGSTOP ``pid`` at a moment it does not hold FileStorage's write lock.

    Frozen holding it (mid-renewal), it would block every other writer of the
    store until resumed: safe, but then nobody could take over.
    """
    fd = os.open(lock_file, os.O_RDWR)
    try:
        for _ in range(100):
            os.kill(pid, signal.SIGSTOP)
            wait_for(lambda: proc_state(pid) == "T", 5, "the sidecar did not stop")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.kill(pid, signal.SIGCONT)  # caught mid-write: let it finish
                time.sleep(0.005)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
    finally:
        os.close(fd)
    raise AssertionError("the sidecar always held the store lock")


def lease_deadline(table: str, bound: float) -> float:
    """The lease deadline (lease clock s, CLOCK_BOOTTIME) the table shows, at most ``bound``."""
    from fastelect import FastelectError, attach

    with attach(table) as reader:
        for _ in range(100):
            try:
                status = reader.status("default")
            except FastelectError:  # a writer frozen mid-update: keep the bound
                time.sleep(0.001)
                continue
            assert status is not None and status["role"] == "leader"
            deadline = float(status["lease_until_ns"]) / 1e9
            assert deadline <= bound
            return deadline
    return bound


def test_stop_schedule_is_the_rule_both_enforcers_follow() -> None:
    from fastelect.cli._watchdog import StopSchedule, stop_leads

    # SIGTERM half the renewal slack (T - margin - F) / 2 ahead, bounded by the
    # grace; SIGKILL 50 ms ahead whatever the grace (a later SIGTERM point
    # moves to it: SIGKILL then comes without a SIGTERM first).
    assert stop_leads(1.0, 0.2, 0.1, 5.0) == (350_000_000, 50_000_000)
    assert stop_leads(15.0, 5.0, 1.5, 10.0) == (4_250_000_000, 50_000_000)
    assert stop_leads(15.0, 5.0, 1.5, 0.01) == (50_000_000, 50_000_000)
    assert stop_leads(1.0, 0.9, 0.1, 5.0) == (50_000_000, 50_000_000)

    schedule = StopSchedule(300, 50)
    assert schedule.step(0, 1000) == 0 and schedule.next_check_ns() == 700
    assert schedule.step(700, 1500) == 0 and schedule.next_check_ns() == 1200  # renewed
    # The lease is gone from the table: the last deadline seen still stands.
    assert schedule.step(1200, 0) == signal.SIGTERM and schedule.next_check_ns() == 1450
    assert schedule.step(1300, 0) == 0  # one SIGTERM only
    assert schedule.step(1450, 0) == signal.SIGKILL
    # Never saw a lease: SIGKILL at once.  Past the kill threshold: no SIGTERM first.
    assert StopSchedule(300, 50).step(5, 0) == signal.SIGKILL
    assert StopSchedule(300, 50).step(960, 1000) == signal.SIGKILL
    # Told that someone else sent SIGTERM: only the SIGKILL is left to send.
    told = StopSchedule(300, 50)
    told.termed = True
    assert told.step(800, 1000) == 0 and told.next_check_ns() == 950
    with pytest.raises(ValueError):
        StopSchedule(50, 300)


@linux_only
def test_a_child_never_starts_when_the_watchdog_sees_no_lease(tmp_path: Path) -> None:
    # The watchdog starts the command itself, and only under a live lease of
    # its term; with none in the table it refuses and nothing runs.
    # (This test process plays the sidecar: it owns the table and the watchdog.)
    import socket

    import fastelect
    from fastelect import LeadershipTable
    from fastelect.cli._watchdog import watchdog_argv

    marker = tmp_path / "ran"
    name = f"wd-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    ours, theirs = socket.socketpair()
    with LeadershipTable(name, slots=1) as table, ours:
        table.slot("default", "a")  # a follower: no lease
        argv = watchdog_argv(
            parent=os.getpid(),
            package_path=list(fastelect.__path__),
            table=name,
            table_token=table.token,
            election="default",
            term=1,
            term_lead_ns=350_000_000,
            kill_lead_ns=50_000_000,
            control_fd=theirs.fileno(),
            containment="subreaper",
            command=["touch", str(marker)],
        )
        watchdog = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), start_new_session=True)
        theirs.close()
        try:
            assert watchdog.wait(timeout=30) == 0
            said = b""
            ours.settimeout(5)
            while chunk := ours.recv(4096):
                said += chunk
            assert said.split(b"\n")[1:] == [b"refused", b""], said
            assert said.startswith(b"ready subreaper")
            assert not marker.exists()
        finally:
            if watchdog.poll() is None:
                watchdog.kill()
            watchdog.wait(timeout=10)


@linux_only
def test_a_watchdog_refuses_a_table_that_is_not_the_sidecars(tmp_path: Path) -> None:
    # The watchdog knows the sidecar's table by its token (its incarnation),
    # never by the pid in it: that pid is the writer's in the writer's PID
    # namespace.  A table of that name with another token is not the one
    # whose lease the child may run under: no child starts.
    import socket

    import fastelect
    from fastelect import LeadershipTable
    from fastelect.cli._watchdog import watchdog_argv

    marker = tmp_path / "ran"
    name = f"wd-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    ours, theirs = socket.socketpair()
    with LeadershipTable(name, slots=1) as table, ours:
        lead(table.slot("default", "a"), "a")
        argv = watchdog_argv(
            parent=os.getpid(),
            package_path=list(fastelect.__path__),
            table=name,
            table_token=table.token ^ 2,
            election="default",
            term=1,
            term_lead_ns=350_000_000,
            kill_lead_ns=50_000_000,
            control_fd=theirs.fileno(),
            containment="subreaper",
            command=["touch", str(marker)],
        )
        watchdog = subprocess.Popen(
            argv, pass_fds=(theirs.fileno(),), start_new_session=True, stderr=subprocess.PIPE
        )
        theirs.close()
        try:
            _, err = watchdog.communicate(timeout=30)
            assert watchdog.returncode == 1
            assert b"is not the sidecar's live table" in err, err
            assert not marker.exists()
        finally:
            if watchdog.poll() is None:
                watchdog.kill()
            watchdog.wait(timeout=10)


@pytest.mark.slow
@linux_only
def test_watchdog_stops_the_child_of_a_frozen_sidecar_by_the_deadline(
    tmp_path: Path, procs: Procs, child_script: Path
) -> None:
    # SIGSTOP freezes the whole sidecar (elector, event loop, guard threads)
    # while its child, in a session of its own, runs on.  Only the watchdog
    # process can stop it now: SIGTERM 0.35 s ahead (ignored by this child),
    # SIGKILL 50 ms before the deadline the frozen sidecar last published.
    lease, freq, margin = 1.0, 0.2, 0.1
    store = store_url(tmp_path)
    timing = [
        "--leader-timeout",
        str(lease),
        "--frequent-interval",
        str(freq),
        "--infrequent-interval",
        str(freq),
        "--safety-margin",
        str(margin),
        "--grace",
        "5",
    ]
    out = tmp_path / "out.txt"
    a = procs.start(*sidecar_args(store, "a", out, child_script, *timing), "ignore-term", name="a")
    first = wait_for(lambda: read_lines(out), 30, "no child started")[0]
    assert first.leader == "a"
    b = procs.start(*sidecar_args(store, "b", out, child_script, *timing), name="b")
    wait_for(lambda: "campaigning" in procs.log("b"), 30, "b never started campaigning")
    [(watchdog, cmdline)] = wait_for(lambda: watchdogs_of(a.pid), 10, "no watchdog")
    table = procs.table("a")
    assert f"--table {table} " in cmdline and f"--term {first.term} " in cmdline
    try:
        freeze_outside_the_store_lock(a.pid, tmp_path / "store" / ".leader.json.lock")
        t_stopped = time.monotonic()
        # Frozen, it can renew no more: its last write was sent before now.
        deadline = lease_deadline(table, t_stopped + lease - margin)
        assert deadline > t_stopped, "the lease ran out before the freeze took hold"

        wait_for(lambda: pid_gone(first.pid), lease + 2, "the child outlived the lease")
        t_dead = time.monotonic()
        assert t_dead <= deadline + 0.1, f"child died {t_dead - deadline:.3f} s after the deadline"
        lines = [x for x in read_lines(out) if x.pid == first.pid]
        terms = [x for x in lines if x.kind == "TERM"]
        assert terms and terms[0].t < deadline - 0.2, "no SIGTERM well ahead of the deadline"
        assert lines[-1].t < deadline, "the child still ran at the deadline"
        # Its job done, the watchdog exits (a zombie until the sidecar resumes).
        wait_for(lambda: pid_gone(watchdog), 2, "the watchdog lingered")
        assert proc_state(a.pid) == "T"  # all of this while the sidecar stayed frozen

        # The other sidecar takes over once the lease is over, never before.
        takeover = wait_for(
            lambda: next((x for x in read_lines(out) if x.leader == "b"), None),
            lease + freq + 10,
            "b never took over",
        )
        assert takeover.t > deadline and takeover.term > first.term
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(a.pid, signal.SIGCONT)

    # Resumed, the sidecar finds its lease gone and campaigns on as a follower.
    time.sleep(5 * freq)
    assert a.poll() is None and b.poll() is None
    blocks = assert_exclusive(read_lines(out))
    assert [leader for leader, _, _ in blocks] == ["a", "b"]
    for proc in (a, b):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert "about to run out without a renewal" in procs.log("a")
    assert pid_gone(takeover.pid)


@pytest.mark.slow
@linux_only
def test_watchdog_leaves_a_renewing_leaders_child_alone(
    tmp_path: Path, procs: Procs, child_script: Path
) -> None:
    lease, freq, margin = 1.0, 0.2, 0.1
    out = tmp_path / "out.txt"
    timing = [
        "--leader-timeout",
        str(lease),
        "--frequent-interval",
        str(freq),
        "--safety-margin",
        str(margin),
        "--grace",
        "0.5",
    ]
    store = store_url(tmp_path)
    sidecar = procs.start(
        *sidecar_args(store, "a", out, child_script, *timing), "ignore-term", name="a"
    )
    first = wait_for(lambda: read_lines(out), 30, "no child started")[0]
    [(watchdog, _)] = wait_for(lambda: watchdogs_of(sidecar.pid), 10, "no watchdog")
    table = Path(f"/dev/shm/fastelect.{procs.table('a')}")
    assert table.exists() and table.stat().st_mode & 0o777 == 0o600

    time.sleep(5 * lease)  # many renewals, each moving the watchdog's deadline on
    assert not pid_gone(first.pid) and not pid_gone(watchdog)
    lines = read_lines(out)
    assert {x.pid for x in lines} == {first.pid}
    assert [x for x in lines if x.kind != "beat"] == lines[:1]  # "start", then beats only
    beats = [x.t for x in lines]
    assert max(b - a for a, b in itertools.pairwise(beats)) < 0.5

    sidecar.send_signal(signal.SIGTERM)
    assert sidecar.wait(timeout=15) == 0
    assert pid_gone(first.pid) and pid_gone(watchdog)
    # One SIGTERM, from the sidecar (then SIGKILL after the grace: this child
    # ignores it); the watchdog sent none.
    assert [x.kind for x in read_lines(out)].count("TERM") == 1
    assert not table.exists()
    assert "without a renewal" not in procs.log("a")


@linux_only
def test_a_child_whose_watchdog_dies_is_stopped_and_started_again_under_a_new_one(
    tmp_path: Path, procs: Procs, child_script: Path
) -> None:
    out = tmp_path / "out.txt"
    store = store_url(tmp_path)
    extra = ("--restart-delay", "0.1", "--grace", "1")
    sidecar = procs.start(*sidecar_args(store, "a", out, child_script, *extra), name="a")
    first = wait_for(lambda: read_lines(out), 30, "no child started")[0]
    [(watchdog, _)] = wait_for(lambda: watchdogs_of(sidecar.pid), 10, "no watchdog")
    os.kill(watchdog, signal.SIGKILL)
    # The child must not run unwatched: stopped at once, then a fresh pair.
    wait_for(lambda: pid_gone(first.pid), 5, "the unwatched child ran on")
    second = wait_for(
        lambda: next((x for x in read_lines(out) if x.pid != first.pid), None),
        10,
        "the child was not started again",
    )
    assert second.term == first.term  # still the same leadership
    [(new_watchdog, _)] = wait_for(lambda: watchdogs_of(sidecar.pid), 10, "no new watchdog")
    assert new_watchdog != watchdog
    sidecar.send_signal(signal.SIGTERM)
    assert sidecar.wait(timeout=15) == 0
    assert "exited unexpectedly" in procs.log("a")
    assert pid_gone(second.pid) and pid_gone(new_watchdog)


# -- status -----------------------------------------------------------------------------


def test_status_exit_codes(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    store = f"file://{store_dir}"
    # No record: exit 3.
    done = cli("status", "--store", store)
    assert done.returncode == 3 and "no record" in done.stdout
    # A record nobody renewed for longer than its lease: exit 3, "expired".
    (store_dir / "leader.json").write_bytes(
        encode_record("gone", "10.0.0.9:8443", time.time_ns() - 60 * 10**9, 4, 15000, 9)
    )
    done = cli("status", "--store", store, "--json")
    assert done.returncode == 3
    info = json.loads(done.stdout)
    assert info["state"] == "expired" and info["leader_id"] == "gone" and info["term"] == 4
    # A fresh one: exit 0.
    (store_dir / "leader.json").write_bytes(
        encode_record("live", "10.0.0.5:8443", time.time_ns(), 5, 15000, 10)
    )
    done = cli("status", "--store", store)
    assert done.returncode == 0, done.stderr
    assert re.search(r"leader:\s+live", done.stdout) and re.search(r"term:\s+5", done.stdout)
    assert "10.0.0.5:8443" in done.stdout
    # Garbage: one clean error line.
    (store_dir / "leader.json").write_bytes(b"{not json")
    done = cli("status", "--store", store)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "unreadable" in done.stderr


# -- certs ------------------------------------------------------------------------------


def test_certs_verify_with_openssl_and_are_private(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    done = cli("certs", "--out", str(out), "--ip", "10.0.0.5", "--dns", "node1")
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["ca-cert.pem", "ca-key.pem", "server-cert.pem", "server-key.pem"]
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert out.stat().st_mode & 0o777 == 0o700
    verify = subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(out / "ca-cert.pem"), str(out / "server-cert.pem")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verify.returncode == 0 and verify.stdout.strip().endswith(": OK"), verify.stderr
    sans = subprocess.run(
        [OPENSSL, "x509", "-noout", "-ext", "subjectAltName", "-in", str(out / "server-cert.pem")],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "IP Address:10.0.0.5" in sans and "DNS:node1" in sans

    # Existing files are not overwritten without --force.
    again = cli("certs", "--out", str(out), "--dns", "node1")
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert "--force" in again.stderr

    # The same CA signs a second node's certificate.
    node2 = tmp_path / "node2"
    done = cli(
        "certs",
        "--out",
        str(node2),
        "--dns",
        "node2",
        "--ca-cert",
        str(out / "ca-cert.pem"),
        "--ca-key",
        str(out / "ca-key.pem"),
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in node2.iterdir()) == ["server-cert.pem", "server-key.pem"]
    verify = subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(out / "ca-cert.pem"), str(node2 / "server-cert.pem")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verify.returncode == 0, verify.stderr


# -- bad input: one clean line ------------------------------------------------------------


def store_url(tmp_path: Path) -> str:
    """A file:// store in ``tmp_path/store``, made first: file stores must exist."""
    directory = tmp_path / "store"
    directory.mkdir(exist_ok=True)
    return f"file://{directory}"


def assert_one_clean_line(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode not in (0, 3), done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fastelect: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("store", "needle"),
    [
        ("ftp://bucket/x", "unsupported scheme 'ftp'"),
        ("bucket/prefix", "missing scheme"),
        ("s3://", "missing bucket"),
        ("s3:///prefix", "missing bucket"),
        ("s3://bucket/p?bogus=1", "unknown parameter 'bogus'"),
        ("s3://bucket/p?endpoint_url=localhost:9000", "endpoint_url must be http(s)"),
        ("s3://key:secret@bucket/p", "cannot hold credentials"),
        ("s3://bucket/p?timeout=-1", "timeout must be positive"),
        ("file://relative/dir", "absolute path"),
        ("file:///", "needs a directory"),
        ("memory://", "only 'fastelect demo'"),
    ],
)
def test_bad_store_urls(store: str, needle: str) -> None:
    assert_one_clean_line(cli("status", "--store", store), needle)


def test_bad_urls_fail_run_before_anything_starts(tmp_path: Path) -> None:
    done = cli("run", "--store", "memory://", "--id", "a", "--", "true")
    assert_one_clean_line(done, "memory://")
    done = cli("run", "--store", "gopher://x", "--id", "a", "--", "true")
    assert_one_clean_line(done, "unsupported scheme")


def test_missing_directory_and_bad_timings(tmp_path: Path) -> None:
    done = cli("status", "--store", f"file://{tmp_path / 'nope'}")
    assert_one_clean_line(done, "does not exist")
    done = cli(
        "run",
        "--store",
        f"file://{tmp_path}",
        "--id",
        "a",
        "--leader-timeout",
        "1",
        "--frequent-interval",
        "2",
        "--",
        "true",
    )
    assert_one_clean_line(done, "--frequent-interval")


def test_unreachable_endpoint(tmp_path: Path) -> None:
    store = s3_url(f"http://127.0.0.1:{free_port()}", "bucket")
    assert_one_clean_line(cli("status", "--store", store), "127.0.0.1")
    done = cli("run", "--store", store, "--id", "a", "--", "true")
    assert_one_clean_line(done, "127.0.0.1")


@pytest.mark.s3
def test_missing_bucket(moto_server: str) -> None:
    store = s3_url(moto_server, f"no-such-bucket-{uuid.uuid4().hex[:8]}")
    assert_one_clean_line(cli("status", "--store", store), "does not exist")
    done = cli("run", "--store", store, "--id", "a", "--", "true")
    assert_one_clean_line(done, "does not exist")
    done = cli("demo", "--store", store)  # checked before any node starts
    assert_one_clean_line(done, "does not exist")


@pytest.mark.s3
def test_wrong_credentials(moto_auth_server: MotoAuth) -> None:
    store = s3_url(moto_auth_server.url, moto_auth_server.bucket)
    for key_id, secret in (moto_auth_server.denied, ("AKIAUNKNOWN000000000", "wrong")):
        env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
        assert_one_clean_line(cli("status", "--store", store, env=env), "credentials")
        done = cli("run", "--store", store, "--id", "a", "--", "true", env=env)
        assert_one_clean_line(done, "credentials")
    # The allowed user gets through (no record yet: exit 3).
    key_id, secret = moto_auth_server.allowed
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    done = cli("status", "--store", store, env=env)
    assert done.returncode == 3, done.stderr


def test_bad_certificate_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    done = cli(
        "run",
        "--store",
        f"file://{tmp_path}",
        "--id",
        "a",
        "--health-bind",
        "127.0.0.1:0",
        "--tls-cert",
        str(junk),
        "--tls-key",
        str(junk),
    )
    assert_one_clean_line(done, "junk.pem")
