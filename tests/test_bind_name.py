"""The health server's bind address may name a host: resolved at start, as Go's listener.

Real servers on loopback: the host name is this machine's own name when it
resolves to a loopback address (as /etc/hosts usually makes it), and names
under ``.invalid`` (RFC 2606: never resolvable) for the failure.
"""

from __future__ import annotations

import socket
import time

import aiohttp
import pytest

from fastelect.errors import HealthServerError
from fastelect.health import HealthServer, HealthServerConfig
from fastelect.tls import CertificateAuthority
from health_helpers import client_context, fetch, serving, table_name

ROUTES = {"/health/leadership": "default"}


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def loopback_name() -> str | None:
    """A host name (not 'localhost', which the parser maps itself) that resolves to loopback."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError:
        return None
    addresses = {info[4][0] for info in infos}
    return name if name != "localhost" and addresses == {"127.0.0.1"} else None


@pytest.mark.asyncio
async def test_a_host_name_is_resolved_and_bound(ca: CertificateAuthority) -> None:
    name = loopback_name()
    if name is None:
        pytest.skip("this machine's host name does not resolve to 127.0.0.1 only")
    cert = ca.issue(common_name="fastelect-test", ip_addresses=["127.0.0.1"])
    async with serving(cert, table_name(), ROUTES, bind=f"{name}:0") as server:
        assert server.host == "127.0.0.1", server.host
        connector = aiohttp.TCPConnector(ssl=client_context(ca.cert_pem))
        async with aiohttp.ClientSession(connector=connector) as session:
            # It answers on the address the name resolved to (503: no table yet).
            reply = await fetch(session, f"https://127.0.0.1:{server.port}/healthz")
        assert reply.status == 503, reply


@pytest.mark.asyncio
async def test_an_unresolvable_host_name_is_a_clear_error(ca: CertificateAuthority) -> None:
    cert = ca.issue(common_name="fastelect-test", ip_addresses=["127.0.0.1"])
    server = HealthServer(HealthServerConfig("no-such-host.invalid:0", cert), table_name(), ROUTES)
    started = time.monotonic()
    with pytest.raises(HealthServerError, match=r"no-such-host\.invalid.*does not resolve"):
        await server.start()
    assert time.monotonic() - started < 6.0, "resolution was not bounded"
    assert not server.running and server.pid is None
