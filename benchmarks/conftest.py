"""Fixtures and the summary table for fastelect's benchmarks.

Runs on its own (``pytest benchmarks``): the S3 benchmarks start their own
moto server on loopback, like the test suite does, and the session's AWS
environment is dummy credentials only, so nothing can reach a real account.

``FASTELECT_BENCH_GATE=1`` selects CI's fast gate mode; see ``benchkit``.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

import benchkit
from benchkit import S3_BUCKET, S3_REGION


def pytest_report_header(config: pytest.Config) -> str:
    mode = "gate (fast; fail below half a target)" if benchkit.GATE else "full (report only)"
    return f"fastelect benchmarks: {mode} mode (FASTELECT_BENCH_GATE)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = benchkit.summary_lines()
    if not lines:
        return
    terminalreporter.write_sep("=", "fastelect benchmark summary")
    for line in lines:
        terminalreporter.write_line(line)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh event loop for one benchmark: uvloop, as the CLI and demo run, if available."""
    try:
        import uvloop
    except ImportError:  # platforms without uvloop: the stdlib loop
        new_loop = asyncio.new_event_loop()
    else:
        new_loop = uvloop.new_event_loop()
    try:
        yield new_loop
    finally:
        # Let cancelled tasks and closing transports finish before closing.
        new_loop.run_until_complete(asyncio.sleep(0))
        new_loop.run_until_complete(new_loop.shutdown_asyncgens())
        new_loop.close()


# -- S3: a real moto server ----------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy AWS credentials and region for the whole session, restored at the end."""
    missing = tmp_path_factory.mktemp("aws") / "absent"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", S3_REGION)
        mp.setenv("AWS_REGION", S3_REGION)
        # Never read the developer's ~/.aws or ask an instance metadata service.
        mp.setenv("AWS_CONFIG_FILE", str(missing))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(200 <= response.status < 300)
    except (OSError, urllib.error.URLError):
        return False


def _start_moto(log: BinaryIO) -> tuple[subprocess.Popen[bytes], str] | None:
    """Start ``moto.server`` on a free loopback port; None if it did not come up."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        if _answers(f"{url}/moto-api/config"):
            return proc, url
        time.sleep(0.05)
    _stop(proc)
    return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a moto S3 server on loopback with ``S3_BUCKET`` created.

    A separate process, so ``time.process_time()`` in the benchmark process
    counts the client's CPU only, never the server's.
    """
    import boto3

    log_path: Path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "ab") as log:
        # Another process can take a free port before moto binds it: try a few.
        started = _start_moto(log) or _start_moto(log) or _start_moto(log)
        if started is None:
            tail = log_path.read_bytes()[-4000:].decode(errors="replace")
            pytest.fail(f"moto server did not start; its log:\n{tail}")
        proc, url = started
        try:
            client = boto3.client("s3", endpoint_url=url, region_name=S3_REGION)
            try:
                client.create_bucket(Bucket=S3_BUCKET)
            finally:
                client.close()
            yield url
        finally:
            _stop(proc)
