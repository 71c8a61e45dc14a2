"""``fastelect run`` stops the child's whole process tree, and keeps calm through an outage.

Real sidecars (``python -m fastelect.cli run``) run real trees: a grandchild
in a session of its own (``setsid``), one under ``timeout`` (its own process
group), and a double-forking daemon, each appending ``leader term pid t
kind`` lines to one file (``t`` on CLOCK_BOOTTIME, the lease clock, one clock
for every process on the host).  Each tree mechanism (cgroup, subreaper) is
run where this host has it; the subreaper is forced with
``FASTELECT_RUN_CONTAINMENT``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from faultproxy import FaultProxy, Faults
from helpers import S3_REGION, wait_for
from test_cli import (
    CLI,
    Procs,
    freeze_outside_the_store_lock,
    lease_deadline,
    pid_gone,
    proc_state,
    watchdogs_of,
)

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the lease watchdog and its trees are Linux-only"
)

WRITER = """
import os, sys, time
out, kind = sys.argv[1], sys.argv[2]
who = f"{os.environ['FASTELECT_LEADER_ID']} {os.environ['FASTELECT_TERM']} {os.getpid()}"
if kind == "daemon":  # the classic double fork: session of its own, parent gone
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    who = f"{os.environ['FASTELECT_LEADER_ID']} {os.environ['FASTELECT_TERM']} {os.getpid()}"
while True:
    with open(out, "a") as f:  # O_APPEND: whole lines, even from several processes
        f.write(f"{who} {time.clock_gettime(time.CLOCK_BOOTTIME):.6f} {kind}\\n")
    time.sleep(0.02)
"""

# The child: three grandchildren that each leave its process group, then beats.
TREE = """
import os, subprocess, sys
out, writer = sys.argv[1], sys.argv[2]
py = sys.executable
subprocess.Popen(["setsid", py, writer, out, "setsid"])
subprocess.Popen(["timeout", "300", py, writer, out, "timeout"])
subprocess.Popen([py, writer, out, "daemon"])
os.execv(py, [py, writer, out, "child"])
"""

KINDS = {"child", "setsid", "timeout", "daemon"}


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
    found = []
    for raw in path.read_text().splitlines():
        parts = raw.split()
        if len(parts) == 5:
            found.append(Line(parts[0], int(parts[1]), int(parts[2]), float(parts[3]), parts[4]))
    return sorted(found, key=lambda line: line.t)


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def cgroup_usable() -> bool:
    from fastelect.cli import _tree

    try:
        return _tree.choose("cgroup")[0] == "cgroup"
    except OSError:
        return False


MECHANISMS = [
    pytest.param(
        "cgroup",
        marks=pytest.mark.skipif(
            not cgroup_usable(), reason="cgroup v2 is not delegated to us on this host"
        ),
    ),
    "subreaper",
]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[list[str]]:
    """The command that starts a child with three escaping grandchildren.

    Whatever of a tree outlives a failing test is killed afterwards.
    """
    assert shutil.which("setsid") and shutil.which("timeout"), "util-linux / coreutils needed"
    writer = tmp_path / "writer.py"
    writer.write_text(WRITER)
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    out = tmp_path / "out.txt"
    try:
        yield [sys.executable, str(script), str(out), str(writer)]
    finally:
        for pid in {line.pid for line in read_lines(out)}:
            try:  # only if the pid still runs our writer (never a stranger reusing it)
                if str(writer) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def sidecar(store: str, server_id: str, command: list[str], *extra: str) -> list[str]:
    return ["run", "--store", store, "--id", server_id, *extra, "--", *command]


def env_for(mechanism: str) -> dict[str, str]:
    return {**os.environ, "FASTELECT_RUN_CONTAINMENT": mechanism}


def whole_tree(out: Path, leader: str) -> dict[str, Line]:
    """The first line of each kind the tree of ``leader`` wrote (all four, or fewer)."""
    first: dict[str, Line] = {}
    for line in read_lines(out):
        if line.leader == leader:
            first.setdefault(line.kind, line)
    return first


def assert_all_gone(pids: set[int], within: float) -> None:
    wait_for(lambda: all(pid_gone(pid) for pid in pids), within, f"{pids} outlived the tree")


TIMING = [
    "--leader-timeout",
    "1",
    "--frequent-interval",
    "0.2",
    "--infrequent-interval",
    "0.2",
    "--safety-margin",
    "0.1",
    "--grace",
    "5",
]


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_frozen_leaders_whole_tree_stops_before_the_next_leader_starts(
    mechanism: str, tmp_path: Path, procs: Procs, tree: list[str]
) -> None:
    (tmp_path / "store").mkdir()
    store = f"file://{tmp_path / 'store'}"
    out = tmp_path / "out.txt"
    a = procs.start(*sidecar(store, "a", tree, *TIMING), name="a", env=env_for(mechanism))
    started = wait_for(lambda: len(whole_tree(out, "a")) == 4 and whole_tree(out, "a"), 30, "tree")
    assert set(started) == KINDS
    [(watchdog, _)] = watchdogs_of(a.pid)
    b = procs.start(*sidecar(store, "b", tree, *TIMING), name="b")
    wait_for(lambda: "campaigning" in procs.log("b"), 30, "b never started campaigning")
    try:
        freeze_outside_the_store_lock(a.pid, tmp_path / "store" / ".leader.json.lock")
        t_frozen = boottime()
        deadline = lease_deadline(procs.table("a"), t_frozen + 1.0 - 0.1)
        old = {line.pid for line in read_lines(out) if line.leader == "a"}
        assert len(old) == 4
        assert_all_gone(old, 3)
        takeover = wait_for(lambda: whole_tree(out, "b").get("child"), 15, "b never took over")
        time.sleep(0.5)  # anything of a's tree still alive would write meanwhile
        assert proc_state(a.pid) == "T", "all of this while the sidecar stayed frozen"
    finally:
        os.kill(a.pid, signal.SIGCONT)
    lines = read_lines(out)
    last_a = max(line.t for line in lines if line.leader == "a")
    assert last_a < deadline, f"a's tree wrote {last_a - deadline:.3f} s after its lease"
    assert last_a < takeover.t
    assert takeover.term > started["child"].term
    assert {line.pid for line in lines if line.leader == "a"} == old
    if mechanism == "cgroup":
        from fastelect.cli._tree import cgroup_base

        base = cgroup_base()
        assert base is not None and not (base / f"fastelect-run-{watchdog}").exists()
    for proc in (a, b):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert_all_gone({line.pid for line in read_lines(out)}, 3)
    words = "a cgroup of its own" if mechanism == "cgroup" else "its watchdog is a child subreaper"
    assert f"the child's whole tree is stopped at the lease: {words}" in procs.log("a")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_sigkilled_sidecar_takes_the_whole_tree_along(
    mechanism: str, tmp_path: Path, procs: Procs, tree: list[str]
) -> None:
    out = tmp_path / "out.txt"
    (tmp_path / "store").mkdir()
    a = procs.start(
        *sidecar(f"file://{tmp_path / 'store'}", "a", tree), name="a", env=env_for(mechanism)
    )
    started = wait_for(lambda: len(whole_tree(out, "a")) == 4 and whole_tree(out, "a"), 30, "tree")
    [(watchdog, _)] = watchdogs_of(a.pid)
    a.kill()
    assert_all_gone({line.pid for line in started.values()} | {watchdog}, 2)
    t_gone = boottime()
    time.sleep(0.2)
    assert max(line.t for line in read_lines(out)) < t_gone


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_what_a_child_leaves_behind_is_stopped_when_it_exits(
    mechanism: str, tmp_path: Path, tree: list[str]
) -> None:
    # The child starts its three escaping grandchildren, then exits 3: the
    # sidecar releases and exits 3, and nothing of the tree runs on.
    out = tmp_path / "out.txt"
    script = tmp_path / "leave.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "out, writer = sys.argv[1], sys.argv[2]\n"
        "py = sys.executable\n"
        "subprocess.Popen(['setsid', py, writer, out, 'setsid'])\n"
        "subprocess.Popen(['timeout', '300', py, writer, out, 'timeout'])\n"
        "subprocess.Popen([py, writer, out, 'daemon'])\n"
        "while len({l.split()[4] for l in open(out)} if os.path.exists(out) else ()) < 3:\n"
        "    time.sleep(0.01)\n"
        "sys.exit(3)\n"
    )
    (tmp_path / "store").mkdir()
    with (tmp_path / "err.txt").open("w") as err:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fastelect.cli",
                "run",
                "--store",
                f"file://{tmp_path / 'store'}",
                "--id",
                "a",
                "--",
                sys.executable,
                str(script),
                *tree[2:],
            ],
            # Not a pipe: a grandchild that escaped would hold it open.
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=60,
            env=env_for(mechanism),
        )
    assert done.returncode == 3, (tmp_path / "err.txt").read_text()
    t_done = boottime()
    lines = read_lines(out)
    assert {line.kind for line in lines} == {"setsid", "timeout", "daemon"}
    assert_all_gone({line.pid for line in lines}, 1)
    time.sleep(0.2)
    assert max(line.t for line in read_lines(out)) < t_done


def test_a_bad_containment_setting_is_bad_input(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "run", "--store", f"file://{tmp_path}", "--id", "a", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_for("jail"),
    )
    assert done.returncode == 2
    assert "FASTELECT_RUN_CONTAINMENT" in done.stderr and "Traceback" not in done.stderr


# -- the sidecar through a storage outage ------------------------------------------------


@pytest.mark.s3
@pytest.mark.slow
def test_an_outage_stops_the_child_once_and_starts_it_once_when_leading_again(
    tmp_path: Path, procs: Procs, moto_server: str, s3_bucket: str
) -> None:
    # The store goes away (every connection reset) while the sidecar leads.
    # The child runs on while the lease is valid, is stopped once at the
    # lease, and starts again only when the sidecar leads again after the
    # outage; no child or watchdog is started meanwhile.
    out = tmp_path / "out.txt"
    writer = tmp_path / "writer.py"
    writer.write_text(WRITER)
    with FaultProxy(moto_server, ["a"], seed=7) as proxy:
        store = (
            f"s3://{s3_bucket}/run-outage-{os.getpid()}"
            f"?endpoint_url={proxy.url('a')}&region={S3_REGION}"
        )
        timing = ["--leader-timeout", "1.5", "--frequent-interval", "0.3", "--grace", "0.3"]
        a = procs.start(
            *sidecar(store, "a", [sys.executable, str(writer), str(out), "child"], *timing),
            "-v",
            name="a",
        )
        first = wait_for(lambda: read_lines(out), 30, "no child started")[0]
        proxy.set("a", Faults(partition=True))
        t_down = boottime()
        wait_for(lambda: pid_gone(first.pid), 1.5 + 2, "the child outlived the lease")
        t_stopped = boottime()
        time.sleep(2.0)  # the outage goes on: nothing may start meanwhile
        assert {line.pid for line in read_lines(out)} == {first.pid}
        log = procs.log("a")
        assert log.count("started ") == 1 and "could start" not in log, log
        assert len(watchdogs_of(a.pid)) == 0
        proxy.set("a", Faults())
        second = wait_for(
            lambda: next((x for x in read_lines(out) if x.pid != first.pid), None),
            15,
            "the child never started again after the outage",
        )
        assert second.term > first.term
        time.sleep(1.0)
        log = procs.log("a")
        assert log.count("started ") == 2, log
        assert log.count("ran out before the child could start") == 0
        assert t_stopped - t_down < 1.5 + 0.5
        a.send_signal(signal.SIGTERM)
        assert a.wait(timeout=15) == 0, procs.log("a")
