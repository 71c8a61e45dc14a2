"""Leadership tables across PID namespaces: the documented pod layout, for real.

An elector sidecar and an app in separate containers share ``/dev/shm`` but
not a PID namespace.  Here ``unshare --pid --fork --mount-proc`` puts one
side in a PID namespace of its own (with its own ``/proc``), where the other
side's pid means nothing, and where a process is PID 1.  Liveness must come
from the owner's lock, which the kernel shows to both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastelect import LeadershipTable, attach, table_gc
from fastelect._core import shm_path
from fastelect.tls import CertificateAuthority
from health_helpers import table_name
from helpers import wait_for

WAIT = 30.0
TESTS = str(Path(__file__).parent)
UNSHARE = shutil.which("unshare")


def _unshare_problem() -> str | None:
    if UNSHARE is None:
        return "util-linux unshare is not installed"
    if not os.path.isdir("/dev/shm"):
        return "POSIX shared memory is not a directory here"
    try:
        probe = subprocess.run(
            [UNSHARE, "--pid", "--fork", "--mount-proc", "true"],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --pid --fork --mount-proc failed: {exc}"
    if probe.returncode != 0:
        return (
            "cannot make a PID namespace here (unprivileged, or no user namespaces): "
            + probe.stderr.strip()
        )
    return None


_PROBLEM = _unshare_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=_PROBLEM or "")


def in_new_pid_ns(*argv: str) -> list[str]:
    """``argv`` as PID 1 of a PID namespace of its own (killed with its unshare)."""
    assert UNSHARE is not None
    return [UNSHARE, "--pid", "--fork", "--mount-proc", "--kill-child", *argv]


def python(text: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        textwrap.dedent(text).replace("TESTS_DIR", repr(TESTS)),
        *args,
    ]


OWNER = """
import os, sys
sys.path.insert(0, TESTS_DIR)
from health_helpers import lead
from fastelect import LeadershipTable
table = LeadershipTable(sys.argv[1], slots=1)
lead(table.slot("default", "owner"), "owner", "10.0.0.1:8443")
print(os.getpid(), flush=True)
sys.stdin.read()
table.close()
"""


class Owner:
    """A process that creates table ``name``, leads in it and holds it."""

    def __init__(self, name: str, *, own_namespace: bool) -> None:
        argv = python(OWNER, name)
        self.proc = subprocess.Popen(
            in_new_pid_ns(*argv) if own_namespace else argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise AssertionError(f"the table owner did not start: {self.proc.stderr.read()}")  # type: ignore[union-attr]
        #: Its pid as it sees it (1 in a namespace of its own).
        self.pid = int(line)

    def kill(self) -> None:
        """SIGKILL the owner's unshare (and so, soon, its namespace), leaving its table."""
        self.proc.kill()
        # Reaped before stdin closes: closing it first races the kill, and an
        # owner that reads EOF in time closes (and removes) its table itself.
        # Once unshare is gone, its child has SIGKILL pending (--kill-child).
        self.proc.wait(timeout=WAIT)
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(timeout=WAIT)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()


@pytest.fixture
def name() -> Iterator[str]:
    n = table_name("ns")
    yield n
    Path(shm_path(n)).unlink(missing_ok=True)


# Run in the other namespace: what the app's side sees of the table.  The
# sweep is limited to this one table (the test suite's other tables are not
# this test's to judge), through the same steps remove_stale_tables takes.
PROBE = """
import json, os, sys, time
from fastelect import HostLeadership, attach, table_gc
from fastelect._core import shm_path
name = sys.argv[1]
reader = attach(name)
out = {
    "my_pid": os.getpid(),
    "owner_pid": reader.owner_pid,
    "alive": reader.owner_alive,
    "stale": reader.stale,
    "leader": reader.is_leader("default"),
    "host_leadership": HostLeadership(name).is_leader(),
}
[info] = [i for i in table_gc.list_tables() if i.name == name]
out["state"] = info.state
out["removed"] = info.stale and table_gc._remove(table_gc.SHM_DIR, info)
out["exists"] = os.path.exists(shm_path(name))
# PID 1 here forks: the child's inherited reader still answers for the owner
# (PID 1 of another namespace), as any reader of another process's table.
pid = os.fork()
if pid == 0:
    os._exit(0 if reader.is_leader("default") else 1)
out["child_leader"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
print(json.dumps(out))
"""


def probe_in_new_pid_ns(name: str) -> dict[str, object]:
    result = subprocess.run(
        in_new_pid_ns(*python(PROBE, name)),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_a_live_table_is_live_from_another_pid_namespace(name: str) -> None:
    owner = Owner(name, own_namespace=False)
    try:
        seen = probe_in_new_pid_ns(name)
        assert seen["my_pid"] == 1, seen
        # The owner's pid does not exist in that namespace: only its lock tells.
        assert seen["owner_pid"] == owner.pid
        assert seen["alive"] is True and seen["stale"] is False, seen
        assert seen["leader"] is True and seen["host_leadership"] is True, seen
        assert seen["state"] == "live" and seen["removed"] is False, seen
        assert seen["exists"] is True, "the sweep removed a live table"
    finally:
        owner.stop()


def test_a_reader_that_is_pid_1_forks_and_still_reads_a_pid_1_owners_table(name: str) -> None:
    # Both sides are PID 1 of their own namespaces: the fork guard must not
    # take the owner's table for the reader's own because the pids match.
    owner = Owner(name, own_namespace=True)
    try:
        assert owner.pid == 1
        seen = probe_in_new_pid_ns(name)
        assert (seen["my_pid"], seen["owner_pid"]) == (1, 1)
        assert seen["leader"] is True and seen["child_leader"] is True, seen
    finally:
        owner.stop()


def test_a_dead_owner_in_another_pid_namespace_is_stale_and_swept(name: str) -> None:
    owner = Owner(name, own_namespace=True)
    try:
        with attach(name) as reader:
            assert reader.owner_pid == 1 and reader.owner_alive and not reader.stale
            owner.kill()  # its unshare; the kernel then kills the namespace's PID 1
            # PID 1 is alive here (this namespace's init): only the lock tells.
            wait_for(lambda: reader.stale, WAIT, "the dead owner's table never turned stale")
            assert not reader.owner_alive
            assert Path(shm_path(name)).exists()  # SIGKILL leaves it behind
        [info] = [i for i in table_gc.list_tables() if i.name == name]
        assert (info.state, info.liveness, info.owner_pid) == ("dead owner", "lock", 1)
        assert table_gc._remove(table_gc.SHM_DIR, info)
        assert not Path(shm_path(name)).exists()
        # ... and a new owner of the name replaces a dead one at once.
        again = Owner(name, own_namespace=True)
        again.kill()
        with attach(name) as old:
            wait_for(lambda: old.stale, WAIT, "the second dead owner's table never turned stale")
        with LeadershipTable(name, slots=1) as table:
            assert attach(name).token == table.token
    finally:
        owner.stop()


HEALTH = """
import asyncio, json, os, ssl, sys, urllib.error, urllib.request
from fastelect.health import HealthServer, HealthServerConfig
from fastelect.tls import TLSCertificate

async def main(name, cert_path, key_path, ca_path):
    cert = TLSCertificate.from_files(cert_path, key_path)
    ctx = ssl.create_default_context(cafile=ca_path)
    routes = {"/health/leadership": "default"}
    async with HealthServer(HealthServerConfig("127.0.0.1:0", cert), name, routes) as server:
        url = f"https://127.0.0.1:{server.port}/health/leadership"
        def get():
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
        status, body = await asyncio.to_thread(get)
        print(json.dumps({"my_pid": os.getpid(), "status": status, "body": body}))

asyncio.run(main(*sys.argv[1:]))
"""


def test_a_health_server_in_another_pid_namespace_answers_for_a_live_table(
    name: str, tmp_path: Path
) -> None:
    ca = CertificateAuthority.create()
    cert = ca.issue(common_name="pidns", ip_addresses=["127.0.0.1"])
    cert_path, key_path = cert.write_private(str(tmp_path), name="health")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.cert_pem)
    owner = Owner(name, own_namespace=False)
    try:
        result = subprocess.run(
            in_new_pid_ns(*python(HEALTH, name, str(cert_path), str(key_path), str(ca_path))),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        assert answer["my_pid"] == 1
        assert answer["status"] == 200, answer
        assert json.loads(answer["body"])["leaderID"] == "owner"
    finally:
        owner.stop()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(x) for x in text)
    return found


def test_two_sidecars_that_are_each_pid_1_do_not_collide(tmp_path: Path) -> None:
    # Two pods' sidecars on one host, each PID 1 of its container, with the
    # default table name: it used to be run-1 for both, and the second
    # exited 1 ("in use by live process 1").
    (tmp_path / "store").mkdir()
    store = f"file://{tmp_path / 'store'}"
    out = tmp_path / "out"
    out.mkdir()
    timing = ["--leader-timeout", "1", "--frequent-interval", "0.2", "--safety-margin", "0.1"]
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    try:
        for node, log in zip(("a", "b"), logs, strict=True):
            with open(log, "wb") as sink:
                argv = [sys.executable, "-m", "fastelect.cli", "run", "--store", store]
                argv += ["--id", node, "--lock", "job.json", *timing, "--"]
                argv += ["sh", "-c", f'echo "$$ $FASTELECT_SHM" > {out}/{node}; exec sleep 60']
                procs.append(
                    subprocess.Popen(in_new_pid_ns(*argv), stdout=sink, stderr=subprocess.STDOUT)
                )
        tables = []
        for log in logs:
            found = wait_for(
                lambda log=log: re.search(
                    r"publishing the leadership in table (\S+)", log.read_text()
                ),
                WAIT,
                f"no table published: {log.read_text()}",
            )
            tables.append(found.group(1))
        assert tables[0] != tables[1]
        for table in tables:
            assert Path(shm_path(table)).exists()
            assert not table.endswith("-1")
        # One of them leads and runs the command; both keep running.
        leader = wait_for(lambda: [p.name for p in out.iterdir()], WAIT, "no command started")
        assert len(leader) == 1
        time.sleep(1.0)
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, log.read_text()
        for proc in procs:
            sidecars = _children(proc.pid)
            assert len(sidecars) == 1
            os.kill(sidecars[0], signal.SIGTERM)
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(timeout=WAIT) == 0, log.read_text()
        for table in tables:
            assert not Path(shm_path(table)).exists(), "a stopped sidecar left its table"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=WAIT)
