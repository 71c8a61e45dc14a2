"""A loopback HTTP server that records S3 requests and forwards or fakes the answers.

For the lean-path differential tests: :class:`S3Tap` sits between an
S3Storage and a real S3 server (moto, SeaweedFS) and records every request
(method, path, query, headers, body) before forwarding it unchanged, Host
header included, so signatures still verify upstream. Set :attr:`S3Tap.fake`
to answer instead with a canned status and body, to reset the connection, or
to hold the request unanswered (the client's timeout then fires). It runs in
threads, so async tests on any loop can use it.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Captured", "Fake", "S3Tap"]

_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})


@dataclass(frozen=True)
class Captured:
    """One request as it arrived."""

    method: str
    path: str
    query: str
    #: Header names lowercased.
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Fake:
    """A canned answer: ``status`` with ``body``, or ``"reset"`` / ``"hang"``."""

    status: int | str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class S3Tap:
    """Records requests to ``upstream`` and forwards them, or answers with :attr:`fake`."""

    def __init__(self, upstream: str | None = None) -> None:
        if upstream is not None:
            parts = urlsplit(upstream)
            assert parts.hostname and parts.port, upstream
            self.upstream: tuple[str, int] | None = (parts.hostname, parts.port)
        else:
            self.upstream = None
        #: None: forward upstream; else answer every request with this.
        self.fake: Fake | None = None
        self.requests: list[Captured] = []
        self.url = ""
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def take(self) -> list[Captured]:
        """The requests recorded since the last call."""
        with self._lock:
            taken, self.requests = self.requests, []
        return taken

    def __enter__(self) -> S3Tap:
        tap = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as both paths pool connections

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                tap._handle(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._release.set()  # let held ("hang") handlers finish
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the tap's thread did not stop"

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path, _, query = handler.path.partition("?")
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._lock:
            self.requests.append(Captured(handler.command, path, query, headers, body))
        fake = self.fake
        if fake is not None:
            self._answer(handler, fake)
            return
        assert self.upstream is not None, "no upstream and no fake answer"
        forward = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP}
        conn = http.client.HTTPConnection(*self.upstream, timeout=10)
        try:
            # skip_host: the signed Host header goes upstream unchanged.
            conn.putrequest(
                handler.command, handler.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in forward.items():
                conn.putheader(name, value)
            conn.endheaders(body if body else None)
            response = conn.getresponse()
            data = response.read()
            handler.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP and name.lower() != "content-length":
                    handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        finally:
            conn.close()

    def _answer(self, handler: BaseHTTPRequestHandler, fake: Fake) -> None:
        if fake.status == "hang":
            self._release.wait(30)
            handler.close_connection = True
            return
        if fake.status == "reset":
            # SO_LINGER 0: close sends RST, the client sees a reset, not a clean EOF.
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            handler.close_connection = True
            return
        assert isinstance(fake.status, int)
        handler.send_response_only(fake.status)
        for name, value in fake.headers.items():
            handler.send_header(name, value)
        if fake.status != 304:
            handler.send_header("Content-Length", str(len(fake.body)))
        handler.end_headers()
        if fake.status != 304 and handler.command != "HEAD":
            handler.wfile.write(fake.body)


def header_subset(captured: Captured, names: Iterator[str] | tuple[str, ...]) -> dict[str, str]:
    """The named headers (lowercase) that ``captured`` carries."""
    return {name: captured.headers[name] for name in names if name in captured.headers}
