"""Helpers for the health-server, shared-memory and peer tests.

Import as ``from health_helpers import ...`` (pytest puts ``tests/`` on sys.path).
"""

from __future__ import annotations

import contextlib
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from fastelect._core import Action, Campaign, Slot, monotonic_ns
from fastelect.health import HealthServer, HealthServerConfig
from fastelect.tls import TLSCertificate
from helpers import wait_until

__all__ = [
    "Reply",
    "alive",
    "client_context",
    "fetch",
    "lead",
    "serving",
    "table_name",
    "wait_gone",
    "wait_until",
]

_NS = 1_000_000_000


def table_name(prefix: str = "t") -> str:
    """A leadership-table name unique to this test (the core allows 24 characters)."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def lead(
    slot: Slot,
    server_id: str = "me",
    server_addr: str = "127.0.0.1:1",
    *,
    lease_s: float = 600.0,
    etag: str = '"etag-1"',
) -> Campaign:
    """Make ``slot`` hold a lease of ``lease_s`` seconds from now, without any storage.

    Drives the real compiled state machine (read: missing → create → write
    succeeded) with real monotonic timestamps, so the slot looks exactly as
    an elector that just won would leave it.  The returned campaign can
    ``begin_release`` / write again to change the slot further.
    """
    now = monotonic_ns()
    lease = int(lease_s * _NS)
    c = Campaign(slot, server_id, server_addr, lease, lease // 10, lease // 5, lease // 20, -1)
    assert c.poll(now) == Action.READ
    c.observe_missing(now)
    assert c.poll(now) == Action.CREATE
    c.begin_write(now)
    c.write_succeeded(now, etag, time.time_ns())
    assert slot.is_leader(), "the helper campaign did not become leader"
    return c


def client_context(ca_pem: bytes, *, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context trusting only ``ca_pem`` (hostname/IP checked)."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


@dataclass(frozen=True)
class Reply:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        """The body parsed as JSON."""
        import orjson

        return orjson.loads(self.body)


async def fetch(
    session: aiohttp.ClientSession, url: str, method: str = "GET", *, timeout: float = 5.0
) -> Reply:
    """One request; headers are lower-cased."""
    async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        body = await resp.read()
        headers = {k.lower(): v for k, v in resp.headers.items()}
        return Reply(resp.status, headers, body)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


async def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until none of ``pids`` is alive."""
    await wait_until(
        lambda: not [p for p in pids if alive(p)],
        timeout,
        f"processes still alive: {[p for p in pids if alive(p)]}",
    )


@contextlib.asynccontextmanager
async def serving(
    cert: TLSCertificate,
    table: str,
    routes: Mapping[str, str],
    *,
    bind: str = "127.0.0.1:0",
    workers: int = 1,
) -> AsyncIterator[HealthServer]:
    """A started HealthServer for ``table``, stopped on exit."""
    server = HealthServer(HealthServerConfig(bind, cert, workers), table, routes)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
