"""Benchmarks of the health server and of cross-process ``is_leader``.

* **Health endpoint throughput.** ``wrk -t1 -c32`` over keep-alive HTTPS
  against ``GET /health/leadership/cluster`` served by fastelect's granian
  server, and against the *same handler* served by aiohttp's web server on
  uvloop (``aiohttp_health.py``), measured in the same run in interleaved
  rounds.  Targets (issue 3): >= 2.5x aiohttp's requests/s and p99 < 2.5 ms.
  The ratio is gated (in gate mode, fail only below half the target); p99 is
  reported.  Each wrk run lasts ``FASTELECT_BENCH_SECONDS`` (default 10 s,
  3 s in gate mode).  Nothing is pinned by default: wrk and the server share
  the machine as they would in production.  ``FASTELECT_BENCH_PIN=1`` puts
  the servers on CPU 0 and wrk on CPU 1 (``taskset``) for steadier figures
  on a noisy box, at granian's expense (its Rust I/O thread and its Python
  thread then share one CPU).  Without wrk the figures come from an aiohttp
  client load in a subprocess instead: reported, not gated (that client is
  slower than either server).
* **Cross-process is_leader.** ``attach(name).is_leader("cluster")`` -- a
  second, read-only mapping of the table, as any other process has -- against
  the pure-Python way to read the same shared word (``struct.unpack_from`` on
  an ``mmap`` of the segment, offset precomputed, compared with
  ``time.monotonic_ns()``).  Target: <= 100 ns median (reported); the ratio
  is gated at half of 2x.  The figure is confirmed from a separate process
  and set beside the in-process ``Slot.is_leader()`` (same cost class).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import shutil
import ssl
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchkit import GATE, Result, paired, record, rounds, unrolled
from fastelect import LeadershipTable, attach
from fastelect._core import HEADER_SIZE, SLOT_SIZE, Action, Campaign, monotonic_ns, shm_path
from fastelect.health import HealthServer, HealthServerConfig
from fastelect.tls import CertificateAuthority

PATH = "/health/leadership/cluster"
CONNECTIONS = 32
SECONDS = float(os.environ.get("FASTELECT_BENCH_SECONDS") or (3 if GATE else 10))
HERE = Path(__file__).resolve().parent
# Offset of lease_until_ns inside a slot (after the 8-byte seqlock word).
LEASE_OFFSET = 8
CALLS = 100
BLOCKS = 2000


def make_leader(table: LeadershipTable, election: str) -> Campaign:
    """Make this process lead ``election`` for an hour, through the real state machine."""
    slot = table.slot(election, "bench-node")
    now = monotonic_ns()
    hour = 3600 * 1_000_000_000
    c = Campaign(slot, "bench-node", "127.0.0.1:8443", hour, hour // 10, hour // 5, hour // 20)
    assert c.poll(now) == Action.READ
    c.observe_missing(now)
    c.poll(now)
    c.begin_write(now)
    c.write_succeeded(now, '"bench-etag"', time.time_ns())
    assert slot.is_leader()
    return c


def pin(pid: int, cpu: int) -> None:
    """Move every thread of ``pid`` to ``cpu``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(int(task.name), {cpu})


# Opt-in: pinning squeezes granian's two threads (Rust I/O + Python) onto one
# CPU, which costs it far more than it costs single-threaded aiohttp.
PINNED = (
    os.environ.get("FASTELECT_BENCH_PIN", "0") not in ("", "0")
    and sys.platform.startswith("linux")
    and len(os.sched_getaffinity(0)) >= 2
    and shutil.which("taskset") is not None
)


# --------------------------------------------------------------------------- #
# The two servers
# --------------------------------------------------------------------------- #


@dataclass
class Servers:
    """Both servers of the throughput benchmark, answering the same JSON."""

    granian_url: str
    aiohttp_url: str
    ca_pem: bytes
    pids: dict[str, list[int]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """A table where this process leads "cluster", granian and aiohttp serving it."""
    import uvloop

    name = f"bench{uuid.uuid4().hex[:12]}"
    table = LeadershipTable(name)
    make_leader(table, "cluster")
    ca = CertificateAuthority.create()
    cert = ca.issue(common_name="bench", ip_addresses=["127.0.0.1"])
    cert_path, key_path = cert.write_private(tmp_path_factory.mktemp("tls"))
    loop = uvloop.new_event_loop()
    server = HealthServer(HealthServerConfig("127.0.0.1:0", cert), name, {PATH: "cluster"})
    baseline: subprocess.Popen[str] | None = None
    try:
        loop.run_until_complete(server.start())
        baseline = subprocess.Popen(
            [sys.executable, str(HERE / "aiohttp_health.py"), name, str(cert_path), str(key_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert baseline.stdout is not None
        port = int(baseline.stdout.readline() or 0)
        assert port, f"the aiohttp baseline did not start (code {baseline.poll()})"
        assert server.pid is not None
        found = Servers(
            f"https://127.0.0.1:{server.port}{PATH}",
            f"https://127.0.0.1:{port}{PATH}",
            ca.cert_pem,
            {"granian": [server.pid, *server.worker_pids()], "aiohttp": [baseline.pid]},
        )
        if PINNED:
            for pid in (*server.worker_pids(), baseline.pid):
                pin(pid, 0)
        yield found
    finally:
        if baseline is not None:
            assert baseline.stdin is not None and baseline.stdout is not None
            baseline.stdin.close()
            try:
                baseline.wait(timeout=10)
            except subprocess.TimeoutExpired:
                baseline.kill()
                baseline.wait()
            baseline.stdout.close()
        loop.run_until_complete(server.stop())
        loop.close()
        table.close()


def get_json(url: str, ca_pem: bytes) -> tuple[int, dict[str, Any]]:
    """One verified HTTPS GET."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    with urllib.request.urlopen(url, context=ctx, timeout=5) as response:
        body: dict[str, Any] = json.load(response)
        return response.status, body


# --------------------------------------------------------------------------- #
# Load generators
# --------------------------------------------------------------------------- #

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass
class Load:
    """One load run's figures."""

    rps: float
    p99_ms: float
    non_2xx: int = 0
    errors: str = ""


def run_wrk(url: str, seconds: float) -> Load:
    """``wrk -t1 -c32 --latency`` against ``url`` for ``seconds``."""
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", url]
    if PINNED:
        cmd = ["taskset", "-c", "1", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    text = out.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    assert rps and p99, f"unexpected wrk output:\n{text}\n{out.stderr}"
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    return Load(
        float(rps.group(1)),
        float(p99.group(1)) * _UNITS[p99.group(2)],
        int(non_2xx.group(1)) if non_2xx else 0,
        errors.group(0) if errors else "",
    )


CLIENT_LOAD = """
import asyncio, json, ssl, sys, time
import aiohttp, uvloop

async def main(url, seconds, connections, ca):
    ctx = ssl.create_default_context(cadata=ca)
    latencies, bad = [], 0
    connector = aiohttp.TCPConnector(ssl=ctx, limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        end = time.perf_counter() + seconds

        async def worker():
            nonlocal bad
            while time.perf_counter() < end:
                start = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    bad += response.status != 200
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    print(json.dumps({"rps": len(latencies) / elapsed, "bad": bad,
                      "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3}))

uvloop.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
"""


def run_client_load(url: str, seconds: float, ca_pem: bytes) -> Load:
    """The fallback without wrk: an aiohttp client with 32 keep-alive connections."""
    out = subprocess.run(
        [sys.executable, "-c", CLIENT_LOAD, url, str(seconds), str(CONNECTIONS), ca_pem.decode()],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    data = json.loads(out.stdout)
    return Load(data["rps"], data["p99_ms"], data["bad"])


# --------------------------------------------------------------------------- #
# The benchmarks
# --------------------------------------------------------------------------- #


def test_health_endpoint_throughput(benchmark: Any, servers: Servers) -> None:
    # Correct first: both servers give the same 200 answer for the same lease.
    ours_status, ours_body = get_json(servers.granian_url, servers.ca_pem)
    base_status, base_body = get_json(servers.aiohttp_url, servers.ca_pem)
    assert ours_status == base_status == 200
    assert (
        ours_body.keys()
        == base_body.keys()
        == {
            "leaderID",
            "leaderAddr",
            "lastUpdated",
            "term",
            "etag",
        }
    )
    assert ours_body["leaderID"] == base_body["leaderID"] == "bench-node"

    have_wrk = shutil.which("wrk") is not None
    tool = f"wrk -t1 -c{CONNECTIONS}" if have_wrk else f"aiohttp client, {CONNECTIONS} conns"
    ours_runs: list[Load] = []
    base_runs: list[Load] = []

    def load(url: str) -> Load:
        if have_wrk:
            return run_wrk(url, SECONDS)
        return run_client_load(url, SECONDS, servers.ca_pem)

    def ours() -> float:
        ours_runs.append(load(servers.granian_url))
        return 1e6 / ours_runs[-1].rps

    def baseline() -> float:
        base_runs.append(load(servers.aiohttp_url))
        return 1e6 / base_runs[-1].rps

    ours_us, base_us, samples = paired(
        benchmark, ours, baseline, rounds=rounds(full=2, gate=1), warmup=0
    )
    for run in (*ours_runs, *base_runs):
        assert run.non_2xx == 0, f"non-200 answers under load: {run}"
    ours_rps = statistics.median(r.rps for r in ours_runs)
    base_rps = statistics.median(r.rps for r in base_runs)
    ours_p99 = statistics.median(r.p99_ms for r in ours_runs)
    base_p99 = statistics.median(r.p99_ms for r in base_runs)
    pinning = "servers on CPU 0, load on CPU 1" if PINNED else "unpinned"
    extra = {
        "tool": tool,
        "seconds": SECONDS,
        "pinning": pinning,
        "ours_rps": round(ours_rps),
        "baseline_rps": round(base_rps),
        "ours_p99_ms": ours_p99,
        "baseline_p99_ms": base_p99,
        "socket_errors": [r.errors for r in (*ours_runs, *base_runs) if r.errors],
        "note": (
            f"{tool}, {SECONDS:g}s x {samples}, {pinning}: granian {ours_rps:,.0f} req/s "
            f"p99 {ours_p99:.2f} ms; aiohttp {base_rps:,.0f} req/s p99 {base_p99:.2f} ms"
        ),
    }
    record(
        benchmark,
        Result(
            name="health GET (HTTPS keep-alive)",
            unit="us/req",
            ours=ours_us,
            baseline=base_us,
            baseline_name="aiohttp web on uvloop",
            target=2.5,
            # Without wrk the client is the bottleneck: the ratio means little.
            gated=have_wrk,
            extra=extra,
            samples=samples,
        ),
    )
    record(
        benchmark,
        Result(
            name="health GET p99 latency",
            unit="ms",
            ours=ours_p99,
            baseline=base_p99,
            baseline_name="aiohttp web on uvloop",
            gated=False,
            limit=2.5,
            samples=samples,
        ),
    )


SUBPROCESS_IS_LEADER = """
import statistics, sys, time
from fastelect import attach
reader = attach(sys.argv[1])
body = "".join("    s('cluster')\\n" for _ in range(100))
namespace = {}
exec("def block(s):\\n" + body, namespace)
block, fn = namespace["block"], reader.is_leader
assert fn("cluster")
figures = []
for _ in range(15):
    start = time.perf_counter_ns()
    for _ in range(2000):
        block(fn)
    figures.append((time.perf_counter_ns() - start) / 200_000)
print(statistics.median(figures))
"""


@pytest.fixture(scope="module")
def led_table() -> Iterator[LeadershipTable]:
    """A named table in which this process leads "cluster"."""
    table = LeadershipTable(f"benchil{uuid.uuid4().hex[:12]}")
    make_leader(table, "cluster")
    try:
        yield table
    finally:
        table.close()


def _per_call_ns(block: Any) -> float:
    start = time.perf_counter_ns()
    for _ in range(BLOCKS):
        block()
    return (time.perf_counter_ns() - start) / (BLOCKS * CALLS)


def test_cross_process_is_leader(benchmark: Any, led_table: LeadershipTable) -> None:
    assert led_table.name is not None
    reader = attach(led_table.name)  # its own read-only mapping, as another process has
    assert reader.is_leader("cluster")

    # The pure-Python way to read the same shared word: mmap + struct, offset precomputed.
    index = reader.elections().index("cluster")
    offset = HEADER_SIZE + index * SLOT_SIZE + LEASE_OFFSET
    with open(shm_path(led_table.name), "rb") as segment:
        mapped = mmap.mmap(segment.fileno(), 0, access=mmap.ACCESS_READ)
    unpack = struct.Struct("<q").unpack_from
    clock = time.monotonic_ns

    def python_is_leader() -> bool:
        return bool(clock() < unpack(mapped, offset)[0])

    assert python_is_leader()
    ours_block = unrolled("s('cluster')", reader.is_leader, CALLS)
    base_block = unrolled("s()", python_is_leader, CALLS)
    slot = led_table.slot("cluster")
    in_process = _per_call_ns(unrolled("s()", slot.is_leader, CALLS))
    try:
        ours_ns, base_ns, samples = paired(
            benchmark,
            lambda: _per_call_ns(ours_block),
            lambda: _per_call_ns(base_block),
            rounds=rounds(full=30, gate=10),
        )
    finally:
        mapped.close()
    other = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_IS_LEADER, led_table.name],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    other_ns = float(other.stdout)
    record(
        benchmark,
        Result(
            name="attach(name).is_leader()",
            unit="ns/call",
            ours=ours_ns,
            baseline=base_ns,
            baseline_name="mmap + struct read of the same word",
            target=2.0,
            limit=100.0,
            extra={
                "in_process_slot_ns": in_process,
                "separate_process_ns": other_ns,
                "note": (
                    f"from a separate process: {other_ns:.1f} ns/call; in-process "
                    f"Slot.is_leader(): {in_process:.1f} ns/call"
                ),
            },
            samples=samples,
        ),
    )
    assert reader.is_leader("cluster")
