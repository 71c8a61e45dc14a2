"""Peer checks: ask the leader's own health endpoint instead of the bucket.

A stable follower in peer mode sends ``GET https://{leaderAddr}{path}`` over
one pooled keep-alive HTTPS client that trusts only the configured CA and
checks the certificate's hostname or IP.  An answer counts only if it is a
200 *from that peer itself* whose JSON (at most :data:`MAX_ANSWER_BYTES`)
names the leader we expect: redirects are never followed (a 3xx is a failed
check, wherever it points -- a plain-HTTP ``Location`` would otherwise let
anyone on the path answer for the leader).  Anything else sends the follower
back to reading storage.  A peer answer never makes anyone take over:
takeover is always a CAS on the lock record.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

import aiohttp
import orjson

from .errors import TLSError
from .tls import client_ssl_context

__all__ = ["MAX_ANSWER_BYTES", "PeerAnswer", "PeerChecker"]

_log = logging.getLogger(__name__)
#: A health answer is a small JSON object (a few hundred bytes: ids of at
#: most a few hundred bytes each); a bigger body fails the check unread.
MAX_ANSWER_BYTES = 4096
#: Seconds an idle pooled connection is kept.  Below the health server's
#: default ``idle_timeout`` (5 s), so the client drops a connection before
#: the server may close it under a request being sent.
_KEEPALIVE_S = 4.0


_TOO_LARGE = f"answer is larger than {MAX_ANSWER_BYTES} bytes"


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """What one peer check found: ``ok`` only for a 200 naming ``expected``."""

    ok: bool
    leader_id: str = ""
    etag: str = ""
    reason: str = ""


def _client_context(ca_pem: bytes) -> ssl.SSLContext:
    # The one client context fastelect builds: this CA only, hostname/IP checked.
    try:
        return client_ssl_context(ca_pem)
    except TLSError as exc:
        raise TLSError(f"peer_ca_cert is not a valid PEM CA certificate: {exc}") from exc


class PeerChecker:
    """One keep-alive HTTPS client for an elector's peer checks."""

    def __init__(self, ca_pem: bytes, timeout: float) -> None:
        self._ssl = _client_context(ca_pem)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=4, keepalive_timeout=_KEEPALIVE_S)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, raise_for_status=False
            )
        return self._session

    async def check(self, leader_addr: str, path: str, expected_leader: str) -> PeerAnswer:
        """Ask ``leader_addr`` whether it leads; never raises for network trouble."""
        if not leader_addr:
            return PeerAnswer(False, reason="the record names no leader address")
        url = f"https://{leader_addr}{path}"
        body = bytearray()
        try:
            # Only the verified peer's own answer counts: no redirects.
            async with self._client().get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    where = resp.headers.get("Location", "")
                    to = f" to {where[:200]!r} (redirects are not followed)" if where else ""
                    return PeerAnswer(False, reason=f"HTTP {resp.status}{to}")
                if (resp.content_length or 0) > MAX_ANSWER_BYTES:
                    return PeerAnswer(False, reason=_TOO_LARGE)
                # Read to the end (one read() may return part of the body),
                # but never more than a health answer can reasonably be.
                async for chunk in resp.content.iter_chunked(MAX_ANSWER_BYTES):
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        return PeerAnswer(False, reason=_TOO_LARGE)
        except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
            return PeerAnswer(False, reason=f"{type(exc).__name__}: {exc}")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return PeerAnswer(False, reason="answer is not JSON")
        if not isinstance(data, dict):
            return PeerAnswer(False, reason="answer is not a JSON object")
        leader = data.get("leaderID")
        etag = data.get("etag", "")
        if not isinstance(leader, str) or not isinstance(etag, str):
            return PeerAnswer(False, reason="answer has no string leaderID")
        if leader != expected_leader:
            return PeerAnswer(False, leader, reason=f"peer names {leader!r}")
        return PeerAnswer(True, leader, etag)

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
            # Let aiohttp's SSL transports finish closing before the loop goes.
            await asyncio.sleep(0)
