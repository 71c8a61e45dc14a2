"""Helpers shared by test modules: loopback ports, test servers, S3 test clients.

Import as ``from helpers import ...`` (pytest puts ``tests/`` on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import boto3

from fastelect.storage import S3Storage

__all__ = [
    "S3_BUCKET",
    "S3_REGION",
    "S3_TIMEOUT",
    "MotoAuth",
    "MotoServer",
    "StubHTTPServer",
    "boto3_client",
    "dummy_aws_environment",
    "free_port",
    "make_s3_storage",
    "silent_listener",
    "wait_for",
    "wait_for_http",
    "wait_for_port",
    "wait_until",
]


S3_REGION = "us-east-1"
S3_BUCKET = "fastelect-tests"
# Per-request bound for tests: generous, because a loaded CI box can stall moto.
S3_TIMEOUT = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now.

    Another process may take it before the caller binds it; callers that
    start a server should retry on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str, port: int, *, timeout: float = 10.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Wait until ``host:port`` accepts TCP connections.

    Fails (AssertionError) after ``timeout`` seconds, or at once if ``proc``
    exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(proc, f"{host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{host}:{port} did not accept connections within {timeout} s: {exc}"
                ) from exc
        time.sleep(0.02)


def wait_for_http(
    url: str, *, timeout: float = 10.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Wait until a GET of ``url`` answers with a 2xx status.

    Fails (AssertionError) after ``timeout`` seconds, or at once if ``proc``
    exits first.
    """
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(proc, url)
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                if 200 <= response.status < 300:
                    return
                problem = f"HTTP {response.status}"
        except (OSError, urllib.error.URLError) as exc:
            problem = str(exc)
        if time.monotonic() >= deadline:
            raise AssertionError(f"{url} did not answer 2xx within {timeout} s: {problem}")
        time.sleep(0.05)


def wait_for(
    condition: Callable[[], Any], timeout: float, message: str, *, every: float = 0.01
) -> Any:
    """Poll ``condition`` (blocking) until truthy and return its value.

    Fails with ``message`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {message}")
        time.sleep(every)


async def wait_until(
    condition: Callable[[], object], timeout: float, message: str, *, every: float = 0.005
) -> float:
    """Poll ``condition`` on the event loop until truthy; fail with ``message`` after ``timeout``.

    Returns the monotonic time at which the condition was first seen true.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}")
        await asyncio.sleep(every)


@contextlib.contextmanager
def dummy_aws_environment(scratch: Path) -> Iterator[None]:
    """Dummy AWS credentials and region, never the developer's ~/.aws; restored after."""
    import pytest

    missing = scratch / "absent"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", S3_REGION)
        mp.setenv("AWS_REGION", S3_REGION)
        mp.setenv("AWS_CONFIG_FILE", str(missing))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in (
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_PROFILE",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ):
            mp.delenv(name, raising=False)
        yield


def _check_alive(proc: subprocess.Popen[Any] | None, what: str) -> None:
    if proc is not None and proc.poll() is not None:
        raise AssertionError(f"the process serving {what} exited with code {proc.returncode}")


class MotoServer:
    """A real moto server (``python -m moto.server``) in a subprocess on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Its
    output goes to ``log_path`` (a pipe could fill up and stall it), which
    failure messages quote.
    """

    def __init__(self, log_path: Path, *, start_timeout: float = 20.0) -> None:
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._log: IO[bytes] | None = None

    def start(self) -> str:
        """Start the server and wait until it answers; returns its endpoint URL."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Up to three ports: another process may grab a free port before moto binds it.
        failure: AssertionError | None = None
        for _attempt in range(3):
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_for_http(
                    f"{self.url}/moto-api/config", timeout=self.start_timeout, proc=self.proc
                )
                return self.url
            except AssertionError as exc:
                self._terminate()
                failure = exc
        tail = self._tail()
        self.stop()
        raise AssertionError(f"moto server did not start: {failure}\nmoto log:\n{tail}")

    def enforce_auth(self) -> None:
        """From now on, check every request's signature and IAM permissions.

        moto's own switch (what ``set_initial_no_auth_action_count`` uses in
        server mode): allow 0 more unauthenticated requests.
        """
        # A form content type (urllib's default) would leave moto's request.data empty.
        request = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["status"] == "ok"

    def stop(self) -> None:
        """Terminate the server and wait for it to exit."""
        self._terminate()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _terminate(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class StubHTTPServer:
    """A loopback HTTP server answering every request with one canned response.

    Use with ``async with``; ``url`` is its address and ``requests`` the
    request lines it received, in order. Each response closes its connection.
    """

    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        self.url = ""
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> StubHTTPServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        # Python < 3.12 does not wait for connection handlers in wait_closed().
        if self._handlers:
            await asyncio.wait(self._handlers)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head.split(b"\r\n", 1)[0].decode())
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and int(value):
                    await reader.readexactly(int(value))
            writer.write(
                f"HTTP/1.1 {self.status} {self.reason}\r\n"
                f"Content-Type: application/xml\r\n"
                f"Content-Length: {len(self.body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + self.body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client gave up first; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts TCP connections but never answers a byte.

    The kernel completes handshakes into the listen backlog, so clients
    connect fine and then wait for a response that never comes.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def boto3_client(service: str, endpoint_url: str, **kwargs: Any) -> Any:
    """A synchronous boto3 client for test setup (close it after use)."""
    return boto3.client(service, endpoint_url=endpoint_url, region_name=S3_REGION, **kwargs)


def make_s3_storage(endpoint_url: str, bucket: str, **kwargs: Any) -> S3Storage:
    """An S3Storage on the test server, on a fresh prefix unless one is given."""
    kwargs.setdefault("prefix", f"test-{uuid.uuid4().hex}")
    kwargs.setdefault("region_name", S3_REGION)
    kwargs.setdefault("timeout", S3_TIMEOUT)
    return S3Storage(bucket, endpoint_url=endpoint_url, **kwargs)


@dataclass(frozen=True)
class MotoAuth:
    """A moto server that checks signatures and IAM permissions, and keys for it."""

    url: str
    bucket: str
    #: (access key id, secret) of a user allowed s3:* on ``bucket``.
    allowed: tuple[str, str]
    #: (access key id, secret) of a user with no permissions at all.
    denied: tuple[str, str]
