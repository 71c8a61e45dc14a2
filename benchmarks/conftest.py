"""Fixtures and the summary table for fastelect's benchmarks.

Runs on its own (``pytest benchmarks``): the S3 benchmarks start their own
moto and SeaweedFS servers on loopback, like the test suite does, and the session's AWS
environment is dummy credentials only, so nothing can reach a real account.

``FASTELECT_BENCH_GATE=1`` selects CI's fast gate mode; see ``benchkit``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import benchkit
from benchkit import S3_BUCKET


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

# The test suite's helpers own the moto launcher and the dummy AWS environment;
# the benchmarks reuse them so both start S3 the same way.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import (  # noqa: E402
    MotoServer,
    SeaweedFSServer,
    boto3_client,
    dummy_aws_environment,
    weed_binary_or_skip,
)


@pytest.fixture(scope="session", autouse=True)
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy AWS credentials and region for the whole session, restored at the end."""
    with dummy_aws_environment(tmp_path_factory.mktemp("aws")):
        yield


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a moto S3 server on loopback with ``S3_BUCKET`` created.

    A separate process, so ``time.process_time()`` in the benchmark process
    counts the client's CPU only, never the server's.
    """
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        client = boto3_client("s3", server.url)
        try:
            client.create_bucket(Bucket=S3_BUCKET)
        finally:
            client.close()
        yield server.url


@pytest.fixture(scope="session")
def seaweedfs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a real SeaweedFS S3 gateway on loopback with ``S3_BUCKET`` created.

    A keep-alive server in Go, far cheaper per request than moto, in its own
    process group: the client's CPU is measured against a realistic server.
    """
    binary = weed_binary_or_skip()
    with SeaweedFSServer(binary, tmp_path_factory.mktemp("seaweedfs")) as server:
        client = server.client()
        try:
            client.create_bucket(Bucket=S3_BUCKET)
            # The bucket's first PUT waits for volumes to be grown; pay it here.
            client.put_object(Bucket=S3_BUCKET, Key="warm-up", Body=b"warm-up")
        finally:
            client.close()
        yield server.url
