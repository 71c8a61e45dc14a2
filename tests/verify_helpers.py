"""Stores that break fastelect's assumptions, for the ``fastelect check`` tests.

:class:`S3Proxy` is a real HTTP server on loopback in front of a real S3
server (moto) that can drop ``If-Match`` / ``If-None-Match`` from every
request, as some S3-compatible gateways silently do, and shift the ``Date``
header of every answer, as a store with a wrong clock would. It runs in a
thread, so both async tests and CLI subprocesses can use it. moto does not
check signatures by default, so removing signed headers goes unnoticed.
"""

from __future__ import annotations

import email.utils
import http.client
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["S3Proxy"]

# Hop-by-hop headers a proxy must not forward (plus Host, which it rewrites
# and Content-Length, which it recomputes).
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    }
)


class S3Proxy:
    """A loopback proxy to ``upstream`` that strips condition headers and skews Date.

    ``strip`` names the request headers to drop (lowercase); ``date_shift``
    seconds are added to every answer's ``Date``. ``stripped`` counts the
    requests that carried a header the proxy dropped, so a test can prove the
    store really saw unconditional writes. Use as a context manager.
    """

    def __init__(
        self,
        upstream: str,
        *,
        strip: Iterable[str] = ("if-match", "if-none-match"),
        date_shift: float = 0.0,
        require_conditions: bool = False,
    ) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        self.upstream = (parts.hostname, parts.port)
        self.strip = frozenset(name.lower() for name in strip)
        self.date_shift = date_shift
        #: Answer a PUT with neither If-Match nor If-None-Match 403 AccessDenied,
        #: as S3 does under a bucket policy on s3:if-match / s3:if-none-match.
        self.require_conditions = require_conditions
        #: Unconditional PUTs refused that way.
        self.refused = 0
        self.stripped: dict[str, int] = {}
        self.url = ""
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> S3Proxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

            def do_GET(self) -> None:
                proxy._forward(self)

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
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the proxy thread did not stop"

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        if (
            self.require_conditions
            and handler.command == "PUT"
            and "if-match" not in handler.headers
            and "if-none-match" not in handler.headers
        ):
            with self._lock:
                self.refused += 1
            denied = (
                b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                b"<Message>Access Denied</Message></Error>"
            )
            handler.send_response_only(403, "Forbidden")
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(denied)))
            handler.end_headers()
            handler.wfile.write(denied)
            return
        headers: dict[str, str] = {}
        for name, value in handler.headers.items():
            low = name.lower()
            if low in self.strip:
                with self._lock:
                    self.stripped[low] = self.stripped.get(low, 0) + 1
                continue
            if low not in _HOP:
                headers[name] = value
        headers["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
        if body or handler.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.upstream, timeout=10)
        try:
            conn.request(handler.command, handler.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            handler.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                low = name.lower()
                if low in _HOP:
                    continue
                if low == "date" and self.date_shift:
                    when = email.utils.parsedate_to_datetime(value).timestamp() + self.date_shift
                    value = email.utils.formatdate(when, usegmt=True)
                handler.send_header(name, value)
            if handler.command == "HEAD":
                handler.send_header("Content-Length", response.getheader("Content-Length", "0"))
            else:
                handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(data)
        finally:
            conn.close()
