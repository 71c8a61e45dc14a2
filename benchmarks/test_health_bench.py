"""Benchmarks of the health server and of cross-process ``is_leader``.

* **Health endpoint throughput.**  ``wrk -t1`` over keep-alive HTTPS against
  ``GET /health/leadership/cluster`` served by fastelect's granian server
  and, in the same run and interleaved rounds, by: the same handler on
  aiohttp's web server on uvloop (``aiohttp_health.py``); **bare granian with
  the same flags** answering constant bytes (``granian_floor.py``, launched by
  fastelect's own launcher: the floor any handler sits on); and, where a Go
  toolchain is installed, a stdlib Go net/http server (``go_health/``, a local
  anchor: CI has no Go).  Targets (issues 3 and 9): >= 2.5x aiohttp's
  requests/s (gated at half), >= 0.95x the floor's (gated at half) and
  >= 0.9x Go's (reported), p99 no worse than Go's, c1 p50 within 1.1x of the
  floor's; requests per CPU-second of the server's processes (from /proc) and
  the load average are reported beside every figure, since wall-clock
  throughput on a shared 2-core box says more about the neighbours.  The
  health processes' memory is reported against the floor's after the load
  (limit 30 MB RSS per process, issue 9): RSS, PSS, and RSS split into
  anonymous (the process's own heap, plus what a forked worker inherits)
  and file-backed (mapped code and data of the interpreter and the shared
  libraries: a figure that also depends on how the kernel cached those
  files, identical for ours and the floor, which map the same files).  The
  floor runs bare (``"lean": false``): fastelect's launcher and flags and a
  constant handler, with Python's ssl and OpenSSL loaded as granian and uvloop
  load them -- what the health processes weighed before they kept those out.
  Each wrk run lasts ``FASTELECT_BENCH_SECONDS`` (default 10 s,
  3 s in gate mode); c1 runs last half that.  Nothing is pinned by default:
  wrk and the server share the machine as they would in production.
  ``FASTELECT_BENCH_PIN=1`` puts the servers on CPU 0 and wrk on CPU 1
  (``taskset``) for steadier figures on a noisy box, at granian's expense
  (its Rust I/O thread and its Python thread then share one CPU).  Without
  wrk the figures come from an aiohttp client load in a subprocess instead:
  reported, not gated (that client is slower than any server).
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
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
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
# Gate mode: three short rounds, whose median the gate reads (one 3 s round
# spread 0.7-1.2x of the reference ratio; see benchmarks/reference.json).
SECONDS = float(os.environ.get("FASTELECT_BENCH_SECONDS") or (2 if GATE else 10))
#: The c1 latency runs: half as long, in whole seconds (what wrk accepts).
C1_SECONDS = float(max(1, round(SECONDS / 2)))
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
# The servers
# --------------------------------------------------------------------------- #


@dataclass
class Served:
    """One server under load: where it answers and which processes serve it."""

    url: str
    #: The process that was started; the server's processes are it and its children.
    pid: int

    def pids(self) -> list[int]:
        """The serving process and its children (granian's workers)."""
        return [self.pid, *children(self.pid)]


@dataclass
class Servers:
    """The servers of the throughput benchmark, answering the same JSON.

    ``ours``: fastelect's HealthServer; ``aiohttp``: the same handler on
    aiohttp; ``floor``: granian with the same flags and a constant answer;
    ``go``: a Go net/http server (only where a Go toolchain is installed).
    """

    by_name: dict[str, Served]
    ca_pem: bytes
    server: HealthServer
    notes: list[str] = field(default_factory=list)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if stat[stat.rfind(")") + 2 :].split()[1] == str(pid):
                    found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by ``pids``."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Footprint:
    """One process's memory in MB (Linux /proc)."""

    #: Resident pages, shared ones counted in full: ``anon + file + shmem``.
    rss: float
    #: Proportional share: each shared page divided among the processes mapping it.
    pss: float
    #: Resident anonymous memory: heaps, stacks, and pages inherited over fork.
    anon: float
    #: Resident pages of mapped files: the interpreter, extension modules, libraries.
    file: float

    def __str__(self) -> str:
        return (
            f"RSS {self.rss:.1f} (anon {self.anon:.1f} + file {self.file:.1f}) PSS {self.pss:.1f}"
        )


def footprint(pid: int) -> Footprint:
    """``pid``'s :class:`Footprint` (zeros if it is gone)."""
    kb = dict.fromkeys(("VmRSS", "RssAnon", "RssFile", "Pss"), 0)
    for source in ("status", "smaps_rollup"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in kb:
                    kb[key] = int(value.split()[0])
    mb = {k: v / 1024 for k, v in kb.items()}
    return Footprint(mb["VmRSS"], mb["Pss"], mb["RssAnon"], mb["RssFile"])


def roles(pids: list[int]) -> dict[str, int]:
    """A granian server's pids by role: its main process first, then its workers."""
    main, *workers = pids
    named = {"main": main}
    named.update(
        {f"worker{i + 1}" if len(workers) > 1 else "worker": w for i, w in enumerate(workers)}
    )
    return named


def wait_port(process: subprocess.Popen[str], what: str) -> int:
    """The port a baseline prints as its first line."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip().isdigit(), f"{what} did not start (code {process.poll()}): {line!r}"
    return int(line)


def stop_baseline(process: subprocess.Popen[str]) -> None:
    """Close a baseline's stdin (its signal to exit) and reap it."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()


def start_floor(
    cert_path: Path, key_path: Path, workdir: Path
) -> tuple[subprocess.Popen[str], int]:
    """granian with the health server's flags, serving ``granian_floor:app``, bare."""
    from fastelect.health._process import ENV_SETTINGS

    port = free_port()
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "workers": 1,
        "dir": str(workdir),
        "cert": str(cert_path),
        "key": str(key_path),
        "parent_pid": os.getpid(),
        "log_level": "warning",
        "target": "granian_floor:app",
        "factory": False,
        # Bare: Python's ssl stays in, as granian has it (see the module docs).
        "lean": False,
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    env[ENV_SETTINGS] = json.dumps(settings)
    log = open(workdir / "floor.log", "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(
        [sys.executable, "-m", "fastelect.health._process"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        text=True,
    )
    log.close()
    ctx = ssl._create_unverified_context()
    end = time.monotonic() + 30
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                ctx.wrap_socket(raw) as tls,
            ):
                tls.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                if tls.recv(16).startswith(b"HTTP/1.1 200"):
                    return process, port
        except OSError:
            pass
        assert process.poll() is None, (
            f"the granian floor exited (code {process.returncode}): "
            f"{(workdir / 'floor.log').read_text()[-2000:]}"
        )
        assert time.monotonic() < end, "the granian floor did not answer within 30 s"
        time.sleep(0.02)


def free_port() -> int:
    """A free loopback port (granian binds it right after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_go(
    cert_path: Path, key_path: Path, workdir: Path
) -> tuple[subprocess.Popen[str] | None, str]:
    """Build and start the Go anchor, or (None, why not)."""
    go = shutil.which("go")
    if go is None:
        return None, "no Go toolchain on this machine: Go's anchor not measured"
    binary = workdir / "go_health"
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    env.setdefault("GOCACHE", str(workdir / "gocache"))
    built = subprocess.run(
        [go, "build", "-o", str(binary), "."],
        cwd=HERE / "go_health",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if built.returncode != 0:
        return None, f"go build failed: {built.stderr.strip()[-500:]}"
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    process = subprocess.Popen(
        [str(binary), str(cert_path), str(key_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return process, version


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """A table where this process leads "cluster", and every server answering from it."""
    import uvloop

    name = f"bench{uuid.uuid4().hex[:12]}"
    table = LeadershipTable(name)
    make_leader(table, "cluster")
    ca = CertificateAuthority.create()
    cert = ca.issue(common_name="bench", ip_addresses=["127.0.0.1"])
    workdir = tmp_path_factory.mktemp("health-bench")
    cert_path, key_path = cert.write_private(workdir)
    loop = uvloop.new_event_loop()
    server = HealthServer(HealthServerConfig("127.0.0.1:0", cert), name, {PATH: "cluster"})
    baselines: list[subprocess.Popen[str]] = []
    floor: subprocess.Popen[str] | None = None
    try:
        loop.run_until_complete(server.start())
        assert server.pid is not None
        by_name = {"ours": Served(f"https://127.0.0.1:{server.port}{PATH}", server.pid)}
        aio = subprocess.Popen(
            [sys.executable, str(HERE / "aiohttp_health.py"), name, str(cert_path), str(key_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        baselines.append(aio)
        port = wait_port(aio, "the aiohttp baseline")
        by_name["aiohttp"] = Served(f"https://127.0.0.1:{port}{PATH}", aio.pid)
        floor, port = start_floor(cert_path, key_path, workdir)
        by_name["floor"] = Served(f"https://127.0.0.1:{port}{PATH}", floor.pid)
        notes = []
        go, go_note = start_go(cert_path, key_path, workdir)
        notes.append(go_note)
        if go is not None:
            baselines.append(go)
            port = wait_port(go, "the Go anchor")
            by_name["go"] = Served(f"https://127.0.0.1:{port}{PATH}", go.pid)
        if PINNED:
            for served in by_name.values():
                for pid in served.pids():
                    pin(pid, 0)
        yield Servers(by_name, ca.cert_pem, server, notes)
    finally:
        for baseline in baselines:
            stop_baseline(baseline)
        if floor is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(floor.pid, signal.SIGTERM)
            try:
                floor.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(floor.pid, signal.SIGKILL)
                floor.wait()
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
    p50_ms: float = 0.0
    #: Requests served per CPU-second of the server's processes (0 if not measured).
    per_cpu_s: float = 0.0
    #: The 1-minute load average when the run ended.
    load_avg: float = 0.0


def run_wrk(url: str, seconds: float, connections: int = CONNECTIONS) -> Load:
    """``wrk -t1 -c<connections> --latency`` against ``url`` for ``seconds``."""
    # wrk takes whole seconds only ("1.5s" is a usage error).
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    if PINNED:
        cmd = ["taskset", "-c", "1", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    text = out.stdout
    assert out.returncode == 0, f"{' '.join(cmd)} exited {out.returncode}:\n{text}\n{out.stderr}"
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    assert rps and p50 and p99, f"unexpected wrk output:\n{text}\n{out.stderr}"
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    return Load(
        float(rps.group(1)),
        float(p99.group(1)) * _UNITS[p99.group(2)],
        int(non_2xx.group(1)) if non_2xx else 0,
        errors.group(0) if errors else "",
        p50_ms=float(p50.group(1)) * _UNITS[p50.group(2)],
    )


def measured(served: Served, run: Callable[[], Load], seconds: float) -> Load:
    """``run()`` with the server's CPU time and the load average noted beside it."""
    pids = served.pids()
    before = cpu_seconds(pids)
    load = run()
    used = cpu_seconds(pids) - before
    load.per_cpu_s = load.rps * seconds / used if used > 0 else 0.0
    load.load_avg = os.getloadavg()[0]
    return load


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
    by_name = servers.by_name
    # Correct first: every server gives the same 200 answer for the same lease.
    bodies = {name: get_json(served.url, servers.ca_pem) for name, served in by_name.items()}
    for name, (status, body) in bodies.items():
        assert status == 200, f"{name} answered {status}"
        assert body.keys() == {"leaderID", "leaderAddr", "lastUpdated", "term", "etag"}, name
        assert body["leaderID"] == "bench-node", name

    have_wrk = shutil.which("wrk") is not None
    tool = f"wrk -t1 -c{CONNECTIONS}" if have_wrk else f"aiohttp client, {CONNECTIONS} conns"
    runs: dict[str, list[Load]] = {name: [] for name in by_name}

    def load(name: str) -> float:
        served = by_name[name]
        if have_wrk:
            run = measured(served, lambda: run_wrk(served.url, SECONDS), SECONDS)
        else:
            run = run_client_load(served.url, SECONDS, servers.ca_pem)
        runs[name].append(run)
        return 1e6 / run.rps

    def baselines() -> float:
        # The floor runs right before ours: the pair that is closest in cost.
        figure = load("aiohttp")
        for name in ("go", "floor"):
            if name in by_name:
                load(name)
        return figure

    ours_us, base_us, samples = paired(
        benchmark, lambda: load("ours"), baselines, rounds=rounds(full=3, gate=3), warmup=0
    )
    for name, done in runs.items():
        for run in done:
            assert run.non_2xx == 0, f"non-200 answers from {name} under load: {run}"

    # One connection: latency of a lone prober (short interleaved rounds).
    single: dict[str, list[Load]] = {name: [] for name in by_name if name != "aiohttp"}
    if have_wrk:
        for _ in range(rounds(full=3, gate=1)):
            for name in single:
                served = by_name[name]
                single[name].append(
                    measured(served, lambda s=served: run_wrk(s.url, C1_SECONDS, 1), C1_SECONDS)
                )

    def med(name: str, attr: str, source: dict[str, list[Load]] = runs) -> float:
        return statistics.median(getattr(r, attr) for r in source.get(name, [])) or 0.0

    figures = {
        name: {
            "rps": round(med(name, "rps")),
            "p99_ms": med(name, "p99_ms"),
            "per_cpu_s": round(med(name, "per_cpu_s")),
            "c1_rps": round(med(name, "rps", single)) if single.get(name) else None,
            "c1_p50_ms": med(name, "p50_ms", single) if single.get(name) else None,
        }
        for name in by_name
    }
    load_avgs = [r.load_avg for done in (*runs.values(), *single.values()) for r in done]
    pinning = "servers on CPU 0, load on CPU 1" if PINNED else "unpinned"
    memory = {
        server: {role: footprint(pid) for role, pid in roles(by_name[server].pids()).items()}
        for server in ("ours", "floor")
    }
    elector = footprint(os.getpid())
    extra = {
        "tool": tool,
        "seconds": SECONDS,
        "pinning": pinning,
        "figures": figures,
        "load_avg_1m": [round(x, 2) for x in load_avgs],
        "socket_errors": [r.errors for done in runs.values() for r in done if r.errors],
        "go": servers.notes,
        "note": (
            f"{tool}, {SECONDS:g}s x {samples}, {pinning}, load avg "
            f"{min(load_avgs, default=0):.1f}-{max(load_avgs, default=0):.1f}: "
            + "; ".join(
                f"{name} {f['rps']:,} req/s p99 {f['p99_ms']:.2f} ms "
                f"{f['per_cpu_s']:,} req/CPU-s"
                + (f", c1 p50 {f['c1_p50_ms'] * 1e3:.0f} us" if f["c1_p50_ms"] else "")
                for name, f in figures.items()
            )
        ),
        "note_go": "; ".join(servers.notes),
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
    floor_us = 1e6 / figures["floor"]["rps"]
    record(
        benchmark,
        Result(
            name="health GET vs its floor",
            unit="us/req",
            ours=ours_us,
            baseline=floor_us,
            baseline_name="bare granian, same flags, constant answer",
            target=0.95,
            # Two granian servers: their ratio sits near 1 and swings 0.6-1.5x
            # in gate mode's short runs, too wide to gate on; reported.
            gated=False,
            samples=samples,
        ),
    )
    record(
        benchmark,
        Result(
            name="health GET CPU per request",
            unit="us CPU/req",
            ours=1e6 / figures["ours"]["per_cpu_s"] if figures["ours"]["per_cpu_s"] else 0.0,
            baseline=(
                1e6 / figures["floor"]["per_cpu_s"] if figures["floor"]["per_cpu_s"] else 0.0
            ),
            baseline_name="bare granian, same flags, constant answer",
            target=0.95,
            gated=False,
            samples=samples,
        ),
    )
    if "go" in by_name:
        record(
            benchmark,
            Result(
                name="health GET vs Go",
                unit="us/req",
                ours=ours_us,
                baseline=1e6 / figures["go"]["rps"],
                baseline_name="Go net/http (local anchor, not in CI)",
                target=0.9,
                gated=False,
                samples=samples,
            ),
        )
    p99_base = "go" if "go" in by_name else "aiohttp"
    record(
        benchmark,
        Result(
            name="health GET p99 latency",
            unit="ms",
            ours=figures["ours"]["p99_ms"],
            baseline=figures[p99_base]["p99_ms"],
            baseline_name="Go net/http" if p99_base == "go" else "aiohttp web on uvloop",
            target=1.0,
            gated=False,
            limit=2.5,
            samples=samples,
        ),
    )
    ours_c1, floor_c1 = figures["ours"]["c1_p50_ms"], figures["floor"]["c1_p50_ms"]
    if ours_c1 and floor_c1:
        record(
            benchmark,
            Result(
                name="health GET c1 p50 latency",
                unit="ms",
                ours=ours_c1,
                baseline=floor_c1,
                baseline_name="bare granian, same flags, constant answer",
                # Issue 9: within 1.1x of the floor.
                target=round(1 / 1.1, 3),
                gated=False,
                samples=len(single["ours"]),
            ),
        )
    largest = {server: max(f.rss for f in procs.values()) for server, procs in memory.items()}
    record(
        benchmark,
        Result(
            name="health process RSS (largest)",
            unit="MB",
            ours=largest["ours"],
            baseline=largest["floor"],
            baseline_name="bare granian process, same launcher and flags",
            gated=False,
            limit=30.0,
            extra={
                "footprint_mb": {
                    server: {role: vars(f) for role, f in procs.items()}
                    for server, procs in memory.items()
                }
                | {"elector": vars(elector)},
                "note": "after the load, MB: "
                + "; ".join(
                    f"{server} {role} {f}"
                    for server, procs in memory.items()
                    for role, f in procs.items()
                )
                + f"; elector (this process) {elector}",
            },
            samples=1,
            paired=False,
        ),
    )
    record(
        benchmark,
        Result(
            name="health processes PSS (sum)",
            unit="MB",
            ours=sum(f.pss for f in memory["ours"].values()),
            baseline=sum(f.pss for f in memory["floor"].values()),
            baseline_name="bare granian processes, same launcher and flags",
            gated=False,
            samples=1,
            paired=False,
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
