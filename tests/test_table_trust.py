"""Whose leadership table is trusted: another local user cannot plant one.

``/dev/shm`` is world-writable, so any local user can create a segment of a
name an elector, a worker or a health server will look for.  Real processes
under a second uid (65534, "mallory") plant tables here; the victim is this
test process (root) and a worker under a third uid.  Root is needed to act
as other users; without it every test here skips.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastelect import (
    HostLeadership,
    LeadershipTable,
    UntrustedTableError,
    attach,
)
from fastelect._core import shm_path
from fastelect.health import HealthServer, HealthServerConfig
from fastelect.tls import CertificateAuthority, TLSCertificate
from health_helpers import lead, table_name

MALLORY = 65534
WORKER = 1  # "daemon": a worker of the app, neither root nor mallory
WAIT = 20.0
TESTS = str(Path(__file__).parent)

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root to run processes as other users (uid 65534, 1)"
    ),
    pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="POSIX shared memory is not here"),
]

# Imports first (python lives under /root, 0700), then become the user in argv.
_AS_USER = """
import json, os, sys
sys.path.insert(0, TESTS_DIR)
import pwd
import fastelect.table_gc
from fastelect import LeadershipTable, UntrustedTableError, attach
from health_helpers import lead
uid = int(sys.argv[1])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
"""

PLANT = (
    _AS_USER
    + """
name, mode = sys.argv[2], int(sys.argv[3], 8)
table = LeadershipTable(name, slots=1)
lead(table.slot("default", "mallory"), "mallory", "10.6.6.6:443")
os.chmod(table.path, mode)
print("ready", flush=True)
sys.stdin.read()
table.close()
"""
)

READ = (
    _AS_USER
    + """
name = sys.argv[2]
owner = int(sys.argv[3]) if len(sys.argv) > 3 else None
try:
    reader = attach(name, owner)
except UntrustedTableError as exc:
    print(json.dumps({"refused": str(exc), "owner_uid": exc.owner_uid, "mode": exc.mode}))
else:
    print(json.dumps({"leader": reader.is_leader("default")}))
"""
)


def script(text: str) -> str:
    return textwrap.dedent(text).replace("TESTS_DIR", repr(TESTS))


class Planted:
    """A table ``name`` created, led and chmod-ed by another user's process."""

    def __init__(self, name: str, *, uid: int = MALLORY, mode: int = 0o644) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script(PLANT), str(uid), name,
             f"{mode:o}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise AssertionError(f"the planting process failed: {self.proc.stderr.read()}")  # type: ignore[union-attr]

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
        Path(shm_path(self.name)).unlink(missing_ok=True)


@pytest.fixture
def planted() -> Iterator[Planted]:
    """Mallory's table, 0644, leading as "mallory" at 10.6.6.6:443."""
    table = Planted(table_name("evil"))
    try:
        yield table
    finally:
        table.stop()


def read_as(uid: int, name: str, owner: int | None = None) -> dict[str, object]:
    """What ``attach(name, owner)`` gives a process of ``uid``."""
    args = [str(uid), name] + ([] if owner is None else [str(owner)])
    result = subprocess.run(
        [sys.executable, "-c", script(READ), *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_attach_refuses_a_table_another_user_planted(planted: Planted) -> None:
    with pytest.raises(UntrustedTableError) as caught:
        attach(planted.name)
    err = caught.value
    assert (err.owner_uid, err.mode, err.name) == (MALLORY, 0o644, planted.name)
    assert err.path == shm_path(planted.name)
    assert f"owned by uid {MALLORY}" in str(err) and "mode 0644" in str(err)
    assert isinstance(err, PermissionError)

    # A worker of a third user is refused too (it used to answer True).
    worker = read_as(WORKER, planted.name)
    assert worker.get("owner_uid") == MALLORY and worker.get("mode") == 0o644, worker
    assert "leader" not in worker


def test_host_leadership_refuses_a_planted_table_and_says_why(
    planted: Planted, caplog: pytest.LogCaptureFixture
) -> None:
    leadership = HostLeadership(planted.name)
    assert leadership.is_leader() is False
    refused = leadership.refused
    assert refused is not None and (refused.owner_uid, refused.mode) == (MALLORY, 0o644)
    errors = [r for r in caplog.records if r.name == "fastelect.host" and r.levelname == "ERROR"]
    assert len(errors) == 1 and f"uid {MALLORY}" in errors[0].getMessage()


def test_a_named_owner_is_trusted(planted: Planted) -> None:
    # The sidecar layout may run the elector as another user: name it.
    with attach(planted.name, owner=MALLORY) as reader:
        assert reader.is_leader("default")
        assert (reader.owner_uid, reader.mode) == (MALLORY, 0o644)
    assert HostLeadership(planted.name, owner=MALLORY).is_leader()
    assert read_as(WORKER, planted.name, owner=MALLORY) == {"leader": True}
    # Naming one owner trusts that one only.
    with pytest.raises(UntrustedTableError):
        attach(planted.name, owner=WORKER)


def test_an_elector_whose_table_name_is_squatted_says_so(planted: Planted) -> None:
    with pytest.raises(UntrustedTableError) as caught:
        LeadershipTable(planted.name)
    message = str(caught.value)
    assert "squatted" in message and f"uid {MALLORY}" in message and "mode 0644" in message
    assert "in use" not in message
    assert Path(shm_path(planted.name)).exists(), "another user's segment was removed"


def test_the_run_sidecar_reports_a_squatted_table(planted: Planted, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fastelect.cli", "run", "--store", f"file://{tmp_path}",
         "--id", "victim", "--shm", planted.name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "squatted" in result.stderr and f"uid {MALLORY}" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("mode", "why"),
    [(0o666, "group and others"), (0o660, "its group"), (0o606, "others")],
)
def test_a_table_others_may_write_is_refused_unless_asked(mode: int, why: str) -> None:
    with LeadershipTable(table_name("wr"), slots=1) as table:
        lead(table.slot("default", "me"))
        assert table.path is not None
        os.chmod(table.path, mode)
        with pytest.raises(UntrustedTableError, match=f"writable by {why}, mode {mode:04o}"):
            attach(table.name)
        with attach(table.name, allow_writable=True) as reader:
            assert reader.is_leader("default")


def test_a_table_can_be_published_readable_to_others() -> None:
    with LeadershipTable(table_name("ro"), slots=1, mode=0o644) as table:
        assert table.path is not None
        assert os.stat(table.path).st_mode & 0o777 == 0o644
        lead(table.slot("default", "root"))
        # A worker of another user reads it, naming this owner.
        assert read_as(WORKER, table.name, owner=0) == {"leader": True}
        assert "refused" in read_as(WORKER, table.name)
    for bad in (0o666, 0o700, 0o400, 0o620):
        with pytest.raises(ValueError, match="mode"):
            LeadershipTable(table_name("bad"), mode=bad)


def test_a_named_group_is_trusted(planted: Planted) -> None:
    # Mallory's table has her group (65534): naming that group trusts its members.
    with attach(planted.name, group=MALLORY) as reader:
        assert reader.is_leader("default")
    assert HostLeadership(planted.name, group=MALLORY).is_leader()
    with pytest.raises(UntrustedTableError, match=f"owned by uid {MALLORY}.* and group {MALLORY}"):
        attach(planted.name, group=WORKER)


def test_a_prometheus_collector_refuses_a_planted_table(
    planted: Planted, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from fastelect.prometheus import LeadershipCollector

    def scrape(collector: LeadershipCollector) -> str:
        registry = CollectorRegistry()
        registry.register(collector)
        return generate_latest(registry).decode()

    refusing = LeadershipCollector(planted.name)
    text = scrape(refusing)
    assert "fastelect_table_attached 0.0" in text, text
    assert "mallory" not in text and "10.6.6.6" not in text
    refused = refusing.refused
    assert refused is not None and (refused.owner_uid, refused.mode) == (MALLORY, 0o644)
    scrape(refusing)  # logged once per owner and mode, not per scrape
    errors = [
        r for r in caplog.records if r.name == "fastelect.prometheus" and r.levelname == "ERROR"
    ]
    assert (
        len(errors) == 1
        and f"uid {MALLORY}" in errors[0].getMessage()
        and "0644" in errors[0].getMessage()
    )

    for trusting in (LeadershipCollector(planted.name, owner=MALLORY),
                     LeadershipCollector(planted.name, owner="nobody"),
                     LeadershipCollector(planted.name, group=MALLORY)):  # fmt: skip
        text = scrape(trusting)
        assert "fastelect_table_attached 1.0" in text, text
        assert 'fastelect_is_leader{election="default"} 1.0' in text, text
        assert trusting.refused is None
        trusting.close()


def test_collector_owner_and_group_are_checked() -> None:
    pytest.importorskip("prometheus_client")
    from fastelect.errors import ConfigError
    from fastelect.prometheus import LeadershipCollector

    for kwargs in ({"owner": -1}, {"owner": "no-such-user-here"}, {"owner": 1.5},
                   {"owner": True}, {"group": -1}, {"group": "no-such-group-here"},
                   {"group": True}):  # fmt: skip
        with pytest.raises(ConfigError):
            LeadershipCollector("x", **kwargs)  # type: ignore[arg-type]


def test_attach_owner_argument_is_checked() -> None:
    with pytest.raises(TypeError):
        attach("x", owner=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no such user"):
        attach("x", owner="no-such-user-here")
    with pytest.raises(ValueError, match="negative"):
        attach("x", owner=-1)
    with pytest.raises(TypeError):
        attach("x", group=True)
    with pytest.raises(ValueError, match="no such group"):
        attach("x", group="no-such-group-here")
    with pytest.raises(ValueError, match="negative"):
        attach("x", group=-1)


# -- the health server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture(scope="module")
def cert(ca: CertificateAuthority) -> TLSCertificate:
    return ca.issue(common_name="trust-test", ip_addresses=["127.0.0.1"])


def get(port: int, path: str, ca: CertificateAuthority) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.asyncio
async def test_a_health_server_refuses_a_planted_table(
    planted: Planted, cert: TLSCertificate
) -> None:
    server = HealthServer(
        HealthServerConfig("127.0.0.1:0", cert), planted.name, {"/health/leadership": "default"}
    )
    with pytest.raises(UntrustedTableError, match=f"owned by uid {MALLORY}"):
        await server.start()
    assert not server.running


@pytest.mark.asyncio
async def test_a_health_server_never_answers_for_a_table_planted_after_it_started(
    cert: TLSCertificate, ca: CertificateAuthority
) -> None:
    name = table_name("late")
    routes = {"/health/leadership": "default"}
    async with HealthServer(HealthServerConfig("127.0.0.1:0", cert), name, routes) as server:
        status, _ = get(server.port, "/health/leadership", ca)
        assert status == 404  # no table yet
        evil = Planted(name)
        try:
            status, body = await _eventually(server.port, "/health/leadership", ca, 503)
            assert b"not trusted" in body and f"uid {MALLORY}".encode() in body, body
            assert b"mallory" not in body
            status, body = get(server.port, "/healthz", ca)
            assert status == 503 and b"not trusted" in body
        finally:
            evil.stop()


@pytest.mark.asyncio
async def test_a_health_server_serves_a_named_owners_table(
    planted: Planted, cert: TLSCertificate, ca: CertificateAuthority
) -> None:
    config = HealthServerConfig("127.0.0.1:0", cert, table_owner=MALLORY)
    async with HealthServer(config, planted.name, {"/health/leadership": "default"}) as server:
        status, body = get(server.port, "/health/leadership", ca)
        assert status == 200 and json.loads(body)["leaderID"] == "mallory"


async def _eventually(
    port: int, path: str, ca: CertificateAuthority, want: int
) -> tuple[int, bytes]:
    import asyncio

    last: tuple[int, bytes] = (0, b"")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while loop.time() < deadline:
        last = await asyncio.to_thread(get, port, path, ca)
        if last[0] == want:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered {want}; last {last}")


@pytest.mark.asyncio
async def test_a_health_server_serves_a_named_groups_table(
    planted: Planted, cert: TLSCertificate, ca: CertificateAuthority
) -> None:
    config = HealthServerConfig("127.0.0.1:0", cert, table_group=MALLORY)
    async with HealthServer(config, planted.name, {"/health/leadership": "default"}) as server:
        status, body = get(server.port, "/health/leadership", ca)
        assert status == 200 and json.loads(body)["leaderID"] == "mallory"


def test_health_config_table_owner_is_checked(cert: TLSCertificate) -> None:
    from fastelect.errors import ConfigError

    assert HealthServerConfig(":0", cert, table_owner="root").table_owner_uid() == 0
    for bad in (-1, "no-such-user-here", 1.5, True):
        with pytest.raises(ConfigError, match="table_owner"):
            HealthServerConfig(":0", cert, table_owner=bad)  # type: ignore[arg-type]
    assert HealthServerConfig(":0", cert, table_group="root").table_group_gid() == 0
    for bad in (-1, "no-such-group-here", 1.5, True):
        with pytest.raises(ConfigError, match="table_group"):
            HealthServerConfig(":0", cert, table_group=bad)  # type: ignore[arg-type]
