"""The health server under hostile clients: idle connections, huge headers, HTTP/2.

Each test runs the real granian server (HealthServer) and real TLS client
sockets (Python's ssl), and fails on the settings fastelect 0.1 shipped
(granian's ``auto`` HTTP mode, backpressure 1,024 per worker, no timeout
before the first request byte, HTTP/2 header lists up to 16 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fastelect import LeadershipTable
from fastelect.errors import ConfigError
from fastelect.health import HealthServer, HealthServerConfig
from fastelect.tls import CertificateAuthority, TLSCertificate
from health_helpers import client_context, lead, table_name

PATH = "/health/leadership"
ROUTES = {PATH: "default"}
REQUEST = b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"

pytestmark = pytest.mark.one_loop  # real servers and sockets: one loop is enough


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    """The CA the probers trust."""
    return CertificateAuthority.create(common_name="limits CA")


@pytest.fixture(scope="module")
def cert(ca: CertificateAuthority) -> TLSCertificate:
    """The health server's certificate (loopback IP)."""
    return ca.issue(common_name="health", ip_addresses=["127.0.0.1"])


@pytest.fixture
def table() -> Iterator[LeadershipTable]:
    """A table where this process leads "default"."""
    t = LeadershipTable(table_name("lim"))
    try:
        lead(t.slot("default", "me"), "me")
        yield t
    finally:
        t.close()


@pytest.fixture
def many_fds() -> Iterator[None]:
    """This test process may open as many sockets as its hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.asynccontextmanager
async def serving(
    cert: TLSCertificate, table: LeadershipTable, **limits: object
) -> AsyncIterator[HealthServer]:
    """A started HealthServer with ``limits`` in its config, stopped on exit."""
    config = HealthServerConfig("127.0.0.1:0", cert, **limits)  # type: ignore[arg-type]
    server = HealthServer(config, table.name, ROUTES)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_sockets(pid: int) -> int:
    """How many of ``pid``'s descriptors are sockets."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += Path(fd).readlink().name.startswith("socket:")
    return count


async def probe(port: int, ctx: ssl.SSLContext, timeout: float = 2.0) -> float | None:
    """One request on a new TLS connection: its latency in seconds, None if unanswered."""
    started = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            writer.write(REQUEST)
            line = await reader.readline()
            await reader.read()
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return time.perf_counter() - started if line.startswith(b"HTTP/1.1 200") else None


class IdleConnection:
    """A TLS connection that completed its handshake and then sends nothing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.up_at = time.monotonic()
        self.closed_after: float | None = None

    async def wait_closed_by_server(self) -> None:
        """Wait for the server's EOF (or reset) and note when it came."""
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.reader.read()
        self.closed_after = time.monotonic() - self.up_at

    def close(self) -> None:
        """Drop our end (for cleanup)."""
        self.writer.transport.abort()


async def hold_idle(
    port: int, ctx: ssl.SSLContext, count: int, within: float
) -> list[IdleConnection]:
    """Open ``count`` idle TLS connections concurrently; fail if they are not all up ``within``."""
    held: list[IdleConnection] = []
    gate = asyncio.Semaphore(48)  # below rustls' 64 concurrent handshakes

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            held.append(IdleConnection(reader, writer))

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=within)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    failed = [t.exception() for t in done if t.exception() is not None]
    if len(held) < count:
        for conn in held:
            conn.close()
        raise AssertionError(
            f"only {len(held)} of {count} idle TLS connections completed their handshake "
            f"within {within}s ({len(pending)} still waiting, {len(failed)} failed: "
            f"{failed[:1]}): the server stopped accepting"
        )
    return held


# --------------------------------------------------------------------------- #
# Idle connections (issue 20, item 1)
# --------------------------------------------------------------------------- #

# The test's idle_timeout: long enough for this process to open 1,100 TLS
# connections first (about 4 s on a quiet 2-core box, over 8 s with the suite
# running beside it); shorter bounds are tested below on single connections.
IDLE = 12.0
HELD = 1100  # more than granian's old backpressure (1,024 per worker)


@pytest.mark.asyncio
async def test_idle_tls_connections_neither_shut_the_prober_out_nor_stay(
    ca: CertificateAuthority, cert: TLSCertificate, table: LeadershipTable, many_fds: None
) -> None:
    ctx = client_context(ca.cert_pem)
    async with serving(cert, table, idle_timeout=IDLE) as server:
        (worker,) = server.worker_pids()
        opening = time.monotonic()
        held = await hold_idle(server.port, ctx, HELD, within=20.0)
        opened_in = time.monotonic() - opening
        try:
            closers = [asyncio.create_task(c.wait_closed_by_server()) for c in held]
            still_open = sum(c.closed_after is None for c in held)
            # During the attack: 20 new-connection requests, 50 ms apart.
            latencies: list[float | None] = []
            for _ in range(20):
                latencies.append(await probe(server.port, ctx))
                await asyncio.sleep(0.05)
            open_during = sum(c.closed_after is None for c in held)
            probed_in = time.monotonic() - opening - opened_in
            answered = [lat for lat in latencies if lat is not None]
            assert still_open > 1024 and open_during > 1024, (
                f"the attack was not on: {still_open} then {open_during} of {HELD} idle "
                f"connections open while probing (opened in {opened_in:.2f}s, probed in "
                f"{probed_in:.2f}s: machine too slow?)"
            )
            assert len(answered) >= 19, f"prober got {len(answered)} of 20 answers: {latencies}"
            # Shut out, a probe waits for an idle connection to time out (12 s).
            # One slow answer on a loaded box is no shut-out: the median is
            # the figure, and no answer may take a second.
            assert statistics.median(answered) <= 0.100, f"prober median: {latencies}"
            assert max(answered) <= 1.0, f"a probe waited {max(answered):.2f}s: {latencies}"
            # Every idle connection is closed by the server within the bound.
            slack = 1.5  # the server's timer wheel, a loaded 2-core box
            await asyncio.wait(closers, timeout=IDLE + slack + 2.0)
            lives = sorted(c.closed_after for c in held if c.closed_after is not None)
            assert len(lives) == HELD, (
                f"{HELD - len(lives)} of {HELD} idle connections still open "
                f"{IDLE + slack + 2.0:.1f}s after they were opened (idle_timeout={IDLE}s)"
            )
            assert lives[-1] <= IDLE + slack, (
                f"idle connections lived up to {lives[-1]:.2f}s (idle_timeout={IDLE}s; "
                f"median {lives[len(lives) // 2]:.2f}s)"
            )
            assert lives[0] >= IDLE - 0.5, f"an idle connection closed after only {lives[0]:.2f}s"
            await asyncio.sleep(0.2)
            assert open_sockets(worker) < 20, "the worker still holds the idle connections' sockets"
        finally:
            for conn in held:
                conn.close()


@pytest.mark.asyncio
async def test_past_the_connection_limit_newcomers_wait_only_for_idle_ones_to_expire(
    ca: CertificateAuthority, cert: TLSCertificate, table: LeadershipTable, many_fds: None
) -> None:
    # Over the limit, granian stops accepting and newcomers wait in the
    # kernel's listen queue until a held connection times out: the endpoint
    # comes back on its own within a few idle timeouts, and never spins.
    idle, limit, extra = 1.0, 64, 96
    ctx = client_context(ca.cert_pem)
    async with serving(cert, table, idle_timeout=idle, max_connections=limit) as server:
        held = await hold_idle(server.port, ctx, limit, within=10.0)
        # These complete TCP but wait for a slot before their TLS handshake.
        queued = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(extra)]
        try:
            started = time.monotonic()
            waited = await probe(server.port, ctx, timeout=10 * idle)
            assert waited is not None, "the prober was never answered past the limit"
            bound = (1 + (limit + extra) // limit) * idle + 1.5
            assert waited <= bound, f"prober waited {waited:.2f}s past the limit (bound {bound}s)"
            assert time.monotonic() - started < bound
            # Afterwards the endpoint answers at once again.
            quick = [await probe(server.port, ctx) for _ in range(5)]
            assert all(q is not None and q < 0.5 for q in quick), quick
        finally:
            for conn in held:
                conn.close()
            for sock in queued:
                sock.close()


def test_the_connection_limit_is_sized_from_the_fd_limit() -> None:
    # In a child: lower its limits, then size as a health worker does.
    script = (
        "import resource\n"
        "from fastelect.health._process import connection_limit, FD_RESERVE\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 400))\n"
        "print(connection_limit(None)[0], resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
        "print(connection_limit(100)[0], connection_limit(1000)[0])\n"
        "print(connection_limit(1000)[1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout.splitlines()
    assert out[0] == "272 400", "soft limit raised to the hard one, 128 descriptors kept aside"
    assert out[1] == "100 272", "a configured limit is kept, or clamped to the descriptors"
    assert "1000 connections per worker asked for" in out[2] and "room for 272" in out[2]


def test_limits_are_validated(cert: TLSCertificate) -> None:
    for field, value in [
        ("idle_timeout", 0.0),
        ("idle_timeout", -1.0),
        ("idle_timeout", float("nan")),
        ("idle_timeout", float("inf")),
        ("idle_timeout", 90000.0),
        ("idle_timeout", "5"),
        ("idle_timeout", True),
        ("max_connections", 0),
        ("max_connections", 2.5),
        ("max_connections", True),
        ("max_connections", 1 << 21),
    ]:
        with pytest.raises(ConfigError, match=field):
            HealthServerConfig("127.0.0.1:0", cert, **{field: value})  # type: ignore[arg-type]
    config = HealthServerConfig("127.0.0.1:0", cert)
    assert config.idle_timeout == 5.0 and config.max_connections is None


# --------------------------------------------------------------------------- #
# Header blocks and HTTP/2 (issue 20, item 2)
# --------------------------------------------------------------------------- #


@pytest.mark.asyncio
async def test_alpn_never_negotiates_http2(
    ca: CertificateAuthority, cert: TLSCertificate, table: LeadershipTable
) -> None:
    async with serving(cert, table) as server:
        ctx = client_context(ca.cert_pem)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        writer.close()
        assert chosen == "http/1.1", f"ALPN chose {chosen!r}"
        only_h2 = client_context(ca.cert_pem)
        only_h2.set_alpn_protocols(["h2"])
        with pytest.raises(ssl.SSLError, match=r"NO_APPLICATION_PROTOCOL|no application protocol"):
            await asyncio.open_connection("127.0.0.1", server.port, ssl=only_h2)
        # An HTTP/2 preface without ALPN is not HTTP/1.1: refused, not served.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_context(ca.cert_pem)
        )
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        answer = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        assert not answer.startswith(b"\x00"), f"the server spoke HTTP/2: {answer[:40]!r}"


HUGE = 15 * 1024 * 1024  # what each attacker tries to send as one header block


async def send_huge_header(port: int, ctx: ssl.SSLContext) -> tuple[bytes, int]:
    """Send an endless header; return the server's answer and how many bytes it took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    answer = asyncio.create_task(reader.read(200))  # read while sending: a reset drops it
    writer.write(b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Pad: ")
    sent = 0
    chunk = b"a" * 16384
    try:
        while sent < HUGE and not answer.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)  # drain() need not yield: let the answer in
    except (OSError, ssl.SSLError):
        pass  # the server closed on us: what we want
    try:
        got = await asyncio.wait_for(answer, 5.0)
    except (OSError, ssl.SSLError, TimeoutError):
        got = b""
    writer.transport.abort()
    return got, sent


@pytest.mark.asyncio
async def test_huge_header_blocks_are_refused_with_bounded_memory(
    ca: CertificateAuthority, cert: TLSCertificate, table: LeadershipTable
) -> None:
    ctx = client_context(ca.cert_pem)
    async with serving(cert, table) as server:
        (worker,) = server.worker_pids()
        for _ in range(3):  # warm up: the first requests map code and buffers
            assert await probe(server.port, ctx) is not None
        before = rss_kb(worker)
        results = await asyncio.gather(*(send_huge_header(server.port, ctx) for _ in range(8)))
        grew = (rss_kb(worker) - before) / 1024
        for answer, sent in results:
            # 431, or a reset that overtook it (the server closes with our
            # bytes unread, so the kernel resets the connection).
            assert answer in (b"",) or answer.startswith(b"HTTP/1.1 431"), answer[:60]
            assert sent < 1024 * 1024, f"the server read {sent} bytes of one header block"
        # One whole oversized head, sent before the answer is read: 431.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        writer.write(b"GET " + PATH.encode() + b" HTTP/1.1\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 431")
        writer.transport.abort()
        assert grew < 10, f"the worker grew {grew:.1f} MB under 8 huge header blocks"
        assert await probe(server.port, ctx) is not None


@pytest.mark.asyncio
async def test_an_unfinished_header_block_is_closed_within_the_idle_timeout(
    ca: CertificateAuthority, cert: TLSCertificate, table: LeadershipTable
) -> None:
    idle = 1.0
    ctx = client_context(ca.cert_pem)
    async with serving(cert, table, idle_timeout=idle) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        started = time.monotonic()
        writer.write(b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n")
        try:
            while time.monotonic() - started < idle + 3.0:  # a slow drip, never finished
                writer.write(b"X-Drip: 1\r\n")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if not await asyncio.wait_for(reader.read(200), 0.2):
                        break
        except (OSError, ssl.SSLError):
            pass
        lived = time.monotonic() - started
        writer.transport.abort()
        assert lived <= idle + 1.0, f"an unfinished header block stayed {lived:.2f}s"

        # A connection that finishes TLS and then sends nothing at all.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        started = time.monotonic()
        with contextlib.suppress(OSError, ssl.SSLError):
            await asyncio.wait_for(reader.read(), idle + 3.0)
        silent = time.monotonic() - started
        writer.transport.abort()
        assert idle - 0.3 <= silent <= idle + 1.0, f"a silent connection stayed {silent:.2f}s"

        # And a kept-alive connection that goes quiet after an answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        writer.write(b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        with contextlib.suppress(OSError, ssl.SSLError):
            while await asyncio.wait_for(reader.read(4096), idle + 3.0):
                pass
        quiet = time.monotonic() - answered
        writer.transport.abort()
        assert quiet <= idle + 1.0, f"an idle kept-alive connection stayed {quiet:.2f}s"
