"""The demo's process nodes: a node the demo stops is never reported as failed."""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fastelect.cli._view import LiveView
from fastelect.cli.demo import _Demo, _Node, _ProcessNode
from fastelect.cli.stores import parse_store_url
from fastelect.config import ElectorConfig

# Closes its stdout as soon as it is asked to stop, then takes its time to exit:
# the demo's reader sees EOF long before the process is gone, the order in which
# a fast machine usually sees them too.
_SLOW_TO_EXIT = textwrap.dedent(
    """
    import os, signal, sys, time
    def on_term(*_):
        os.close(1)
        time.sleep(0.3)
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    print('{"ev": "ready"}', flush=True)
    while True:
        time.sleep(1)
    """
)


@pytest.mark.asyncio
async def test_a_node_being_stopped_never_shows_as_exited(tmp_path: Path) -> None:
    node = _Node("node-1")
    ready = asyncio.Event()

    def on_event(_node: _Node, ev: str, _message: dict[str, Any]) -> None:
        if ev == "ready":
            ready.set()

    with open(tmp_path / "node-1.log", "ab") as log:
        handle = _ProcessNode(node, [sys.executable, "-c", _SLOW_TO_EXIT], log, on_event)
        await handle.start()
        async with asyncio.timeout(10):
            await ready.wait()
        seen: set[str] = set()
        stopping = asyncio.get_running_loop().create_task(handle.stop(grace=5.0))
        while not stopping.done():  # what the demo's _until loop would see meanwhile
            seen.add(node.role)
            await asyncio.sleep(0.005)
        await stopping
    assert "exited" not in seen, f"a node the demo stopped looked failed: roles seen {seen}"
    assert node.role == "stopped"


@pytest.mark.asyncio
async def test_a_node_that_exits_by_itself_is_reported_with_its_log(tmp_path: Path) -> None:
    node = _Node("node-1")
    with open(tmp_path / "node-1.log", "ab") as log:
        handle = _ProcessNode(node, [sys.executable, "-c", "pass"], log, lambda *_: None)
        await handle.start()
        async with asyncio.timeout(10):
            while node.role != "exited":
                await asyncio.sleep(0.005)
        await handle.stop(grace=1.0)
    # Stopping what already failed keeps the failure: the report prints its log.
    assert node.role == "exited"


def test_the_failure_report_shows_a_failed_node_even_with_an_empty_log(tmp_path: Path) -> None:
    demo = _Demo(
        parse_store_url(f"file://{tmp_path / 'store'}", create=True),
        "leader.json",
        ElectorConfig(server_id="demo", lockfile_path="leader.json"),
        2,
        10.0,
        LiveView(io.StringIO()),
        tmp_path,
    )
    failed, calm = demo.nodes
    failed.role, calm.role = "exited", "stopped"
    (tmp_path / f"{failed.name}.log").write_bytes(b"")
    (tmp_path / f"{calm.name}.log").write_bytes(b"")
    report = demo.log_tails()
    assert f"--- {failed.name} (exited) ---" in report
    assert "its log is empty" in report
    assert calm.name not in report  # nothing to say about a node that did not fail


def test_demo_help_names_the_default_lock() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastelect.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done
    assert "fastelect-demo/leader.json" in "".join(done.stdout.split()), done.stdout


def test_storage_timeout_flag_reaches_the_config_and_names_itself_in_errors() -> None:
    from fastelect.cli import _util

    parser = argparse.ArgumentParser()
    _util.add_timing_args(parser, lease=15.0, frequent=5.0, infrequent=30.0)
    args = parser.parse_args(["--storage-timeout", "5"])
    config = _util.elector_config(args, lockfile_path="x.json", server_id="a")
    assert config.storage_timeout == 5.0
    default = _util.elector_config(parser.parse_args([]), lockfile_path="x.json", server_id="a")
    assert default.storage_timeout == 2.0  # min(2, T / 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--storage-timeout", "0"])


def test_run_accepts_storage_timeout() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastelect.cli", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--storage-timeout" in done.stdout, done
