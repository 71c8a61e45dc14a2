"""Peer mode: followers ask the leader's health server instead of the bucket.

The checker is exercised against the real granian server (and, for answers
granian would never give, a small aiohttp HTTPS server on loopback); the
elector's peer path runs end to end on the moto S3 server, counting storage
requests at the storage layer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from fastelect import Elector, ElectorConfig, LeadershipTable
from fastelect.errors import TLSError
from fastelect.peer import PeerChecker
from fastelect.storage import S3Storage
from fastelect.tls import (
    CertificateAuthority,
    TLSCertificate,
    client_ssl_context,
    server_ssl_context,
)
from health_helpers import lead, serving, table_name, wait_until
from helpers import free_port, make_s3_storage

PATH = "/health/leadership"
ROUTES = {PATH: "default"}
WAIT = 15.0  # seconds: bound on every wait for an election outcome


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    """The CA the fleet trusts."""
    return CertificateAuthority.create(common_name="fleet CA")


@pytest.fixture(scope="module")
def cert(ca: CertificateAuthority) -> TLSCertificate:
    """The leader's health-server certificate (loopback IP)."""
    return ca.issue(common_name="leader", ip_addresses=["127.0.0.1"])


@pytest.fixture
def table() -> Any:
    """A named leadership table, removed after the test."""
    t = LeadershipTable(table_name("peer"))
    try:
        yield t
    finally:
        t.close()


@asynccontextmanager
async def checker(ca_pem: bytes, timeout: float = 2.0) -> AsyncIterator[PeerChecker]:
    """A PeerChecker, closed on exit."""
    peer = PeerChecker(ca_pem, timeout)
    try:
        yield peer
    finally:
        await peer.close()


# --------------------------------------------------------------------------- #
# The checker against the real granian server
# --------------------------------------------------------------------------- #


@pytest.mark.asyncio
async def test_checker_accepts_only_the_expected_live_leader(
    ca: CertificateAuthority, cert: TLSCertificate, table: LeadershipTable
) -> None:
    lead(table.slot("default", "n1"), "n1", etag='"tag-7"')
    async with serving(cert, table.name, ROUTES) as server, checker(ca.cert_pem) as peer:
        addr = f"127.0.0.1:{server.port}"
        ok = await peer.check(addr, PATH, "n1")
        assert ok.ok and ok.leader_id == "n1" and ok.etag == '"tag-7"', ok

        other = await peer.check(addr, PATH, "n2")
        assert not other.ok and other.leader_id == "n1" and "names 'n1'" in other.reason

        missing = await peer.check(addr, "/health/leadership/nope", "n1")
        assert not missing.ok and missing.reason == "HTTP 404"
        assert not (await peer.check("", PATH, "n1")).ok


@pytest.mark.asyncio
async def test_checker_rejects_a_follower_and_an_expired_lease(
    ca: CertificateAuthority, cert: TLSCertificate, table: LeadershipTable
) -> None:
    slot = table.slot("default", "n1")
    async with serving(cert, table.name, ROUTES) as server, checker(ca.cert_pem) as peer:
        addr = f"127.0.0.1:{server.port}"
        follower = await peer.check(addr, PATH, "n1")
        assert not follower.ok and follower.reason == "HTTP 404"
        campaign = lead(slot, "n1", lease_s=0.3)
        assert (await peer.check(addr, PATH, "n1")).ok
        deadline = campaign.deadline_ns
        await wait_until(lambda: not slot.is_leader(), WAIT, "the lease never ended")
        expired = await peer.check(addr, PATH, "n1")
        assert not expired.ok and expired.reason == "HTTP 404", (expired, deadline)


@pytest.mark.asyncio
async def test_checker_rejects_a_peer_certified_by_another_ca(
    cert: TLSCertificate, table: LeadershipTable
) -> None:
    lead(table.slot("default", "n1"), "n1")
    stranger = CertificateAuthority.create(common_name="another CA")
    async with serving(cert, table.name, ROUTES) as server, checker(stranger.cert_pem) as peer:
        answer = await peer.check(f"127.0.0.1:{server.port}", PATH, "n1")
    assert not answer.ok
    assert "certificate verify failed" in answer.reason, answer


@pytest.mark.asyncio
async def test_checker_checks_the_peer_address_against_the_certificate(
    ca: CertificateAuthority, table: LeadershipTable
) -> None:
    # Signed by the right CA, but for another address than the one we dial.
    wrong_ip = ca.issue(common_name="elsewhere", ip_addresses=["192.0.2.10"])
    lead(table.slot("default", "n1"), "n1")
    async with serving(wrong_ip, table.name, ROUTES) as server, checker(ca.cert_pem) as peer:
        answer = await peer.check(f"127.0.0.1:{server.port}", PATH, "n1")
    assert not answer.ok
    assert "IP address mismatch" in answer.reason or "doesn't match" in answer.reason, answer


@pytest.mark.asyncio
async def test_checker_handles_an_unreachable_peer(ca: CertificateAuthority) -> None:
    async with checker(ca.cert_pem, timeout=1.0) as peer:
        started = time.monotonic()
        answer = await peer.check(f"127.0.0.1:{free_port()}", PATH, "n1")
    assert not answer.ok and answer.reason
    assert time.monotonic() - started < 1.0


def test_checker_uses_the_one_client_context(
    ca: CertificateAuthority, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peer checks trust exactly what tls.client_ssl_context trusts, verified the same way."""
    # ssl.create_default_context (the checker's former own context) honours
    # SSLKEYLOGFILE and would write the session secrets there; ours never does.
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys.log"))
    mine = PeerChecker(ca.cert_pem, 1.0)._ssl
    reference = client_ssl_context(ca.cert_pem)
    attrs = ("protocol", "minimum_version", "verify_mode", "check_hostname", "options")
    for attr in (*attrs, "keylog_filename", "post_handshake_auth"):
        assert getattr(mine, attr) == getattr(reference, attr), attr
    assert mine.keylog_filename is None
    assert mine.get_ca_certs() == reference.get_ca_certs() and len(mine.get_ca_certs()) == 1
    # A bundle with text around the PEM block (openssl x509 -text output) is cleaned, not refused.
    noisy = b"Certificate:\n    Data: ...\n" + ca.cert_pem + b"trailing words\n"
    assert PeerChecker(noisy, 1.0)._ssl.get_ca_certs() == reference.get_ca_certs()


def test_checker_needs_a_pem_ca() -> None:
    with pytest.raises(TLSError, match="peer_ca_cert"):
        PeerChecker(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", 1.0)
    with pytest.raises(TLSError):
        PeerChecker(b"\xff\xfe", 1.0)


# --------------------------------------------------------------------------- #
# Answers granian would never give: a hand-made HTTPS server
# --------------------------------------------------------------------------- #

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def crafted(cert: TLSCertificate, handler: Handler) -> AsyncIterator[str]:
    """An aiohttp HTTPS server on loopback answering every request with ``handler``."""
    app = web.Application()
    app.router.add_get(PATH, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(cert))
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"leaderID": 5}', "no string leaderID"),
        (b'{"leaderID": "n1", "etag": 3}', "no string leaderID"),
        (b"{}", "no string leaderID"),
        (b'{"leaderID": "n1", "pad": "' + b"x" * 5_000 + b'"}', "larger than 4096 bytes"),
    ],
)
@pytest.mark.asyncio
async def test_checker_rejects_malformed_answers(
    ca: CertificateAuthority, cert: TLSCertificate, body: bytes, reason: str
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async with crafted(cert, handler) as addr, checker(ca.cert_pem) as peer:
        answer = await peer.check(addr, PATH, "n1")
    assert not answer.ok and reason in answer.reason, answer


@pytest.mark.asyncio
async def test_checker_stops_reading_an_endless_answer(
    ca: CertificateAuthority, cert: TLSCertificate
) -> None:
    # Chunked, no Content-Length: the size is known only by reading.
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"leaderID": "n1", "pad": "')
        for _ in range(1000):  # 1 MB if read to the end
            await response.write(b"x" * 1000)
        await response.write(b'"}')
        await response.write_eof()
        return response

    async with crafted(cert, handler) as addr, checker(ca.cert_pem) as peer:
        answer = await peer.check(addr, PATH, "n1")
    assert not answer.ok and "larger than 4096 bytes" in answer.reason, answer


@pytest.mark.asyncio
async def test_checker_never_follows_a_redirect_to_plain_http(
    ca: CertificateAuthority, cert: TLSCertificate
) -> None:
    # A correctly certified peer answers 302 to a plain-HTTP server that
    # returns the leader's JSON: that answer did not come from the verified
    # peer, over TLS, so it must never count.
    plain_hits = 0

    async def plaintext(request: web.Request) -> web.Response:
        nonlocal plain_hits
        plain_hits += 1
        return web.json_response({"leaderID": "n1", "etag": "e"})

    app = web.Application()
    app.router.add_get(PATH, plaintext)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    plain_port = runner.addresses[0][1]
    target = f"http://127.0.0.1:{plain_port}{PATH}"

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(target)

    try:
        async with crafted(cert, redirect) as addr, checker(ca.cert_pem) as peer:
            answers = [await peer.check(addr, PATH, "n1") for _ in range(15)]
    finally:
        await runner.cleanup()
    accepted = [a for a in answers if a.ok]
    assert not accepted, f"{len(accepted)} of 15 answers via a redirect to {target} counted"
    assert all(a.reason.startswith("HTTP 302") and target in a.reason for a in answers), answers
    assert plain_hits == 0, f"the checker followed the redirect {plain_hits} times"


@pytest.mark.asyncio
async def test_checker_accepts_an_s3lect_answer_without_etag(
    ca: CertificateAuthority, cert: TLSCertificate
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"leaderID": "go-node", "leaderAddr": "x", "term": 0})

    async with crafted(cert, handler) as addr, checker(ca.cert_pem) as peer:
        answer = await peer.check(addr, PATH, "go-node")
    assert answer.ok and answer.etag == ""


@pytest.mark.asyncio
async def test_checker_reads_an_answer_sent_in_pieces(
    ca: CertificateAuthority, cert: TLSCertificate
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"leaderID": "n1",')
        await asyncio.sleep(0.05)  # a second TLS record, after a pause
        await response.write(b' "etag": "e"}')
        await response.write_eof()
        return response

    async with crafted(cert, handler) as addr, checker(ca.cert_pem) as peer:
        answer = await peer.check(addr, PATH, "n1")
    assert answer.ok and answer.etag == "e", answer


@pytest.mark.asyncio
async def test_checker_times_out_a_slow_peer(
    ca: CertificateAuthority, cert: TLSCertificate
) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()  # never answers in time
        return web.json_response({"leaderID": "n1"})

    async with crafted(cert, handler) as addr, checker(ca.cert_pem, timeout=0.3) as peer:
        started = time.monotonic()
        answer = await peer.check(addr, PATH, "n1")
        elapsed = time.monotonic() - started
        release.set()
    assert not answer.ok and "Timeout" in answer.reason, answer
    assert elapsed < 2.0, elapsed


@pytest.mark.asyncio
async def test_checker_keeps_one_connection_alive(
    ca: CertificateAuthority, cert: TLSCertificate
) -> None:
    connections: set[int] = set()

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        connections.add(id(request.transport))
        return web.json_response({"leaderID": "n1", "etag": "e"})

    async with crafted(cert, handler) as addr, checker(ca.cert_pem) as peer:
        for _ in range(5):
            assert (await peer.check(addr, PATH, "n1")).ok
    assert len(connections) == 1, "each check opened a new TLS connection"


# --------------------------------------------------------------------------- #
# Electors in peer mode on S3 (moto)
# --------------------------------------------------------------------------- #

# F = 0.1 s: a follower checks its peer ten times a second.
TIMINGS: dict[str, Any] = {
    "frequent_interval": 0.1,
    "infrequent_interval": 0.2,
    # A lease with room for a slow moto on a loaded CI box.
    "leader_timeout": 2.0,
    "storage_timeout": 1.5,
    "peer_timeout": 0.5,
}
F = TIMINGS["frequent_interval"]


def counters(elector: Elector) -> dict[str, int]:
    """The elector's table counters."""
    status = elector.slot.status()
    assert status is not None
    result: dict[str, int] = status["counters"]
    return result


def successes(elector: Elector) -> int:
    """Peer checks that found the leader alive."""
    c = counters(elector)
    return c["peer_checks"] - c["peer_failures"]


async def settle_in_peer_mode(followers: list[Elector], more_than: list[int] | None = None) -> None:
    """Wait until every follower made 3 more successful peer checks than ``more_than``."""
    base = more_than or [0] * len(followers)
    await wait_until(
        lambda: all(successes(f) >= b + 3 for f, b in zip(followers, base, strict=True)),
        WAIT,
        "followers never settled into peer checks",
    )


async def assert_no_reads_while_checking(
    followers: list[Elector], storages: list[S3Storage], checks: int = 10
) -> None:
    """Over ``checks`` more peer checks per follower, no storage read at all."""
    gets = [s.stats.gets for s in storages]
    base = [counters(f)["peer_checks"] for f in followers]
    await wait_until(
        lambda: all(
            counters(f)["peer_checks"] >= b + checks for f, b in zip(followers, base, strict=True)
        ),
        WAIT,
        f"followers did not make {checks} more peer checks",
    )
    after = [s.stats.gets for s in storages]
    assert after == gets, f"storage reads while the leader was healthy: {gets} -> {after}"


@asynccontextmanager
async def fleet(
    moto_server: str, bucket: str, size: int
) -> AsyncIterator[tuple[list[S3Storage], list[Elector]]]:
    """``size`` S3Storage clients on one lock prefix; every elector appended is stopped."""
    prefix = f"peer-{uuid.uuid4().hex}"
    storages = [make_s3_storage(moto_server, bucket, prefix=prefix) for _ in range(size)]
    electors: list[Elector] = []
    try:
        yield storages, electors
    finally:
        for elector in electors:
            await elector.stop()
        for storage in storages:
            await storage.close()


def follower(name: str, storage: S3Storage, ca_pem: bytes) -> Elector:
    """A peer-mode elector (its own address is never dialled in these tests)."""
    config = ElectorConfig(
        "leader.json",
        name,
        f"127.0.0.1:{free_port()}",
        peer_mode=True,
        peer_ca_cert=ca_pem,
        **TIMINGS,
    )
    return Elector(config, storage)


@pytest.mark.s3
@pytest.mark.one_loop  # several electors over real S3 and HTTPS: once is enough
@pytest.mark.asyncio
async def test_peer_mode_makes_no_storage_reads_and_falls_back_when_the_peer_dies(
    ca: CertificateAuthority,
    cert: TLSCertificate,
    table: LeadershipTable,
    moto_server: str,
    s3_bucket: str,
) -> None:
    async with (
        fleet(moto_server, s3_bucket, 3) as (storages, electors),
        serving(cert, table.name, ROUTES) as health,
    ):
        leader_cfg = ElectorConfig("leader.json", "leader", f"127.0.0.1:{health.port}", **TIMINGS)
        leader = Elector(leader_cfg, storages[0], table=table)
        electors.append(leader)
        await leader.start()
        await asyncio.wait_for(leader.wait_for_leadership(), WAIT)
        term = leader.term
        followers = [follower(f"follower-{i}", storages[i], ca.cert_pem) for i in (1, 2)]
        electors.extend(followers)
        for f in followers:
            await f.start()

        await settle_in_peer_mode(followers)
        # Steady state: zero storage reads anywhere (the leader only writes).
        await assert_no_reads_while_checking(followers, storages)
        assert all(counters(f)["peer_failures"] == 0 for f in followers)
        assert leader.is_leader() and not any(f.is_leader() for f in followers)

        # The leader's health server dies (main and workers at once).
        gets = [s.stats.gets for s in storages[1:]]
        assert health.pid is not None
        killed_at = time.monotonic()
        os.killpg(health.pid, signal.SIGKILL)
        fell_back_at = await wait_until(
            lambda: all(s.stats.gets > g for s, g in zip(storages[1:], gets, strict=True)),
            WAIT,
            "followers did not go back to storage after the peer died",
        )
        elapsed = fell_back_at - killed_at
        # The next check (due within F) fails at once and sends each follower to
        # storage: about F here (0.1 s); the bound leaves room for a loaded CI box.
        assert elapsed <= F + 0.9, f"fell back after {elapsed:.3f}s, interval {F}s"
        assert all(counters(f)["peer_failures"] >= 1 for f in followers)
        # A failed peer check alone never makes anyone take over.
        assert leader.is_leader() and leader.term == term
        assert not any(f.is_leader() for f in followers)

        # The supervisor brings the health server back; followers return to peer checks.
        await wait_until(lambda: health.restarts == 1, WAIT, "health server was not restarted")
        await settle_in_peer_mode(followers, more_than=[successes(f) for f in followers])
        await assert_no_reads_while_checking(followers, storages, checks=5)
        assert leader.is_leader() and leader.term == term


@pytest.mark.s3
@pytest.mark.one_loop
@pytest.mark.asyncio
async def test_peer_certified_by_another_ca_is_never_trusted_until_fixed(
    ca: CertificateAuthority,
    cert: TLSCertificate,
    table: LeadershipTable,
    moto_server: str,
    s3_bucket: str,
) -> None:
    stranger = CertificateAuthority.create(common_name="another CA")
    async with (
        fleet(moto_server, s3_bucket, 2) as (storages, electors),
        serving(cert, table.name, ROUTES) as health,
    ):
        leader_cfg = ElectorConfig("leader.json", "leader", f"127.0.0.1:{health.port}", **TIMINGS)
        leader = Elector(leader_cfg, storages[0], table=table)
        electors.append(leader)
        await leader.start()
        await asyncio.wait_for(leader.wait_for_leadership(), WAIT)
        doubter = follower("doubter", storages[1], stranger.cert_pem)
        electors.append(doubter)
        await doubter.start()

        await wait_until(
            lambda: counters(doubter)["peer_failures"] >= 3,
            WAIT,
            "the follower never tried (and failed) to check its peer",
        )
        # Every check failed, so it kept reading storage, and never took over.
        assert counters(doubter)["peer_failures"] == counters(doubter)["peer_checks"]
        gets = storages[1].stats.gets
        await wait_until(lambda: storages[1].stats.gets > gets + 2, WAIT, "no storage reads")
        assert leader.is_leader() and not doubter.is_leader()

        # Given the right CA on the fly, it settles into peer checks.
        doubter.enable_peer_mode(ca.cert_pem)
        failures = counters(doubter)["peer_failures"]
        await settle_in_peer_mode([doubter])
        assert counters(doubter)["peer_failures"] <= failures + 1
        await assert_no_reads_while_checking([doubter], storages[1:], checks=5)
