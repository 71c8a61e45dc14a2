"""The ASGI recipe of docs/asgi.md under real uvicorn and gunicorn servers.

Two servers of ``examples/asgi_app.py``, each with two worker processes, share
one store (a FileStorage directory, or a bucket on the session's moto server):
exactly one worker of one server leads; SIGTERM to that server's master
releases the lock record within 2 s; the other server takes over within one
poll. The other server is paused (SIGSTOP) while the leader stops, so the
released record is there for the test to read, and its takeover is timed
from its resumption. docs/sync-apps.md's post_fork/worker_exit recipe
releases under gunicorn's sync worker but not under UvicornWorker. And the
workers of ``examples/asgi_host_app.py`` answer a ``fastelect run --shm``
sidecar's leadership.

Every server is started in a session of its own and its whole process group
is killed and reaped in teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fastelect.record import LockRecord, parse_record
from helpers import boto3_client, free_port, wait_for, wait_for_http

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
LOCK = "myapp-leader.json"
WORKERS = 2
#: infrequent_interval: a stable follower reads the record once per poll.
POLL = 0.5
TIMINGS = {
    "LOCK_FREQUENT_INTERVAL": "0.1",
    "LOCK_INFREQUENT_INTERVAL": str(POLL),
    "LOCK_LEADER_TIMEOUT": "2",
}
#: One read and one write on top of the poll, on a loaded two-core box.
STORAGE_ROUND_TRIP = 1.0


@dataclass
class Store:
    """Where the servers keep the lock: the environment they get and a reader of the record."""

    env: dict[str, str]
    read: Callable[[], bytes | None]

    def record(self) -> LockRecord | None:
        body = self.read()
        return None if body is None else parse_record(body)


def file_store(directory: Path, key: str) -> Store:
    """A FileStorage directory, made here, and a reader of ``key`` in it."""
    directory.mkdir()
    path = directory / key

    def read_file() -> bytes | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return data.split(b"\n", 1)[1]  # after FileStorage's header line

    return Store({"LOCK_DIR": str(directory)}, read_file)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return file_store(tmp_path / "store", LOCK)
    url: str = request.getfixturevalue("moto_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    prefix = f"asgi-{uuid.uuid4().hex}"
    client = boto3_client("s3", url)
    request.addfinalizer(client.close)

    def read_object() -> bytes | None:
        try:
            body: bytes = client.get_object(Bucket=bucket, Key=f"{prefix}/{LOCK}")["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
        return body

    env = {"LOCK_BUCKET": bucket, "LOCK_PREFIX": prefix, "AWS_ENDPOINT_URL": url}
    return Store(env, read_object)


def uvicorn_argv(port: int) -> list[str]:
    return [
        str(BIN / "uvicorn"),
        *("--app-dir", str(EXAMPLES), "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", str(WORKERS), "asgi_app:app"),
    ]


def gunicorn_argv(port: int) -> list[str]:
    return [
        str(BIN / "gunicorn"),
        *("--pythonpath", str(EXAMPLES), "-b", f"127.0.0.1:{port}"),
        *("-k", "uvicorn.workers.UvicornWorker", "-w", str(WORKERS), "asgi_app:app"),
    ]


SERVERS = {"uvicorn": uvicorn_argv, "gunicorn": gunicorn_argv}


class Server:
    """One server (master and workers) in a process group of its own, on a free port."""

    def __init__(
        self,
        argv: Callable[[int], list[str]],
        env: dict[str, str],
        log: Path,
        *,
        path: str = "/leader",
    ) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        for _attempt in range(3):  # another process may take the free port first
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with open(log, "ab") as out:
                self.proc = subprocess.Popen(
                    argv(port),
                    cwd=log.parent,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                wait_for_http(f"{self.url}{path}", timeout=60, proc=self.proc)
                return
            except AssertionError:
                self.kill()
                if b"in use" not in log.read_bytes():
                    raise AssertionError(f"{argv(port)[0]} did not serve:\n{self.tail()}") from None
        raise AssertionError(f"no free port after 3 attempts:\n{self.tail()}")

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # start_new_session: the master leads its group

    def owns(self, pid: int) -> bool:
        """Is ``pid`` one of this server's processes?"""
        try:
            return os.getpgid(pid) == self.pgid
        except ProcessLookupError:
            return False

    def members(self) -> set[int]:
        """The pids of this server's processes now (master and workers)."""
        pids = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if int(fields[2]) == self.pgid:  # state, ppid, pgrp, ...
                pids.add(int(stat.parent.name))
        return pids

    def leader(self) -> dict[str, Any]:
        """``GET /leader``, answered by whichever worker accepts the connection."""
        with urllib.request.urlopen(f"{self.url}/leader", timeout=5) as response:
            answer: dict[str, Any] = json.load(response)
            return answer

    def group_gone(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return True
        return False

    def tail(self, size: int = 4000) -> str:
        return self.log.read_bytes()[-size:].decode(errors="replace")

    def kill(self) -> None:
        """Kill and reap the whole process group (a no-op once it is gone)."""
        if self.proc is None:
            return
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
        self.proc.wait(timeout=30)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], Server]]:
    servers: list[Server] = []

    def start(kind: str, store_env: dict[str, str]) -> Server:
        # HOME: gunicorn's control socket lives in ~/.gunicorn; two servers must not share it.
        home = tmp_path / f"home-{len(servers)}"
        home.mkdir()
        env = {**os.environ, **TIMINGS, **store_env, "HOME": str(home)}
        env.pop("PYTHONPATH", None)
        server = Server(SERVERS[kind], env, tmp_path / f"{kind}-{len(servers)}.log")
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.kill()


def worker_pid(server_id: str) -> int:
    """The pid in the example's per-worker id, hostname-pid."""
    return int(server_id.rsplit("-", 1)[1])


def leading(store: Store) -> LockRecord | None:
    record = store.record()
    return record if record is not None and not record.released else None


def released_record(store: Store) -> LockRecord | None:
    record = store.record()
    return record if record is not None and record.released else None


def agrees(server: Server, leader_id: str) -> bool:
    """The answering worker knows ``leader_id`` leads, and leads itself only if it is that one."""
    answer = server.leader()
    if answer["leader_id"] != leader_id:
        return False
    me = answer["id"] == leader_id
    assert answer["is_leader"] is me, answer
    # The leader-only job runs in the leader's worker and nowhere else.
    return not me or answer["job_term"] == answer["term"]


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_one_server_leads_and_a_sigterm_hands_over(
    kind: str, store: Store, start_server: Callable[[str, dict[str, str]], Server]
) -> None:
    servers = [start_server(kind, store.env), start_server(kind, store.env)]
    first = wait_for(lambda: leading(store), 30, "no worker of either server took the lock")
    pid = worker_pid(first.leader_id)
    owners = [server for server in servers if server.owns(pid)]
    assert len(owners) == 1, f"{first.leader_id} belongs to {len(owners)} of the two servers"
    leader, follower = owners[0], next(s for s in servers if s is not owners[0])
    members = leader.members()
    # uvicorn's spawned workers come with multiprocessing's resource tracker.
    assert len(members) >= 1 + WORKERS, f"{kind} runs {members}: not a master and {WORKERS} workers"
    for server in servers:
        for _ in range(2 * WORKERS):  # whichever workers answer, each agrees
            wait_for(
                lambda server=server: agrees(server, first.leader_id),
                10,
                f"{server.url} does not know that {first.leader_id} leads",
                every=0.05,
            )

    # The follower holds still while the leader stops, so the released record
    # stays for the test to read: a running follower could take it over at its
    # next poll, before the test looked.
    os.killpg(follower.pgid, signal.SIGSTOP)
    try:
        signalled = time.monotonic()
        os.kill(leader.pgid, signal.SIGTERM)  # the master only, as a supervisor sends it
        released = wait_for(
            lambda: released_record(store),
            10,
            f"the record was not released after SIGTERM to {kind}'s master:\n{leader.tail()}",
        )
        took = time.monotonic() - signalled
        assert took <= 2.0, f"the record was released {took:.2f} s after SIGTERM, not within 2 s"
        # The leader's release, or that of a sibling worker that took the lock
        # while shutting down, and released it in turn.
        assert worker_pid(released.leader_id) in members, (members, released)
        assert released.term >= first.term, (first, released)
        assert leader.proc is not None
        leader.proc.wait(timeout=30)
        wait_for(leader.group_gone, 10, f"{kind}'s workers outlived their master")
        # A sibling worker still shutting down may have taken the lock meanwhile;
        # it released it too.
        gone = store.record()
        assert gone is not None and gone.released, f"not released once the server exited: {gone}"
    finally:
        os.killpg(follower.pgid, signal.SIGCONT)
    resumed = time.monotonic()
    log = leader.tail(20_000)
    assert "Application shutdown complete" in log and "Traceback" not in log, log

    new = wait_for(
        lambda: leading(store), POLL + 10, "no worker of the other server took over", every=0.005
    )
    took = time.monotonic() - resumed
    bound = POLL + STORAGE_ROUND_TRIP
    assert took <= bound, f"the other server took over {took:.2f} s after resuming (> {bound} s)"
    assert follower.owns(worker_pid(new.leader_id)), new
    assert new.term > gone.term, (gone, new)
    wait_for(
        lambda: agrees(follower, new.leader_id),
        10,
        f"{follower.url} does not know that {new.leader_id} leads",
        every=0.05,
    )


# docs/sync-apps.md's gunicorn recipe, with the store made a local directory.
POST_FORK_CONF = """
import os, socket
from fastelect import BackgroundElector, ElectorConfig, FileStorage

_elector = None
workers = 1

def post_fork(server, worker):
    global _elector
    config = ElectorConfig(
        "reports.json", server_id=f"{socket.gethostname()}-{os.getpid()}",
        frequent_interval=0.1, infrequent_interval=0.5, leader_timeout=30,
    )
    _elector = BackgroundElector(config, lambda: FileStorage(os.environ["LOCK_DIR"]))
    _elector.start()

def worker_exit(server, worker):
    if _elector is not None:
        _elector.stop()
"""

# A WSGI app for gunicorn's sync worker and an ASGI one for uvicorn's, both of one route.
APPS = """
def wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

async def asgi(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


@pytest.mark.parametrize(
    ("worker_class", "app", "releases"),
    [("sync", "wsgi", True), ("uvicorn.workers.UvicornWorker", "asgi", False)],
    ids=["sync", "uvicorn-worker"],
)
def test_the_post_fork_recipe_releases_under_sync_workers_only(
    worker_class: str, app: str, releases: bool, tmp_path: Path
) -> None:
    """What docs/asgi.md says: under UvicornWorker, worker_exit never runs.

    uvicorn re-raises SIGTERM after its own shutdown, so the worker dies by
    the signal, before gunicorn's worker_exit hook or atexit, and the lock
    waits out its lease (30 s here).
    """
    (tmp_path / "gunicorn.conf.py").write_text(POST_FORK_CONF)
    (tmp_path / "apps.py").write_text(APPS)
    store = file_store(tmp_path / "store", "reports.json")

    def argv(port: int) -> list[str]:
        return [
            str(BIN / "gunicorn"),
            *("-c", "gunicorn.conf.py", "--pythonpath", str(tmp_path)),
            *("-b", f"127.0.0.1:{port}", "-k", worker_class, f"apps:{app}"),
        ]

    env = {**os.environ, **store.env, "HOME": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    server = Server(argv, env, tmp_path / "gunicorn.log", path="/")
    try:
        held = wait_for(lambda: leading(store), 30, f"the worker never led:\n{server.tail()}")
        assert server.owns(worker_pid(held.leader_id)), held
        os.kill(server.pgid, signal.SIGTERM)
        assert server.proc is not None
        server.proc.wait(timeout=15)
        wait_for(server.group_gone, 10, "the worker outlived its master")
    finally:
        server.kill()
    after = store.record()
    assert after is not None and after.leader_id == held.leader_id, after
    assert after.released is releases, f"{worker_class}: released={after.released}\n{server.tail()}"


def host_app_argv(port: int) -> list[str]:
    return [
        str(BIN / "uvicorn"),
        *("--app-dir", str(EXAMPLES), "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", str(WORKERS), "asgi_host_app:app"),
    ]


def test_uvicorn_workers_read_the_host_elector(tmp_path: Path) -> None:
    """examples/asgi_host_app.py's workers answer the sidecar's leadership, and follow its stop."""
    name = f"asgi-{uuid.uuid4().hex[:10]}"
    store = file_store(tmp_path / "store", "leader.json")
    env = {**os.environ, "LOCK_SHM": name}
    env.pop("PYTHONPATH", None)
    sidecar = subprocess.Popen(
        [
            *(str(BIN / "fastelect"), "run", "--store", f"file://{tmp_path / 'store'}"),
            *("--id", "host-a", "--shm", name, "-q", "--leader-timeout", "2"),
            *("--frequent-interval", "0.1", "--infrequent-interval", "0.5"),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    server: Server | None = None
    try:
        server = Server(host_app_argv, env, tmp_path / "uvicorn.log")
        wait_for(lambda: leading(store), 30, "the sidecar never led")

        def answers(expected: bool) -> bool:
            """2 x WORKERS answers in a row say ``expected`` (a worker re-checks once a second)."""
            assert server is not None
            return all(server.leader()["is_leader"] is expected for _ in range(2 * WORKERS))

        wait_for(lambda: answers(True), 10, "the workers never saw the host's leadership")
        sidecar.send_signal(signal.SIGTERM)
        _, err = sidecar.communicate(timeout=30)
        assert sidecar.returncode == 0, err
        assert released_record(store), store.record()
        # No elector now: the closed table answers False, in every worker, at once.
        assert answers(False)
    finally:
        if server is not None:
            server.kill()
        if sidecar.poll() is None:
            os.killpg(sidecar.pid, signal.SIGKILL)
            sidecar.communicate()
    assert not Path(f"/dev/shm/fastelect.{name}").exists()
