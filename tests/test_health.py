"""The granian HTTPS health server, end to end over real TLS on loopback.

Every test starts its own granian processes (``HealthServer``) reading a
named shared-memory table; the leadership in that table is set by the real
compiled state machine (``health_helpers.lead``) or by a real elector in a
subprocess (the SIGSTOP test).  No mocks on the wire.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from fastelect import LeadershipTable
from fastelect._core import monotonic_ns, shm_path
from fastelect.errors import (
    ConfigError,
    FastelectError,
    HealthServerError,
    LifecycleError,
    TLSError,
)
from fastelect.health import HealthServer, HealthServerConfig
from fastelect.health.app import HealthApp, render_metrics, validate_routes
from fastelect.tls import CertificateAuthority, TLSCertificate
from health_helpers import client_context, fetch, lead, table_name, wait_gone, wait_until

ROUTES = {
    "/health/leadership/cluster": "cluster",
    "/health/leadership/shard": "shard",
    "/health/leadership/never": "never-started",
}
WAIT = 10.0  # seconds: bound on every wait for a server-side change

StartServer = Callable[..., Awaitable[HealthServer]]


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    """The development CA every server certificate here chains to."""
    return CertificateAuthority.create()


@pytest.fixture(scope="module")
def cert(ca: CertificateAuthority) -> TLSCertificate:
    """A server certificate for the loopback addresses and ``localhost``."""
    return ca.issue(
        common_name="health-test", ip_addresses=["127.0.0.1", "::1"], dns_names=["localhost"]
    )


@pytest.fixture
def table() -> Any:
    """A fresh named leadership table, closed (and its segment removed) after the test."""
    t = LeadershipTable(table_name())
    try:
        yield t
    finally:
        t.close()


@pytest_asyncio.fixture
async def https(ca: CertificateAuthority) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTPS client that trusts ``ca`` only and checks the server's IP."""
    connector = aiohttp.TCPConnector(ssl=client_context(ca.cert_pem))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest_asyncio.fixture
async def start_server(cert: TLSCertificate) -> AsyncIterator[StartServer]:
    """Start HealthServers for this test; every one is stopped afterwards."""
    servers: list[HealthServer] = []

    async def start(
        name: str,
        routes: Mapping[str, str] = ROUTES,
        *,
        bind: str = "127.0.0.1:0",
        workers: int = 1,
        tls_cert: TLSCertificate | None = None,
    ) -> HealthServer:
        server = HealthServer(HealthServerConfig(bind, tls_cert or cert, workers), name, routes)
        servers.append(server)
        await server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.stop()


def url(server: HealthServer, path: str, host: str = "127.0.0.1") -> str:
    """The server's URL for ``path``."""
    return f"https://{host}:{server.port}{path}"


def our_processes() -> set[int]:
    """granian main processes started by this test process (our direct children)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = stat[stat.rfind(")") + 2 :].split()[1]
        if ppid == str(os.getpid()) and b"fastelect.health._process" in cmdline:
            found.add(int(entry.name))
    return found


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        (":8443", "", 8443),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::1]:65535", "::1", 65535),
        ("localhost:1", "127.0.0.1", 1),
        ("0.0.0.0:80", "0.0.0.0", 80),
        ("node-1.example.com:8443", "node-1.example.com", 8443),  # resolved at start
    ],
)
def test_bind_addr_forms(cert: TLSCertificate, bind: str, host: str, port: int) -> None:
    config = HealthServerConfig(bind, cert)
    assert (config.host, config.port, config.workers) == (host, port, 1)


@pytest.mark.parametrize(
    ("kwargs", "field", "match"),
    [
        ({"bind_addr": "8443"}, "bind_addr", "host:port"),
        ({"bind_addr": "exa mple.com:8443"}, "bind_addr", "host name"),
        ({"bind_addr": "-bad.example:8443"}, "bind_addr", "host name"),
        ({"bind_addr": "::1:8443"}, "bind_addr", "brackets"),
        ({"bind_addr": "[nope]:8443"}, "bind_addr", "IPv6"),
        ({"bind_addr": ":99999"}, "bind_addr", "0-65535"),
        ({"bind_addr": ":http"}, "bind_addr", "0-65535"),
        ({"tls_cert": b"PEM"}, "tls_cert", "TLSCertificate"),
        ({"workers": 0}, "workers", "between"),
        ({"workers": True}, "workers", "integer"),
    ],
)
def test_config_errors_name_the_field(
    cert: TLSCertificate, kwargs: dict[str, Any], field: str, match: str
) -> None:
    args: dict[str, Any] = {"bind_addr": ":0", "tls_cert": cert, **kwargs}
    with pytest.raises(ConfigError, match=match) as info:
        HealthServerConfig(**args)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("routes", "match"),
    [
        ({}, "non-empty"),
        ({"health": "x"}, "start with '/'"),
        ({"/healthz": "x"}, "reserved"),
        ({"/metrics": "x"}, "reserved"),
        ({"/a?b": "x"}, "no query"),
        ({"/a b": "x"}, "spaces"),
        ({"/a": ""}, "1-30 bytes"),
        ({"/a": "x" * 31}, "1-30 bytes"),
    ],
)
def test_route_errors(routes: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate_routes(routes)


def test_server_arguments_are_checked(cert: TLSCertificate) -> None:
    config = HealthServerConfig("127.0.0.1:0", cert)
    with pytest.raises(ConfigError, match="table_name"):
        HealthServer(config, "no/slashes", ROUTES)
    with pytest.raises(ConfigError, match="routes"):
        HealthServer(config, "ok", {"nope": "x"})
    with pytest.raises(TypeError):
        HealthServer("127.0.0.1:0", "ok", ROUTES)  # type: ignore[arg-type]
    server = HealthServer(config, "ok", ROUTES)
    assert server.port == 0 and not server.running and server.pid is None


# --------------------------------------------------------------------------- #
# Semantics
# --------------------------------------------------------------------------- #


@pytest.mark.asyncio
async def test_leadership_per_election_and_methods(
    table: LeadershipTable, start_server: StartServer, https: aiohttp.ClientSession
) -> None:
    lead(table.slot("cluster", "node-1"), "node-1", "10.0.1.42:8443", etag='"abc"')
    table.slot("shard", "node-1")  # started, but a follower
    server = await start_server(table.name)
    assert server.running and server.port > 0

    before = time.time()
    reply = await fetch(https, url(server, "/health/leadership/cluster"))
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    body = reply.json()
    assert isinstance(body, dict)
    assert body.keys() == {"leaderID", "leaderAddr", "lastUpdated", "term", "etag"}
    assert body["leaderID"] == "node-1"
    assert body["leaderAddr"] == "10.0.1.42:8443"
    assert body["term"] == 1
    assert body["etag"] == '"abc"'
    # lastUpdated is "now" in RFC 3339 UTC with microseconds.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body["lastUpdated"])
    stamp = datetime.strptime(body["lastUpdated"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - 1 <= stamp.timestamp() <= time.time() + 1

    shard = await fetch(https, url(server, "/health/leadership/shard"))
    assert shard.status == 404
    assert shard.json() == {"election": "shard", "isLeader": False, "reason": "not leader"}
    never = await fetch(https, url(server, "/health/leadership/never"))
    assert never.status == 404
    assert never.json() == {
        "election": "never-started",
        "isLeader": False,
        "reason": "election not started",
    }

    for path in (*ROUTES, "/healthz", "/metrics"):
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            reply = await fetch(https, url(server, path), method)
            assert reply.status == 405, (method, path)
            assert reply.headers["allow"] == "GET, HEAD"

    head = await fetch(https, url(server, "/health/leadership/cluster"), "HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) > 0
    assert (await fetch(https, url(server, "/health/leadership/shard"), "HEAD")).status == 404

    for path in ("/", "/nope", "/health/leadership", "/health/leadership/cluster/", "/healthz/x"):
        assert (await fetch(https, url(server, path))).status == 404, path
    assert (await fetch(https, url(server, "/nope"), "POST")).status == 404
    # The query string does not change the route.
    assert (await fetch(https, url(server, "/health/leadership/cluster?x=1"))).status == 200


@pytest.mark.asyncio
async def test_single_election_form(
    table: LeadershipTable, start_server: StartServer, https: aiohttp.ClientSession
) -> None:
    server = await start_server(table.name, {"/health/leadership": "default"})
    assert (await fetch(https, url(server, "/health/leadership"))).status == 404
    lead(table.slot("default", "solo"), "solo")
    reply = await fetch(https, url(server, "/health/leadership"))
    assert reply.status == 200 and reply.json()["leaderID"] == "solo"  # type: ignore[index]


@pytest.mark.asyncio
async def test_answers_follow_the_table_live(
    table: LeadershipTable, start_server: StartServer, https: aiohttp.ClientSession
) -> None:
    server = await start_server(table.name)
    cluster = url(server, "/health/leadership/cluster")
    assert (await fetch(https, cluster)).status == 404

    campaign = lead(table.slot("cluster", "n1"), "n1", etag='"e1"')
    first = await fetch(https, cluster)
    assert first.status == 200 and first.json()["term"] == 1  # type: ignore[index]

    # Releasing zeroes the lease at once: 404 on the very next request.
    assert campaign.begin_release(monotonic_ns())
    released = await fetch(https, cluster)
    assert released.status == 404
    assert released.json()["reason"] == "not leader"  # type: ignore[index]
    assert server.running


@pytest.mark.asyncio
async def test_lease_expiry_alone_turns_the_answer_to_404(
    table: LeadershipTable, start_server: StartServer, https: aiohttp.ClientSession
) -> None:
    """No write, no elector loop: the deadline in the slot passing is enough."""
    server = await start_server(table.name)
    lease_s = 0.4
    lead(table.slot("cluster", "n1"), "n1", lease_s=lease_s)
    deadline = table.reader().status("cluster")["lease_until_ns"]  # type: ignore[index]
    cluster = url(server, "/health/leadership/cluster")
    assert (await fetch(https, cluster)).status == 200

    async def expired() -> bool:
        sent = monotonic_ns()
        reply = await fetch(https, cluster)
        if reply.status == 200:
            # The server tests the lease after the request was sent: a request
            # sent at or after the deadline must never see 200.
            assert sent < deadline, "200 for a request sent after the lease ended"
            return False
        assert reply.json()["reason"] == "lease expired"  # type: ignore[index]
        return True

    end = time.monotonic() + WAIT
    while not await expired():
        assert time.monotonic() < end, "the answer never turned to 404"
        await asyncio.sleep(0.02)
    assert monotonic_ns() >= deadline, "404 before the lease ended"


@pytest.mark.asyncio
async def test_healthz_watchdog(
    table: LeadershipTable, start_server: StartServer, https: aiohttp.ClientSession
) -> None:
    server = await start_server(table.name)
    healthz = url(server, "/healthz")
    # No elections started: nothing can be stuck.
    reply = await fetch(https, healthz)
    assert (reply.status, reply.body) == (200, b"ok\n")

    second = 1_000_000_000
    slot = table.slot("cluster", "n1")
    table.slot("shard", "n1").heartbeat(monotonic_ns(), 60 * second)  # healthy throughout
    slot.heartbeat(monotonic_ns(), 60 * second)
    assert (await fetch(https, healthz)).status == 200

    # The loop's last cycle is 2 s old against a 1 s bound: stuck.
    slot.heartbeat(monotonic_ns() - 2 * second, second)
    reply = await fetch(https, healthz)
    assert reply.status == 503
    assert reply.body.startswith(b"election 'cluster' is stuck: last cycle 2.")
    assert b"(bound 1.000s)" in reply.body and b"shard" not in reply.body

    slot.heartbeat(monotonic_ns(), second)  # the loop came back
    assert (await fetch(https, healthz)).status == 200
    # A stopped election is not watched, however old its last cycle.
    slot.heartbeat(monotonic_ns() - 2 * second, second)
    slot.release_slot()
    assert (await fetch(https, healthz)).status == 200


@pytest.mark.asyncio
async def test_metrics_exposition(
    table: LeadershipTable, start_server: StartServer, https: aiohttp.ClientSession
) -> None:
    lead(table.slot("cluster", "n1"), "n1")
    shard = table.slot("shard", "n1")
    shard.count(0)  # one renewal counted on the follower slot, to see a nonzero counter
    server = await start_server(table.name)
    reply = await fetch(https, url(server, "/metrics"))
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = reply.body.decode()
    assert text.endswith("\n")

    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            assert doc, f"empty HELP for {name}"
            helps[name] = doc
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("gauge", "counter")
            types[name] = kind
        else:
            match = re.fullmatch(r"([a-z_]+)(\{[^}]*\})? (\S+)", line)
            assert match, f"not a sample line: {line!r}"
            assert match.group(1) in types, f"sample before its TYPE line: {line!r}"
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    assert helps.keys() == types.keys()
    assert all(name.startswith("fastelect_") for name in types)
    assert all(name.endswith("_total") for name, kind in types.items() if kind == "counter")

    assert samples["fastelect_table_attached"] == 1
    assert samples['fastelect_is_leader{election="cluster"}'] == 1
    assert samples['fastelect_is_leader{election="shard"}'] == 0
    assert samples['fastelect_role{election="cluster",role="leader"}'] == 1
    assert samples['fastelect_role{election="shard",role="follower"}'] == 1
    assert samples['fastelect_role{election="shard",role="leader"}'] == 0
    assert samples['fastelect_term{election="cluster"}'] == 1
    assert 0 < samples['fastelect_lease_remaining_seconds{election="cluster"}'] <= 600
    assert samples['fastelect_acquisitions_total{election="cluster"}'] == 1
    assert samples['fastelect_renewals_total{election="shard"}'] == 1
    assert types["fastelect_peer_checks_total"] == "counter"
    assert 'fastelect_peer_failures_total{election="cluster"}' in samples


@pytest.mark.asyncio
async def test_missing_table_then_created_closed_and_recreated(
    start_server: StartServer, https: aiohttp.ClientSession
) -> None:
    name = table_name()
    server = await start_server(name)
    cluster = url(server, "/health/leadership/cluster")
    missing = await fetch(https, cluster)
    assert missing.status == 404
    assert missing.json()["reason"] == "leadership table is missing"  # type: ignore[index]
    healthz = await fetch(https, url(server, "/healthz"))
    assert healthz.status == 503 and b"is missing" in healthz.body
    metrics = await fetch(https, url(server, "/metrics"))
    assert b"fastelect_table_attached 0\n" in metrics.body

    first = LeadershipTable(name)
    try:
        lead(first.slot("cluster", "first"), "first")
        reply = await fetch(https, cluster)
        assert reply.status == 200 and reply.json()["leaderID"] == "first"  # type: ignore[index]
    finally:
        first.close()
    # Closed by its owner: the workers drop it at once.
    assert (await fetch(https, cluster)).status == 404

    second = LeadershipTable(name)  # a restarted owner, same name
    try:
        lead(second.slot("cluster", "second"), "second")
        reply = await fetch(https, cluster)
        assert reply.status == 200 and reply.json()["leaderID"] == "second"  # type: ignore[index]
    finally:
        second.close()


# --------------------------------------------------------------------------- #
# TLS
# --------------------------------------------------------------------------- #


def _handshake(port: int, ctx: ssl.SSLContext, host: str = "127.0.0.1") -> str:
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        version = tls.version()
        assert version is not None
        return version


@pytest.mark.asyncio
async def test_tls_12_minimum(
    ca: CertificateAuthority, table: LeadershipTable, start_server: StartServer
) -> None:
    server = await start_server(table.name)
    port = server.port
    # Blocking handshakes run in a thread: the loop must stay free.
    best = await asyncio.to_thread(_handshake, port, client_context(ca.cert_pem))
    assert best == "TLSv1.3"
    only_12 = client_context(ca.cert_pem, max_version=ssl.TLSVersion.TLSv1_2)
    assert await asyncio.to_thread(_handshake, port, only_12) == "TLSv1.2"

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            # Deprecated on purpose: this client stands for a pre-1.2 peer.
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot even offer TLS 1.1: {exc}")
    with pytest.raises((ssl.SSLError, OSError)):
        await asyncio.to_thread(_handshake, port, old)


@pytest.mark.asyncio
async def test_client_of_another_ca_rejects_the_server(
    table: LeadershipTable, start_server: StartServer
) -> None:
    server = await start_server(table.name)
    stranger = CertificateAuthority.create(common_name="another CA")
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(_handshake, server.port, client_context(stranger.cert_pem))


# --------------------------------------------------------------------------- #
# Memory: Python's TLS stays out of the health processes
# --------------------------------------------------------------------------- #

#: Mapped in a process that loaded Python's ssl or hashlib's OpenSSL digests.
PYTHON_TLS_MAPPINGS = ("libssl", "libcrypto", "/_ssl.", "/_hashlib.")


def mapped(pid: int, needles: tuple[str, ...]) -> list[str]:
    """The files of ``pid``'s mappings whose path contains one of ``needles``."""
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()}
    return sorted(p for p in paths if any(n in p for n in needles))


@pytest.mark.one_loop  # about granian's processes, not the loop of this one
@pytest.mark.asyncio
async def test_health_processes_serve_tls_without_python_tls(
    ca: CertificateAuthority, table: LeadershipTable, start_server: StartServer
) -> None:
    lead(table.slot("cluster", "n1"), "n1")
    server = await start_server(table.name, workers=2)
    # TLS 1.3 and 1.2 handshakes, CA-verified, and a leadership answer: all rustls.
    ctx = client_context(ca.cert_pem)
    assert await asyncio.to_thread(_handshake, server.port, ctx) == "TLSv1.3"
    only_12 = client_context(ca.cert_pem, max_version=ssl.TLSVersion.TLSv1_2)
    assert await asyncio.to_thread(_handshake, server.port, only_12) == "TLSv1.2"
    connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as https:
        for _ in range(4):  # new connections: each worker likely gets some
            reply = await fetch(https, url(server, "/health/leadership/cluster"))
            assert reply.status == 200
    main, workers = server.pid, server.worker_pids()
    assert main is not None and len(workers) == 2
    for pid in (main, *workers):
        assert mapped(pid, PYTHON_TLS_MAPPINGS) == [], (
            f"health process {pid} loaded Python's TLS stack (see _process.without_python_tls)"
        )
    # The workers still run uvloop's event loop (it loaded with the stand-in).
    for pid in workers:
        assert mapped(pid, ("/uvloop/",)), f"worker {pid} runs without uvloop"


WITHOUT_PYTHON_TLS = textwrap.dedent(
    """
    import json, sys, threading
    from fastelect.health import _process

    if sys.argv[2] == "newer-uvloop":  # a uvloop that wants one more name than we give
        del _process._SSLStandIn.SSL_ERROR_SYSCALL
    out = {"first": _process.without_python_tls()}
    try:
        import ssl  # noqa: F401
        out["import_ssl"] = "imported"
    except ImportError:
        out["import_ssl"] = "ImportError"
    import asyncio, hashlib, hmac, secrets
    from granian._loops import loops

    out["loops"] = sorted(loops.keys())
    loop = loops.get("uvloop" if "uvloop" in loops else "asyncio")
    done = loop.create_future()
    threading.Thread(target=loop.call_soon_threadsafe, args=(done.set_result, 7)).start()
    out["loop"] = [type(loop).__module__, loop.run_until_complete(done)]
    out["sha256"] = hashlib.sha256(b"fastelect").hexdigest()
    out["hmac"] = hmac.new(b"k", b"m", "sha256").hexdigest()
    out["token"] = len(secrets.token_hex(8))
    import granian.server.common as common

    stand_in = common.ssl
    out["holders"] = sorted(
        name for name, m in list(sys.modules.items()) if getattr(m, "ssl", None) is stand_in
    )
    stand_in.SSLContext(stand_in.PROTOCOL_TLS_SERVER).load_cert_chain(sys.argv[1], sys.argv[1])
    try:
        stand_in.SSLContext(stand_in.PROTOCOL_TLS_SERVER).load_cert_chain(sys.argv[1] + ".gone")
        out["missing_cert"] = "accepted"
    except OSError:
        out["missing_cert"] = "OSError"
    for use in ("create_default_context", "wrap_socket"):
        try:
            getattr(stand_in, use)()
        except (AttributeError, RuntimeError) as exc:
            out[use] = str(exc)
    import fastelect.health.app  # noqa: F401  (the worker's imports)

    out["loaded"] = sorted(m for m in ("ssl", "_ssl", "_hashlib") if sys.modules.get(m))
    out["twice"] = _process.without_python_tls()  # too late now: changes nothing
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("uvloop", ["uvloop", "newer-uvloop"])
def test_without_python_tls_keeps_every_needed_module_working(tmp_path: Path, uvloop: str) -> None:
    """What the health processes import still works once Python's ssl is kept out."""
    readable = tmp_path / "cert.pem"
    readable.write_text("not checked here: rustls loads it")
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYTHON_TLS, str(readable), uvloop],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["first"] is True and got["twice"] is False
    assert got["import_ssl"] == "ImportError"
    # The builtin digests agree with OpenSSL's (this process has them).
    assert got["sha256"] == hashlib.sha256(b"fastelect").hexdigest()
    assert got["hmac"] == hmac.new(b"k", b"m", "sha256").hexdigest()
    assert got["token"] == 16
    if uvloop == "uvloop":
        assert "uvloop" in got["loops"] and got["loop"] == ["uvloop", 7]
        # Only the two importers hold the stand-in; nothing else sees an ssl module.
        assert got["holders"] == ["granian.server.common", "uvloop.includes"]
    else:
        # uvloop is left out, loudly, and the loop is asyncio's.
        assert "uvloop" not in got["loops"] and got["loop"] == ["asyncio.unix_events", 7]
        assert got["holders"] == ["granian.server.common"]
        assert "uvloop does not load without Python's ssl" in out.stderr
        assert "SSL_ERROR_SYSCALL" in out.stderr
    assert got["missing_cert"] == "OSError"
    for use in ("create_default_context", "wrap_socket"):
        assert "kept out of fastelect's health processes" in got[use]
    assert got["loaded"] == [], f"Python's TLS stack loaded: {got['loaded']}"
    assert "imported before the health server started" in out.stderr


NEWER_GRANIAN = textwrap.dedent(
    """
    import json, sys
    from fastelect.health import _process

    # A granian whose server module wants a name the stand-in lacks.
    real_getattr = _process._SSLStandIn.__getattr__

    def getattr_(self, name):
        if name == "TLSVersion":
            raise AttributeError(f"ssl.{name}: not in the stand-in")
        return real_getattr(self, name)

    _process._SSLStandIn.__getattr__ = getattr_
    import importlib.abc, importlib.machinery

    class NeedsTLSVersion(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "granian.server.common" and "done" not in self.__dict__:
                return importlib.machinery.ModuleSpec(name, self)
            return None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            self.done = True
            import ssl
            ssl.TLSVersion  # noqa: B018

    sys.meta_path.insert(0, NeedsTLSVersion())
    out = {"lean": _process.without_python_tls()}
    import ssl
    import granian.server.common as common

    out["ssl"] = type(ssl).__name__ + ":" + str(hasattr(ssl, "OPENSSL_VERSION"))
    out["granian_ssl_is_real"] = common.ssl is ssl
    print(json.dumps(out))
    """
)


def test_a_granian_that_needs_more_of_ssl_loads_the_real_one() -> None:
    """A granian release that wants more of ssl than the stand-in has must not
    break the health server: the launcher forgets the half-import, lets granian
    load the real ssl, says so, and runs it as installed."""
    out = subprocess.run(
        [sys.executable, "-c", NEWER_GRANIAN], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got == {"lean": False, "ssl": "module:True", "granian_ssl_is_real": True}
    assert "granian does not load without Python's ssl" in out.stderr
    assert "TLSVersion" in out.stderr


# --------------------------------------------------------------------------- #
# Addresses and start failures
# --------------------------------------------------------------------------- #


@pytest.mark.asyncio
async def test_wildcard_bind_and_ipv6(
    ca: CertificateAuthority, table: LeadershipTable, start_server: StartServer
) -> None:
    lead(table.slot("cluster", "n1"), "n1")
    server = await start_server(table.name, bind=":0")
    assert server.host in ("::", "0.0.0.0")
    ctx = client_context(ca.cert_pem)
    assert await asyncio.to_thread(_handshake, server.port, ctx, "127.0.0.1")
    if server.host == "::":
        assert await asyncio.to_thread(_handshake, server.port, ctx, "::1")
    if socket.has_ipv6:
        try:
            v6 = await start_server(table.name, bind="[::1]:0")
        except HealthServerError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        assert v6.host == "::1"
        assert await asyncio.to_thread(_handshake, v6.port, ctx, "::1")


@pytest.mark.asyncio
async def test_port_in_use(
    cert: TLSCertificate, table: LeadershipTable, start_server: StartServer
) -> None:
    before = our_processes()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = HealthServer(HealthServerConfig(f"127.0.0.1:{port}", cert), table.name, ROUTES)
        with pytest.raises(HealthServerError, match="already in use"):
            await server.start()
        assert not server.running and server.pid is None
    # Another health server (granian binds with SO_REUSEPORT) is refused as well.
    first = await start_server(table.name)
    second = HealthServer(HealthServerConfig(f"127.0.0.1:{first.port}", cert), table.name, ROUTES)
    with pytest.raises(HealthServerError, match="already in use"):
        await second.start()
    assert our_processes() - before == {first.pid}


@pytest.mark.asyncio
async def test_bad_certificate_or_key(
    ca: CertificateAuthority, cert: TLSCertificate, table: LeadershipTable
) -> None:
    before = our_processes()
    other = ca.issue(common_name="other", ip_addresses=["127.0.0.1"])
    with pytest.raises(TLSError):
        TLSCertificate.from_pem(b"not a certificate", cert.key_pem)
    with pytest.raises(TLSError):
        TLSCertificate.from_pem(cert.cert_pem, other.key_pem)  # mismatched key
    # A certificate whose key was swapped after validation: refused at start,
    # before any process is spawned, and nothing is left behind.
    broken = TLSCertificate.from_pem(cert.cert_pem, cert.key_pem)
    object.__setattr__(broken, "key_pem", other.key_pem)
    server = HealthServer(HealthServerConfig("127.0.0.1:0", broken), table.name, ROUTES)
    with pytest.raises(HealthServerError, match="certificate is unusable") as info:
        await server.start()
    assert isinstance(info.value.__cause__, TLSError)
    assert not server.running and our_processes() == before


# --------------------------------------------------------------------------- #
# Processes: stop, respawn, restart
# --------------------------------------------------------------------------- #


@pytest.mark.asyncio
async def test_stop_leaves_no_process_no_files_no_segment(
    cert: TLSCertificate, https: aiohttp.ClientSession
) -> None:
    before = our_processes()
    t = LeadershipTable(table_name())
    lead(t.slot("cluster", "n1"), "n1")
    server = HealthServer(HealthServerConfig("127.0.0.1:0", cert, workers=2), t.name, ROUTES)
    await server.start()
    try:
        main = server.pid
        assert main is not None
        workers = server.worker_pids()
        assert len(workers) == 2, workers
        private = server._dir
        assert private is not None and Path(private).is_dir()
        assert Path(private).stat().st_mode & 0o777 == 0o700
        for name in os.listdir(private):
            if name.endswith(".pem"):
                assert Path(private, name).stat().st_mode & 0o777 == 0o600
        assert (await fetch(https, url(server, "/health/leadership/cluster"))).status == 200
    finally:
        await server.stop()
        t.close()
    assert not server.running and server.pid is None
    await wait_gone([main, *workers])
    assert not Path(private).exists(), "the certificate/key directory was left behind"
    assert not Path(shm_path(t.name)).exists(), "the table segment was left behind"
    assert our_processes() == before
    await server.stop()  # twice is fine
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(https, url(server, "/healthz"))


@pytest.mark.asyncio
async def test_start_twice_and_restart_after_stop(
    table: LeadershipTable, start_server: StartServer, https: aiohttp.ClientSession
) -> None:
    server = await start_server(table.name)
    with pytest.raises(LifecycleError):
        await server.start()
    await server.stop()
    await server.start()  # the same object can serve again
    assert (await fetch(https, url(server, "/healthz"))).status == 200


@pytest.mark.asyncio
async def test_killed_worker_is_respawned(
    table: LeadershipTable, start_server: StartServer, https: aiohttp.ClientSession
) -> None:
    lead(table.slot("cluster", "n1"), "n1")
    server = await start_server(table.name)
    main = server.pid
    [worker] = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    await wait_until(
        lambda: server.worker_pids() not in ([], [worker]), WAIT, "no new worker was spawned"
    )
    [respawned] = server.worker_pids()
    assert respawned != worker and server.pid == main and server.restarts == 0
    cluster = url(server, "/health/leadership/cluster")
    end = time.monotonic() + WAIT
    while True:
        try:
            if (await fetch(https, cluster)).status == 200:
                break
        except aiohttp.ClientConnectionError:
            pass
        assert time.monotonic() < end, "the respawned worker never answered"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_killed_main_process_is_restarted(
    table: LeadershipTable, start_server: StartServer, https: aiohttp.ClientSession
) -> None:
    lead(table.slot("cluster", "n1"), "n1")
    before = our_processes()
    server = await start_server(table.name)
    main, workers = server.pid, server.worker_pids()
    assert main is not None
    os.kill(main, signal.SIGKILL)
    # Its worker dies with it (parent-death signal), so no orphan keeps the port.
    await wait_gone(workers)
    await wait_until(lambda: server.restarts == 1, WAIT, "the supervisor did not restart granian")
    assert server.pid not in (None, main)
    reply = await fetch(https, url(server, "/health/leadership/cluster"))
    assert reply.status == 200
    assert our_processes() - before == {server.pid}


# --------------------------------------------------------------------------- #
# A real elector in another process, frozen with SIGSTOP
# --------------------------------------------------------------------------- #

ELECTOR_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from fastelect import Elector, ElectorConfig, LeadershipTable, S3Storage
    from fastelect.health import HealthServer, HealthServerConfig
    from fastelect.tls import TLSCertificate

    async def main():
        args = json.loads(sys.argv[1])
        table = LeadershipTable(args["table"])
        cert = TLSCertificate.from_pem(args["cert"].encode(), args["key"].encode())
        health = HealthServer(
            HealthServerConfig("127.0.0.1:0", cert), args["table"],
            {"/health/leadership": "default"},
        )
        await health.start()
        storage = S3Storage(args["bucket"], args["prefix"], endpoint_url=args["endpoint"],
                            region_name="us-east-1", timeout=2.0)
        config = ElectorConfig("leader.json", "frozen-node", f"127.0.0.1:{health.port}",
                               **args["timings"])
        elector = Elector(config, storage, table=table)
        await elector.start()
        await elector.wait_for_leadership()
        print(json.dumps({"port": health.port, "health_pid": health.pid,
                          "workers": health.worker_pids(), "dir": health._dir}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@pytest.mark.s3
@pytest.mark.one_loop  # the loop under test is the elector's, in its own process
@pytest.mark.asyncio
async def test_lease_expires_while_elector_process_is_sigstopped(
    cert: TLSCertificate, moto_server: str, s3_bucket: str, https: aiohttp.ClientSession
) -> None:
    timings = {
        "frequent_interval": 0.05,
        "infrequent_interval": 0.1,
        "leader_timeout": 0.5,
        "storage_timeout": 0.4,
        "peer_timeout": 0.2,
    }
    # The elector's /healthz bound: infrequent + lease + storage + peer timeouts.
    watchdog = 0.1 + 0.5 + 0.4 + 0.2
    args = {
        "table": table_name("s"),
        "cert": cert.cert_pem.decode(),
        "key": cert.key_pem.decode(),
        "bucket": s3_bucket,
        "prefix": f"sigstop-{uuid.uuid4().hex}",
        "endpoint": moto_server,
        "timings": timings,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", ELECTOR_SCRIPT, json.dumps(args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line, f"the elector process exited early (code {proc.poll()})"
        info = json.loads(line)
        base = f"https://127.0.0.1:{info['port']}"
        leader = await fetch(https, f"{base}/health/leadership")
        assert leader.status == 200 and leader.json()["leaderID"] == "frozen-node"  # type: ignore[index]
        assert (await fetch(https, f"{base}/healthz")).status == 200

        os.kill(proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()

        async def leadership_status() -> int:
            return (await fetch(https, f"{base}/health/leadership")).status

        end = stopped_at + WAIT
        while await leadership_status() == 200:
            assert time.monotonic() < end, "still 200 long after the lease"
            await asyncio.sleep(0.02)
        expired_after = time.monotonic() - stopped_at
        # The lease (0.5 s less the margin) counts from the last renewal's send.
        assert expired_after <= timings["leader_timeout"] + 1.0, expired_after
        reply = await fetch(https, f"{base}/health/leadership")
        assert reply.status == 404 and reply.json()["reason"] == "lease expired"  # type: ignore[index]

        end = stopped_at + watchdog + WAIT
        while (healthz := await fetch(https, f"{base}/healthz")).status == 200:
            assert time.monotonic() < end, "/healthz never noticed the frozen loop"
            await asyncio.sleep(0.05)
        assert healthz.status == 503 and b"'default' is stuck" in healthz.body
        # The last heartbeat came at most one step (a write: storage_timeout) before the stop.
        assert time.monotonic() - stopped_at >= watchdog - timings["storage_timeout"] - 0.1

        os.kill(proc.pid, signal.SIGCONT)
        end = time.monotonic() + WAIT
        while (await fetch(https, f"{base}/healthz")).status != 200:
            assert time.monotonic() < end, "/healthz did not recover after SIGCONT"
            await asyncio.sleep(0.05)
        # It is leader again once it has re-read the record and waited out its own lease.
        end = time.monotonic() + WAIT
        while await leadership_status() != 200:
            assert time.monotonic() < end, "the thawed elector did not lead again"
            await asyncio.sleep(0.05)

        # Killing the elector's process takes its health server down with it.
        proc.kill()
        proc.wait(timeout=10)
        await wait_gone([info["health_pid"], *info["workers"]])
        # ... and the orphaned server deleted its certificate and key on the way out.
        assert not Path(info["dir"]).exists(), "the dead elector's key files were left behind"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        # The killed owner left its segment; taking the name over replaces it,
        # and closing removes it.
        LeadershipTable(args["table"]).close()
    assert not Path(shm_path(args["table"])).exists()


# --------------------------------------------------------------------------- #
# The handler on its own
# --------------------------------------------------------------------------- #


def test_app_handlers_without_a_server(table: LeadershipTable) -> None:
    app = HealthApp(table.name, {"/x": "cluster"})
    assert app.leadership("cluster")[0] == 404
    lead(table.slot("cluster", "n1"), "n1")
    status, body = app.leadership("cluster")
    assert status == 200 and json.loads(body)["leaderID"] == "n1"
    assert app.healthz() == (200, b"ok\n")


def test_app_answers_503_while_the_slot_stays_busy(table: LeadershipTable) -> None:
    """A snapshot the seqlock never grants is "ask again", never a guess."""

    class BusyReader:
        closed = False
        stale = False

        def is_leader(self, election: str = "default") -> bool:
            return True

        def status(self, election: str = "default") -> dict[str, Any] | None:
            raise FastelectError("leadership slot stayed busy")

        def elections(self) -> list[str]:
            return ["cluster"]

        def seq(self, election: str = "default") -> int:
            return 1  # a write in progress

    app = HealthApp(table.name, {"/x": "cluster"})
    app._reader = BusyReader()  # type: ignore[assignment]
    app._owner_checked = time.monotonic() + 3600  # no re-attach during the test
    status, body = app.leadership("cluster")
    assert status == 503 and json.loads(body)["reason"] == "leadership table busy, retry"
    assert app.healthz() == (200, b"ok\n")  # a slot being written is alive
    assert b'election="cluster"' not in render_metrics(app.reader(), monotonic_ns())


class CountingReader:
    """Delegates to a real TableReader and counts the snapshots taken through it."""

    def __init__(self, reader: Any, *, seq: bool = True) -> None:
        self.inner = reader
        self.snapshots = 0
        self.with_seq = seq

    closed = property(lambda self: self.inner.closed)
    stale = property(lambda self: self.inner.stale)

    def is_leader(self, election: str = "default") -> bool:
        return bool(self.inner.is_leader(election))

    def status(self, election: str = "default") -> dict[str, Any] | None:
        self.snapshots += 1
        result: dict[str, Any] | None = self.inner.status(election)
        return result

    def elections(self) -> list[str]:
        return list(self.inner.elections())

    def seq(self, election: str = "default") -> int:
        # -1 (odd) is what a reader answers for a slot it cannot see: no caching.
        return int(self.inner.seq(election)) if self.with_seq else -1


def counting_app(table: LeadershipTable, *, seq: bool = True) -> tuple[HealthApp, CountingReader]:
    """A HealthApp on ``table`` whose snapshots are counted (no re-attach during the test)."""
    assert table.name is not None
    app = HealthApp(table.name, {"/x": "cluster"})
    real = app.reader()
    assert real is not None
    counting = CountingReader(real, seq=seq)
    app._reader = counting  # type: ignore[assignment]
    app._owner_checked = time.monotonic() + 3600
    return app, counting


def expected_body(reader: Any, election: str, last_updated: str) -> bytes:
    """What the handler answered before bodies were cached: one orjson dump of the record."""
    import orjson

    st = reader.status(election)
    return orjson.dumps(
        {
            "leaderID": st["leader_id"],
            "leaderAddr": st["leader_addr"],
            "lastUpdated": last_updated,
            "term": st["term"],
            "etag": st["etag"],
        }
    )


def test_app_reuses_its_answer_until_the_slot_is_written(table: LeadershipTable) -> None:
    """Unchanged slot: no snapshot, no encoding; every write (renewal, heartbeat): a new one."""
    slot = table.slot("cluster", "n1")
    campaign = lead(slot, "n1", 'addr "quoted"\\:1', etag='"etag-1"')
    app, counting = counting_app(table)

    status, body = app.leadership("cluster")
    assert status == 200 and counting.snapshots == 1
    stamp = json.loads(body)["lastUpdated"]
    assert body == expected_body(counting.inner, "cluster", stamp)
    for _ in range(50):
        status, again = app.leadership("cluster")
        assert status == 200
        assert again == expected_body(counting.inner, "cluster", json.loads(again)["lastUpdated"])
    assert counting.snapshots == 1, "a snapshot was taken although the slot did not change"

    # A renewal writes a new etag: the very next answer carries it.
    now = monotonic_ns()
    campaign.poll(now)
    campaign.begin_write(now)
    campaign.write_succeeded(now, '"etag-2"', time.time_ns())
    status, body = app.leadership("cluster")
    assert status == 200 and json.loads(body)["etag"] == '"etag-2"'
    assert counting.snapshots == 2

    # A heartbeat is a write too: a new snapshot, the same record.
    slot.heartbeat(monotonic_ns(), 10**9)
    status, body = app.leadership("cluster")
    assert status == 200 and json.loads(body)["etag"] == '"etag-2"'
    assert counting.snapshots == 3


def test_app_cached_answer_ends_with_the_lease(table: LeadershipTable) -> None:
    """A frozen elector writes nothing: the cached 200 still turns to 404 at the deadline."""
    slot = table.slot("cluster", "n1")
    lead(slot, "n1", lease_s=0.3)
    app, counting = counting_app(table)
    assert app.leadership("cluster")[0] == 200
    # The lease runs out with no write to the slot (seq unchanged); the only
    # event is the deadline itself, so wait for it exactly.
    time.sleep(max(0, slot.lease_remaining_ns()) / 1e9)
    assert not slot.is_leader()
    status, body = app.leadership("cluster")
    assert status == 404 and json.loads(body)["reason"] == "lease expired"
    # And the 404 is reused too, until the slot is written.
    snapshots = counting.snapshots
    assert app.leadership("cluster")[0] == 404
    assert counting.snapshots == snapshots


def test_app_without_the_fast_path_answers_the_same(table: LeadershipTable) -> None:
    """A seq word that never settles (always odd): a snapshot per request, same answers."""
    lead(table.slot("cluster", "n1"), "n1")
    app, counting = counting_app(table, seq=False)
    for n in range(1, 4):
        status, body = app.leadership("cluster")
        assert status == 200 and json.loads(body)["leaderID"] == "n1"
        assert counting.snapshots == n
    assert app.leadership("never")[0] == 404


def test_app_follows_a_replaced_table(table: LeadershipTable) -> None:
    """Closed and re-created under the same name: nothing cached from the old one is used."""
    assert table.name is not None
    lead(table.slot("cluster", "n1"), "n1", etag='"old"')
    app = HealthApp(table.name, {"/x": "cluster"})
    assert json.loads(app.leadership("cluster")[1])["etag"] == '"old"'
    table.close()
    assert app.leadership("cluster")[0] == 404
    successor = LeadershipTable(table.name)
    try:
        successor.slot("other")  # a different slot order than before
        lead(successor.slot("cluster", "n2"), "n2", etag='"new"')
        status, body = app.leadership("cluster")
        assert status == 200 and json.loads(body) | {"lastUpdated": ""} == {
            "leaderID": "n2",
            "leaderAddr": "127.0.0.1:1",
            "lastUpdated": "",
            "term": 1,
            "etag": '"new"',
        }
    finally:
        successor.close()
