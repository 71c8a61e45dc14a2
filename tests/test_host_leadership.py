"""fastelect.HostLeadership across real processes: lazy attach, elector restarts, bad names."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import fastelect
from fastelect import HostLeadership

# The host's elector: leads a FileStorage election, publishing into table NAME.
ELECTOR = textwrap.dedent(
    """
    import asyncio, sys
    from fastelect import Elector, ElectorConfig, FileStorage, LeadershipTable

    async def main():
        table = LeadershipTable(sys.argv[2])
        config = ElectorConfig("leader.json", server_id=sys.argv[3], leader_timeout=1.0,
                               frequent_interval=0.1, infrequent_interval=0.1)
        elector = Elector(config, FileStorage(sys.argv[1]), table=table)
        await elector.start()
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)

# A worker: prints every change of HostLeadership(NAME, ELECTION).is_leader().
WORKER = textwrap.dedent(
    """
    import json, logging, sys, time
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from fastelect import HostLeadership
    leadership = HostLeadership(sys.argv[1], sys.argv[2])
    last = None
    print(json.dumps({"ev": "ready"}), flush=True)
    while True:
        now = leadership.is_leader()
        if now != last:
            print(json.dumps({"leader": now}), flush=True)
            last = now
        time.sleep(0.005)
    """
)


class Proc:
    """A child process in its own group, killed with it on exit."""

    def __init__(self, *argv: str, stderr: Path | None = None) -> None:
        self.err = open(stderr, "wb") if stderr else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", *argv],
            stdout=subprocess.PIPE,
            stderr=self.err,
            start_new_session=True,
        )
        self.buffer = b""

    def line(self, timeout: float = 15.0) -> dict[str, object]:
        """The next JSON line, within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line from the child within {timeout} s")
            chunk = os.read(fd, 4096)
            assert chunk, "the child exited"
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\n", 1)
        return dict(json.loads(raw))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.err is not subprocess.DEVNULL:
            self.err.close()


@pytest.fixture
def table_name() -> Iterator[str]:
    name = f"hl-{uuid.uuid4().hex[:12]}"
    yield name
    path = fastelect._core.shm_path(name)
    if os.path.exists(path):
        os.unlink(path)


def test_a_worker_follows_the_host_elector_through_a_sigkill_and_a_new_table(
    tmp_path: Path, table_name: str
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    worker = Proc(WORKER, table_name, "default")
    elector: Proc | None = None
    try:
        assert worker.line() == {"ev": "ready"}
        assert worker.line() == {"leader": False}  # no elector yet: no table
        elector = Proc(ELECTOR, str(store), table_name, "host-a")
        assert worker.line() == {"leader": True}, "the worker never saw the elector lead"
        elector.kill()  # no release: the lease runs out in the table by itself
        assert worker.line(timeout=5) == {"leader": False}
        # A new incarnation makes a new table of the same name; the worker re-attaches.
        elector = Proc(ELECTOR, str(store), table_name, "host-b")
        assert worker.line(timeout=20) == {"leader": True}, "no re-attach after the restart"
    finally:
        worker.kill()
        if elector is not None:
            elector.kill()


def test_an_election_the_table_does_not_hold_is_reported_once(
    tmp_path: Path, table_name: str
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    elector = Proc(ELECTOR, str(store), table_name, "host-a")
    worker: Proc | None = None
    try:
        deadline = time.monotonic() + 15
        while not HostLeadership(table_name).is_leader():
            assert time.monotonic() < deadline, "the elector never led"
            time.sleep(0.02)
        log = tmp_path / "worker.err"
        worker = Proc(WORKER, table_name, "reports", stderr=log)
        assert worker.line() == {"ev": "ready"}
        assert worker.line() == {"leader": False}
        time.sleep(2.5)  # two more re-checks: the warning must not repeat
        worker.kill()
        text = log.read_text()
        assert text.count("holds no election 'reports'") == 1, text
        assert "it holds 'default'" in text, text
    finally:
        if worker is not None:
            worker.kill()
        elector.kill()


def test_bad_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError):
        HostLeadership("")
    with pytest.raises(TypeError):
        HostLeadership("name", election="")
