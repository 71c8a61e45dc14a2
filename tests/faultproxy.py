"""An asyncio TCP fault proxy between elector processes and an S3 server.

One listening port per node, so every connection belongs to a known node and
faults apply to that node alone (a partition of one node while the others
carry on). The proxy speaks just enough HTTP/1.1 to cut the byte stream into
requests and responses, which lets it act per request: delay it, hold its
reply, deliver it after the client gave up, reset the connection before or
after the server saw it, or swallow it.

It runs its own event loop in a thread, so a synchronous test drives it while
node subprocesses talk to it; :meth:`FaultProxy.set` swaps a node's
:class:`Faults` atomically from any thread.

With ``serialise_puts`` it forwards one PUT per object at a time. moto checks
a PUT's ``If-Match`` / ``If-None-Match`` condition and then stores the object
without holding a lock, so two concurrent conditional PUTs can both pass the
check and both "win"; a real S3 (and SeaweedFS) arbitrates them atomically.
Serialising them here gives moto the atomicity the elector relies on, without
touching anything between the elector and the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

__all__ = ["CLEAR", "FaultProxy", "Faults", "Gate", "ProxyError"]

T = TypeVar("T")
_HEAD_LIMIT = 64 * 1024


class ProxyError(Exception):
    """The proxy could not start, or a message it relayed was not HTTP/1.x it understands."""


class Gate:
    """Requests held at a gate wait until :meth:`open` is called (from any thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def open(self) -> None:
        """Let every held request (and every later one) through."""
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()


@dataclass(frozen=True)
class Faults:
    """What the proxy does to one node's requests; replace the whole object to change it.

    Durations are seconds, probabilities are per request in [0, 1].
    """

    #: Each request waits uniform(0, latency) before it is forwarded.
    latency: float = 0.0
    #: Each reply is held this long after the server answered, then delivered.
    hold_reply: float = 0.0
    #: Each request is held this long, then forwarded even if the client gave up.
    late_request: float = 0.0
    #: Probability of resetting the client's connection before the server sees the request.
    reset_before: float = 0.0
    #: Probability of resetting the client's connection after the server answered.
    reset_after: float = 0.0
    #: Accept and read requests, never forward or answer them.
    blackhole: bool = False
    #: Reset the node's open connections now and every new one at once.
    partition: bool = False
    #: Called once, on the proxy's thread, when the node's next PUT has fully arrived
    #: and before it is forwarded (e.g. to SIGKILL the node mid-write).
    on_put: Callable[[], None] | None = None
    #: Hold each request (after ``on_put``) until this gate opens, then forward it
    #: whether or not the client is still there.
    hold_until: Gate | None = None
    #: Apply the faults above (all but ``partition`` and ``on_put``) only to these
    #: methods, e.g. ``frozenset({"GET"})``; None = every request.
    only: frozenset[str] | None = None

    def __post_init__(self) -> None:
        for name in ("latency", "hold_reply", "late_request"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Faults.{name} must be >= 0 seconds")
        for name in ("reset_before", "reset_after"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"Faults.{name} must be a probability in [0, 1]")


#: No faults: forward everything at once.
CLEAR = Faults()


@dataclass
class _Message:
    """One HTTP/1.x request or response, with its exact bytes."""

    raw: bytes
    start: str
    headers: dict[str, str]
    close: bool

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0]

    @property
    def target(self) -> str:
        parts = self.start.split(" ")
        return parts[1].split("?", 1)[0] if len(parts) > 1 else ""

    @property
    def status(self) -> int:
        parts = self.start.split(" ")
        try:
            return int(parts[1])
        except (IndexError, ValueError) as exc:
            raise ProxyError(f"not an HTTP status line: {self.start!r}") from exc


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, str, dict[str, str]] | None:
    """The head of the next message, or None on a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    except asyncio.LimitOverrunError as exc:
        raise ProxyError("HTTP head larger than the proxy's limit") from exc
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return head, lines[0], headers


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[str, str], *, until_eof: bool
) -> tuple[bytes, bool]:
    """The body's raw bytes (chunk framing kept) and whether the stream ends with it."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            parts.append(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailers, then the blank line that ends the message.
                while True:
                    line = await reader.readuntil(b"\r\n")
                    parts.append(line)
                    if line == b"\r\n":
                        return b"".join(parts), False
            parts.append(await reader.readexactly(size + 2))
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"])), False
    if until_eof:
        return await reader.read(), True
    return b"", False


def _wants_close(start: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if "close" in connection:
        return True
    http10 = start.startswith("HTTP/1.0") or start.endswith("HTTP/1.0")
    return http10 and "keep-alive" not in connection


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _Message | None:
    head = await _read_head(reader)
    if head is None:
        return None
    raw, start, headers = head
    if headers.get("expect", "").lower() == "100-continue":
        # Answer it here, or the client withholds the body for its own
        # timeout (1 s in botocore); the server then gets a plain request.
        del headers["expect"]
        raw = b"".join(
            line
            for line in raw.splitlines(keepends=True)
            if not line.lower().startswith(b"expect:")
        )
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body, _ = await _read_body(reader, headers, until_eof=False)
    return _Message(raw + body, start, headers, _wants_close(start, headers))


async def _read_response(reader: asyncio.StreamReader, method: str) -> _Message:
    raw_parts: list[bytes] = []
    while True:
        head = await _read_head(reader)
        if head is None:
            raise ConnectionResetError("the server closed the connection before answering")
        raw, start, headers = head
        message = _Message(raw, start, headers, _wants_close(start, headers))
        status = message.status
        if 100 <= status < 200:
            continue  # an interim answer (the client's Expect was answered): drop it
        raw_parts.append(raw)
        if method == "HEAD" or status in (204, 304):
            break
        body, ended = await _read_body(reader, headers, until_eof=True)
        raw_parts.append(body)
        message.close = message.close or ended
        break
    message.raw = b"".join(raw_parts)
    return message


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


class _Upstream:
    """The server side of one client connection, opened on first use and reopened if closed."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._address = address
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._conn is not None and self._conn[0].at_eof():
            self.drop()
        if self._conn is None:
            self._conn = await asyncio.open_connection(*self._address, limit=_HEAD_LIMIT)
        return self._conn

    def drop(self) -> None:
        if self._conn is not None:
            self._conn[1].transport.abort()
            self._conn = None


class _Node:
    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.faults = CLEAR
        self.rng = random.Random(f"{seed}:{name}")
        self.server: asyncio.Server | None = None
        self.port = 0
        self.clients: set[asyncio.StreamWriter] = set()
        self.stats: Counter[str] = Counter()


class FaultProxy:
    """Forward each node's connections to ``upstream`` (an ``http://host:port`` URL).

    Use as a context manager (or :meth:`start` / :meth:`stop`); :meth:`url`
    gives the endpoint a node should use. ``seed`` drives every random
    choice (per node), so a schedule of faults is reproducible even though
    the timing of real processes is not.
    """

    def __init__(
        self, upstream: str, nodes: Iterable[str], *, seed: int = 0, serialise_puts: bool = False
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ProxyError(f"upstream must be http://host:port, not {upstream!r}")
        self._upstream = (parts.hostname, parts.port)
        self._nodes = {name: _Node(name, seed) for name in nodes}
        if not self._nodes:
            raise ProxyError("the proxy needs at least one node")
        self.serialise_puts = serialise_puts
        self._put_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- control (any thread) ----------------------------------------------------

    def url(self, node: str) -> str:
        """The endpoint URL ``node`` must use."""
        port = self._node(node).port
        if not port:
            raise ProxyError("the proxy is not running")
        return f"http://127.0.0.1:{port}"

    def set(self, node: str, faults: Faults) -> None:
        """Apply ``faults`` to ``node``'s traffic from now on."""
        target = self._node(node)
        target.faults = faults  # one reference swap: handlers see the old or the new
        if faults.partition and self._loop is not None:
            self._loop.call_soon_threadsafe(self._cut, target)

    def clear(self, node: str | None = None) -> None:
        """Remove every fault from ``node`` (all nodes when None)."""
        for name in self._nodes if node is None else (node,):
            self.set(name, CLEAR)

    def gate(self) -> Gate:
        """A closed gate for :attr:`Faults.hold_until`."""
        if self._loop is None:
            raise ProxyError("the proxy is not running")
        return Gate(self._loop)

    def faults(self, node: str) -> Faults:
        """The faults ``node`` has now."""
        return self._node(node).faults

    def stats(self) -> dict[str, dict[str, int]]:
        """What happened to each node's requests so far (counts by kind)."""
        if self._loop is None:
            return {name: dict(node.stats) for name, node in self._nodes.items()}
        return self._call(self._snapshot())

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start the loop thread and bind one loopback port per node."""
        if self._thread is not None:
            raise ProxyError("the proxy is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise ProxyError("the proxy's event loop did not start within 10 s")
        try:
            self._call(self._listen())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every connection and listener, then end the loop thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None
            for node in self._nodes.values():
                node.port = 0

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------

    def _node(self, name: str) -> _Node:
        try:
            return self._nodes[name]
        except KeyError:
            raise ProxyError(f"unknown node {name!r}; known: {sorted(self._nodes)}") from None

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        if self._loop is None:
            coro.close()
            raise ProxyError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _snapshot(self) -> dict[str, dict[str, int]]:
        return {name: dict(node.stats) for name, node in self._nodes.items()}

    async def _listen(self) -> None:
        for node in self._nodes.values():

            async def accept(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, node: _Node = node
            ) -> None:
                # Shutdown cancels handlers; a cancelled callback task would be
                # logged as an error by asyncio.streams on Python 3.11.
                with contextlib.suppress(asyncio.CancelledError):
                    await self._serve(node, reader, writer)

            node.server = await asyncio.start_server(accept, "127.0.0.1", 0, limit=_HEAD_LIMIT)
            node.port = node.server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        for node in self._nodes.values():
            if node.server is not None:
                node.server.close()
            for writer in list(node.clients):
                writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for node in self._nodes.values():
            if node.server is not None:
                await node.server.wait_closed()
                node.server = None

    def _cut(self, node: _Node) -> None:
        for writer in list(node.clients):
            _reset(writer)
        node.stats["partition_cut"] += len(node.clients)

    @contextlib.contextmanager
    def _tracked(self, node: _Node, writer: asyncio.StreamWriter) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        node.clients.add(writer)
        try:
            yield
        finally:
            node.clients.discard(writer)
            self._tasks.discard(task)

    async def _serve(
        self, node: _Node, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream = _Upstream(self._upstream)
        with self._tracked(node, writer):
            node.stats["connections"] += 1
            try:
                while not node.faults.partition:
                    request = await _read_request(reader, writer)
                    if request is None or not await self._relay(
                        node, request, reader, writer, upstream
                    ):
                        return
                node.stats["partition_refused"] += 1
                _reset(writer)
            except (ConnectionError, asyncio.IncompleteReadError, ProxyError, OSError) as exc:
                node.stats[f"error_{type(exc).__name__}"] += 1
                _reset(writer)
            finally:
                upstream.drop()
                if not writer.is_closing():
                    await _close(writer)

    async def _relay(
        self,
        node: _Node,
        request: _Message,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: _Upstream,
    ) -> bool:
        """Handle one request; False when the client connection is finished."""
        faults = node.faults
        stats = node.stats
        stats["requests"] += 1
        stats[request.method] += 1
        if faults.partition:
            stats["partition_dropped"] += 1
            _reset(writer)
            return False
        if faults.blackhole and (faults.only is None or request.method in faults.only):
            # Accept, never answer: wait for the client to give up.
            stats["blackholed"] += 1
            while await reader.read(65536):
                pass
            return False
        if request.method == "PUT" and faults.on_put is not None:
            # One-shot: the node may be gone after the callback; later PUTs pass.
            node.faults = dataclasses.replace(faults, on_put=None)
            stats["on_put"] += 1
            faults.on_put()
        if faults.only is not None and request.method not in faults.only:
            faults = CLEAR
        if faults.hold_until is not None:
            stats["gated"] += 1
            await faults.hold_until.wait()
        if faults.reset_before and node.rng.random() < faults.reset_before:
            stats["reset_before"] += 1
            _reset(writer)
            return False
        delay = faults.late_request
        if faults.latency:
            delay += node.rng.uniform(0.0, faults.latency)
        if delay:
            stats["late_request" if faults.late_request else "delayed"] += 1
            await asyncio.sleep(delay)
        # From here on the request reaches the server even if the client has gone:
        # that is the point of a late request.
        response = await self._exchange(request, await upstream.connect())
        stats[f"status_{response.status}"] += 1
        if response.close:
            upstream.drop()
        if faults.reset_after and node.rng.random() < faults.reset_after:
            stats["reset_after"] += 1
            _reset(writer)
            return False
        if faults.hold_reply:
            stats["held_reply"] += 1
            await asyncio.sleep(faults.hold_reply)
        if writer.is_closing() or reader.at_eof():
            stats["client_gone"] += 1
            return False
        writer.write(response.raw)
        await writer.drain()
        return not (request.close or response.close)

    async def _exchange(
        self, request: _Message, upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    ) -> _Message:
        up_reader, up_writer = upstream
        lock = None
        if self.serialise_puts and request.method == "PUT":
            lock = self._put_locks.setdefault(request.target, asyncio.Lock())
        async with lock if lock is not None else contextlib.nullcontext():
            up_writer.write(request.raw)
            await up_writer.drain()
            return await _read_response(up_reader, request.method)
