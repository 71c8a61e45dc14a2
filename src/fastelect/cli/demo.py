"""``fastelect demo``: watch an election fail over, with the numbers next to the promises.

Starts ``--nodes`` electors as separate processes (``fastelect _demo-node``)
on one store, by default a FileStorage in a temporary directory, with short
timings; shows each node's role, term and lease left; then

1. SIGKILLs the leader and measures how long until another node leads
   (bound: ``leader_timeout + frequent_interval``: the survivors must wait a
   full lease after they last saw the dead leader's record change, and they
   see that change at most one poll after it was written), and restarts the
   killed node, which rejoins as a follower;
2. SIGTERMs the new leader, which releases the lock as it stops, and
   measures again (bound: ``frequent_interval``, one poll);
3. prints both measurements beside their bounds and exits 0 if each stayed
   within its bound plus a small allowance for storage latency.

The demo sets ``infrequent_interval = frequent_interval`` so every follower
polls at the frequent rate, which is what the bounds above assume.  With
``--store memory://`` the nodes run in this process (a memory store cannot
be shared); a "crash" there cuts a node off from the store, which to the
others looks exactly like a dead leader.

Failover times are measured on the lease clock (CLOCK_BOOTTIME), which every
process on a host shares: from the moment the signal is sent to the moment the
new leader's conditional write succeeded (its ``on_acquire`` hook).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from .._core import monotonic_ns
from ..config import ElectorConfig
from ..elector import Elector
from ..errors import StorageUnavailable
from ..storage import MemoryStorage, Storage
from . import _util
from ._child import Child, spawn
from ._view import LiveView
from .stores import StoreSpec, add_create_store_arg, parse_store_url

__all__ = ["add_parser", "command", "node_command"]

_T = TypeVar("_T")
_NS = 1_000_000_000
DEFAULT_LOCK = "fastelect-demo/leader.json"
# How often a node reports its state, and the view redraws.
_REPORT_INTERVAL = 0.1


def add_parser(subparsers: Any) -> None:
    """Register ``demo`` and the hidden ``_demo-node`` it starts."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="watch nodes elect a leader and fail over (no S3 needed)",
        description=_util.paragraph(
            "Start nodes as separate processes on one store (a temporary directory "
            "by default), kill the leader with SIGKILL, later stop the new leader gracefully, "
            "and print the measured failover times next to the bounds the timings promise."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  fastelect demo\n"
        "  fastelect demo --nodes 5 --duration 30\n"
        "  fastelect demo --store 's3://bucket/demo?endpoint_url=http://127.0.0.1:9000'",
    )
    p.add_argument(
        "--nodes",
        type=_node_count,
        default=3,
        metavar="N",
        help="how many nodes (2-9, default 3)",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="file:///dir, s3://bucket/prefix?… or memory:// (default: a temporary directory)",
    )
    add_create_store_arg(p)
    p.add_argument(
        "--duration",
        type=_util.positive_seconds,
        default=20.0,
        metavar="S",
        help="roughly how long the demo runs (default 20)",
    )
    p.add_argument(
        "--lock",
        type=_util.lock_key,
        default=DEFAULT_LOCK,
        metavar="KEY",
        help=f"lock object key inside the store (default: {DEFAULT_LOCK})",
    )
    _util.add_timing_args(p, lease=2.0, frequent=0.5, infrequent=None)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the results as one JSON object on stdout (events go to stderr)",
    )
    _util.add_logging_args(p)
    p.set_defaults(handler=command)

    # One node of the demo: not listed in the help, started by the demo itself.
    n: argparse.ArgumentParser = subparsers.add_parser("_demo-node")
    n.add_argument("--store", required=True)
    n.add_argument("--lock", required=True)
    n.add_argument("--id", required=True, dest="server_id")
    _util.add_timing_args(n, lease=2.0, frequent=0.5, infrequent=None)
    _util.add_logging_args(n)
    n.set_defaults(handler=node_command)


def _node_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 2 <= value <= 9:
        raise argparse.ArgumentTypeError("must be between 2 and 9")
    return value


# -- one node (its own process) ------------------------------------------------------


def node_command(args: argparse.Namespace) -> int:
    """Run one demo node, reporting JSON lines on stdout, until SIGTERM."""
    _util.configure_logging(args)
    spec = parse_store_url(args.store)
    config = _util.elector_config(args, lockfile_path=args.lock, server_id=args.server_id)
    return _util.run_async(_node_main(spec, config))


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.flush()


async def _node_main(spec: StoreSpec, config: ElectorConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    storage = spec.create()
    elector: Elector | None = None

    async def on_acquire() -> None:
        assert elector is not None
        _emit({"ev": "acquired", "t": monotonic_ns(), "term": elector.term})

    async def on_lose() -> None:
        _emit({"ev": "lost", "t": monotonic_ns()})

    elector = Elector(config.copy(on_acquire=on_acquire, on_lose=on_lose), storage)
    try:
        await elector.start()
        _emit({"ev": "ready", "pid": os.getpid()})
        while not stop.is_set():
            _emit(
                {
                    "ev": "state",
                    "t": monotonic_ns(),
                    "leader": elector.is_leader(),
                    "term": elector.term,
                    "leader_id": elector.leader_id,
                    "lease_ns": elector.slot.lease_remaining_ns(),
                }
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REPORT_INTERVAL):
                    await stop.wait()
        await elector.stop()  # releases the lock if we lead
        _emit({"ev": "stopped", "t": monotonic_ns()})
    finally:
        await elector.stop()  # a no-op after a clean stop; on errors it still releases
        await storage.close()
    return _util.EXIT_OK


# -- the demo --------------------------------------------------------------------------


@dataclass
class _Node:
    """What the view shows about one node."""

    name: str
    pid: int | None = None
    #: starting, follower, leader, killed, stopping, stopped, or exited (by itself: a
    #: failure).  "stopping" is set before the demo signals a node, so a node that
    #: ends because the demo stopped it is never mistaken for one that failed.
    role: str = "starting"
    term: int = 0
    leader_id: str = ""
    #: Lease-clock ns (CLOCK_BOOTTIME) when its lease ends, as last reported.
    lease_until_ns: int = 0
    #: (lease-clock ns, term) of every acquisition it reported.
    acquired: list[tuple[int, int]] = field(default_factory=list)

    @property
    def down(self) -> bool:
        """Killed or stopped: its reports no longer count."""
        return self.role in ("killed", "stopping", "stopped", "exited")

    def leading(self, now_ns: int) -> bool:
        """Leader with a lease that has not run out."""
        return self.role == "leader" and now_ns < self.lease_until_ns


class _Handle(abc.ABC):
    """How the demo drives one node: a process, or an elector in this process."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start (or restart) the node."""

    @abc.abstractmethod
    async def crash(self) -> None:
        """Kill the node without letting it release the lock."""

    @abc.abstractmethod
    async def stop(self, grace: float) -> None:
        """Stop the node gracefully (it releases the lock if it leads)."""

    def refresh(self) -> None:  # noqa: B027 - a hook with a default that does nothing
        """Pull the node's state into its _Node (for in-process nodes)."""


class _ProcessNode(_Handle):
    """A node running ``fastelect _demo-node`` in its own process."""

    def __init__(
        self,
        node: _Node,
        argv: list[str],
        log: IO[bytes],
        on_event: Callable[[_Node, str, dict[str, Any]], None],
    ) -> None:
        self._node = node
        self._argv = argv
        self._log = log
        self._on_event = on_event
        self._child: Child | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._node.role = "starting"
        self._child = await spawn(self._argv, stdout=asyncio.subprocess.PIPE, stderr=self._log)
        self._node.pid = self._child.pid
        self._reader = asyncio.get_running_loop().create_task(self._read(self._child))

    async def _read(self, child: Child) -> None:
        stream = child.proc.stdout
        assert stream is not None
        async for raw in stream:
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict) and not self._node.down:
                self._on_event(self._node, str(message.get("ev")), message)
        if not self._node.down:  # nobody killed or stopped it: it failed
            self._node.role = "exited"

    async def crash(self) -> None:
        assert self._child is not None
        self._node.role = "killed"
        self._child.send(signal.SIGKILL)
        await self._reap()

    async def stop(self, grace: float) -> None:
        if self._child is None:
            return
        if self._node.role not in ("killed", "exited"):
            # Before the signal: its stdout may reach EOF before terminate() returns.
            self._node.role = "stopping"
        if self._child.returncode is None:
            await self._child.terminate(grace)
        await self._reap()
        if self._node.role == "stopping":
            self._node.role = "stopped"

    async def _reap(self) -> None:
        assert self._child is not None
        await self._child.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader
        self._child.close()


class _Severable:
    """A storage wrapper whose cable can be cut: every request then fails.

    To the other nodes a leader cut off from the store is indistinguishable
    from a dead one: its record stops changing.
    """

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self.severed = False

    def _check(self) -> None:
        if self.severed:
            raise StorageUnavailable("demo: this node was cut off from the store")

    async def get(self, key: str) -> tuple[bytes, str]:
        self._check()
        return await self._inner.get(key)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        self._check()
        return await self._inner.put_if_match(key, body, etag)

    async def check(self) -> None:
        self._check()
        await self._inner.check()

    async def close(self) -> None:
        """The shared inner store is closed by the demo, not by each node."""

    def describe(self, key: str) -> str:
        return self._inner.describe(key)


class _LocalNode(_Handle):
    """A node running as an Elector in this process (for memory://)."""

    def __init__(
        self,
        node: _Node,
        shared: Storage,
        config: ElectorConfig,
        on_event: Callable[[_Node, str, dict[str, Any]], None],
    ) -> None:
        self._node = node
        self._shared = shared
        self._config = config
        self._on_event = on_event
        self._elector: Elector | None = None
        self._cable: _Severable | None = None
        self._logger = logging.getLogger("fastelect.cli.demo")
        self._cut: list[Elector] = []
        self._incarnation = 0

    async def start(self) -> None:
        for old in self._cut:  # a "crashed" incarnation: stop its loop for good
            await old.stop()
        self._cut.clear()
        self._incarnation += 1
        incarnation = self._incarnation
        node = self._node

        def current() -> bool:
            return incarnation == self._incarnation and not node.down

        async def on_acquire() -> None:
            if current() and elector is not None:
                self._on_event(node, "acquired", {"t": monotonic_ns(), "term": elector.term})

        async def on_lose() -> None:
            if current():
                self._on_event(node, "lost", {"t": monotonic_ns()})

        elector: Elector | None = None
        cable = _Severable(self._shared)
        config = self._config.copy(server_id=node.name, on_acquire=on_acquire, on_lose=on_lose)
        # One logger per incarnation, so a cut-off one can be silenced (see crash()).
        self._logger = logging.getLogger(f"fastelect.cli.demo.{node.name}.{incarnation}")
        elector = Elector(config, cable, self._logger)
        node.role = "follower"
        node.pid = None
        await elector.start()
        self._elector, self._cable = elector, cable

    def refresh(self) -> None:
        elector = self._elector
        if elector is None or self._node.down:
            return
        self._node.role = "leader" if elector.is_leader() else "follower"
        self._node.term = elector.term
        self._node.leader_id = elector.leader_id
        left = elector.slot.lease_remaining_ns()
        self._node.lease_until_ns = monotonic_ns() + left if left else 0

    async def crash(self) -> None:
        assert self._elector is not None
        assert self._cable is not None
        self._node.role = "killed"
        self._cable.severed = True
        # Its failing renewals are the point of the exercise, not news.
        self._logger.setLevel(logging.CRITICAL + 1)
        self._cut.append(self._elector)
        self._elector = None

    async def stop(self, grace: float) -> None:
        for old in self._cut:
            await old.stop()
        self._cut.clear()
        if self._elector is not None:
            await self._elector.stop()
            self._elector = None
            if self._node.role != "killed":
                self._node.role = "stopped"


@dataclass
class _Failover:
    """One measured failover."""

    kind: str
    signal: str
    victim: str
    new_leader: str = ""
    seconds: float = 0.0
    bound: float = 0.0
    bound_text: str = ""
    term: int = 0


class DemoFailed(_util.CLIError):
    """The demo could not show a failover (a node did not start, nobody took over)."""


class _Demo:
    def __init__(
        self,
        spec: StoreSpec,
        lock: str,
        config: ElectorConfig,
        count: int,
        duration: float,
        view: LiveView,
        workdir: Path,
    ) -> None:
        self.spec = spec
        self.lock = lock
        self.config = config
        self.view = view
        self.workdir = workdir
        self.nodes = [_Node(f"node-{i + 1}") for i in range(count)]
        self.handles: dict[str, _Handle] = {}
        self.lease = config.lease
        self.frequent = config.frequent
        self.margin = config.ns("safety_margin") / _NS
        # Three calm phases (before the crash, between, after the stop) share
        # what is left of the duration once the crash failover is paid for.
        self.hold = max(1.0, (duration - self.lease - 2 * self.frequent) / 3)
        self.allowance = 1.0 if spec.kind == "s3" else 0.3
        self.phase = "starting nodes"
        self.results: list[_Failover] = []
        self._shared: Storage | None = None
        self._logs: list[IO[bytes]] = []

    # -- events from the nodes ---------------------------------------------------------

    def on_event(self, node: _Node, kind: str, message: dict[str, Any]) -> None:
        if kind == "ready":
            if node.role == "starting":
                node.role = "follower"
        elif kind == "state":
            node.term = int(message.get("term", 0))
            node.leader_id = str(message.get("leader_id", ""))
            lease_ns = int(message.get("lease_ns", 0))
            node.lease_until_ns = int(message.get("t", 0)) + lease_ns if lease_ns else 0
            node.role = "leader" if message.get("leader") else "follower"
        elif kind == "acquired":
            t, term = int(message["t"]), int(message["term"])
            node.acquired.append((t, term))
            node.role, node.term, node.leader_id = "leader", term, node.name
            node.lease_until_ns = max(node.lease_until_ns, t + int(self.lease * _NS))
            self.view.event(f"{self._paint(node.name, 1, 32)} became leader (term {term})")
        elif kind == "lost" and node.role == "leader":
            node.role = "follower"
            self.view.event(f"{node.name} is no longer leader")

    def _paint(self, text: str, *codes: int) -> str:
        return self.view.style(text, *codes)

    # -- driving ------------------------------------------------------------------------

    def _make_handle(self, node: _Node) -> _Handle:
        if self.spec.kind == "memory":
            assert self._shared is not None
            return _LocalNode(node, self._shared, self.config, self.on_event)
        argv = [
            sys.executable,
            "-m",
            "fastelect.cli",
            "_demo-node",
            "--store",
            self.spec.url,
            "--lock",
            self.lock,
            "--id",
            node.name,
            "--leader-timeout",
            repr(self.lease),
            "--frequent-interval",
            repr(self.frequent),
            "--safety-margin",
            repr(self.margin),
            "--storage-timeout",
            repr(float(self.config.storage_timeout)),  # type: ignore[arg-type]
        ]
        log = open(self.workdir / f"{node.name}.log", "ab")  # noqa: SIM115 - closed in run()
        self._logs.append(log)
        return _ProcessNode(node, argv, log, self.on_event)

    async def run(self) -> None:
        """Start the nodes, crash and stop leaders, measure; always stops every node."""
        if self.spec.kind == "memory":
            self._shared = MemoryStorage()
        else:
            # One clean error now (bad bucket, credentials, endpoint) rather
            # than every node failing on its own.
            probe = self.spec.create()
            try:
                await probe.check()
            finally:
                await probe.close()
        painter = asyncio.get_running_loop().create_task(self._paint_loop())
        try:
            for node in self.nodes:
                self.handles[node.name] = self._make_handle(node)
            await asyncio.gather(*(h.start() for h in self.handles.values()))
            await self._until(
                lambda: all(n.role != "starting" for n in self.nodes),
                limit=60.0,
                what="every node to start",
            )
            first = await self._until_leader(limit=2 * (self.lease + self.frequent) + 15)
            self.phase = f"steady: {first.name} leads"
            await self._hold()
            await self._crash_failover()
            await self._hold()
            await self._graceful_failover()
            await self._hold()
            self.phase = "stopping the nodes"
        finally:
            painter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await painter
            await asyncio.gather(
                *(h.stop(grace=5.0) for h in self.handles.values()), return_exceptions=True
            )
            self._redraw()
            if self._shared is not None:
                await self._shared.close()
            for log in self._logs:
                log.close()

    async def _crash_failover(self) -> None:
        victim = self._leader()
        handle = self.handles[victim.name]
        bound = self.lease + self.frequent
        result = _Failover(
            kind="crash",
            signal="SIGKILL" if self.spec.kind != "memory" else "cut off",
            victim=victim.name,
            bound=bound,
            bound_text=f"leader_timeout {self.lease:g} s + frequent_interval {self.frequent:g} s",
        )
        self.phase = f"{victim.name} crashed; followers wait out its lease (bound {bound:.2f} s)"
        how = "SIGKILL to" if self.spec.kind != "memory" else "cutting off"
        self.view.event(f"{self._paint(how, 1, 31)} {victim.name}, the leader (term {victim.term})")
        t0 = monotonic_ns()
        await handle.crash()
        await self._measure(result, t0, victim)
        await handle.start()
        self.view.event(f"{victim.name} restarted; it rejoins as a follower")

    async def _graceful_failover(self) -> None:
        victim = self._leader()
        handle = self.handles[victim.name]
        bound = self.frequent
        result = _Failover(
            kind="graceful",
            signal="SIGTERM" if self.spec.kind != "memory" else "stop()",
            victim=victim.name,
            bound=bound,
            bound_text=f"frequent_interval {self.frequent:g} s",
        )
        self.phase = f"{victim.name} stopping; it releases the lock (bound {bound:.2f} s)"
        how = "SIGTERM to" if self.spec.kind != "memory" else "stopping"
        self.view.event(
            f"{self._paint(how, 1, 33)} {victim.name}, the leader: it releases the lock as it stops"
        )
        t0 = monotonic_ns()
        stopping = asyncio.get_running_loop().create_task(handle.stop(grace=5.0))
        try:
            await self._measure(result, t0, victim)
        finally:
            await stopping

    async def _measure(self, result: _Failover, t0: int, victim: _Node) -> None:
        def taken() -> tuple[_Node, int, int] | None:
            for node in self.nodes:
                if node is victim or node.down:
                    continue
                for t, term in node.acquired:
                    if t > t0:
                        return node, t, term
            return None

        found = await self._until(
            taken, limit=3 * (self.lease + self.frequent) + 10, what="a follower to take over"
        )
        node, t, term = found
        result.new_leader, result.term = node.name, term
        result.seconds = (t - t0) / _NS
        self.results.append(result)
        verdict = self._verdict(result)
        self.view.event(
            f"{node.name} took over after {result.seconds:.2f} s "
            f"(bound {result.bound:.2f} s) {verdict}"
        )
        self.phase = f"steady: {node.name} leads"

    def _verdict(self, result: _Failover) -> str:
        if result.seconds <= result.bound + self.allowance:
            return self._paint("within bound", 32)
        return self._paint("OVER BOUND", 1, 31)

    def _leader(self) -> _Node:
        now = monotonic_ns()
        leaders = [n for n in self.nodes if n.leading(now) and not n.down]
        if not leaders:
            raise DemoFailed("the leader vanished before the demo could act on it")
        return max(leaders, key=lambda n: n.term)

    async def _until_leader(self, limit: float) -> _Node:
        def one() -> _Node | None:
            now = monotonic_ns()
            return next((n for n in self.nodes if n.leading(now) and not n.down), None)

        return await self._until(one, limit=limit, what="a leader to be elected")

    async def _until(self, probe: Callable[[], _T | None], *, limit: float, what: str) -> _T:
        deadline = monotonic_ns() + int(limit * _NS)
        while True:
            for handle in self.handles.values():
                handle.refresh()
            value = probe()
            if value:
                return value
            failed = [n.name for n in self.nodes if n.role == "exited"]
            if failed:
                raise DemoFailed(f"{', '.join(failed)} exited unexpectedly (see its log below)")
            if monotonic_ns() >= deadline:
                raise DemoFailed(f"gave up after {limit:.0f} s waiting for {what}")
            await asyncio.sleep(0.01)

    async def _hold(self) -> None:
        await asyncio.sleep(self.hold)

    async def _paint_loop(self) -> None:
        while True:
            for handle in self.handles.values():
                handle.refresh()
            self._redraw()
            await asyncio.sleep(_REPORT_INTERVAL)

    def _redraw(self) -> None:
        if not self.view.live:
            return
        now = monotonic_ns()
        usable = self.lease - self.margin
        header = f"  {'NODE':<8} {'PID':>7}  {'ROLE':<9} {'TERM':>4}  LEASE LEFT"
        lines = ["", self._paint(header, 1)]
        for node in self.nodes:
            left = max(0.0, (node.lease_until_ns - now) / _NS) if node.leading(now) else 0.0
            if node.down:
                role = self._paint(f"{node.role:<9}", 31 if node.role == "killed" else 2)
            elif node.leading(now):
                role = self._paint(f"{'LEADER':<9}", 1, 32)
            else:
                role = f"{node.role:<9}"
            if left > 0 and usable > 0:
                filled = max(1, round(10 * min(1.0, left / usable)))
                bar = self._paint("█" * filled, 32) + self._paint("░" * (10 - filled), 2)
                lease = f"{bar} {left:4.1f} s"
            else:
                lease = self._paint("-", 2)
            pid = str(node.pid) if node.pid else "-"
            lines.append(f"  {node.name:<8} {pid:>7}  {role} {node.term:>4}  {lease}")
        lines.append("")
        lines.append(self._paint(f"  {self.phase}", 2))
        self.view.update(lines)

    def log_tails(self) -> str:
        """The end of each node's log, for a failure report (a node that failed always shows)."""
        parts = []
        for node in self.nodes:
            path = self.workdir / f"{node.name}.log"
            try:
                tail = path.read_bytes()[-1500:].decode(errors="replace").strip()
            except OSError as exc:
                tail = f"(its log could not be read: {exc})" if node.role == "exited" else ""
            if not tail and node.role == "exited":
                tail = "(its log is empty: it wrote nothing to stderr before it exited)"
            if tail:
                parts.append(f"--- {node.name} ({node.role}) ---\n{tail}")
        return "\n".join(parts)


def command(args: argparse.Namespace) -> int:
    """Run the demo; 0 when both failovers happened within their bounds."""
    _util.configure_logging(args)
    workdir = Path(tempfile.mkdtemp(prefix="fastelect-demo-"))
    try:
        if args.store is None:
            spec = parse_store_url(f"file://{workdir / 'store'}", create=True)
        else:
            spec = parse_store_url(args.store, allow_memory=True, create=args.create_store)
        config = _util.elector_config(args, lockfile_path=args.lock, server_id="demo")
        out = sys.stderr if args.json else sys.stdout
        view = LiveView(out)
        demo = _Demo(spec, args.lock, config, args.nodes, args.duration, view, workdir)
        try:
            view.message(
                view.style(
                    f"fastelect demo: {args.nodes} nodes on {spec.url} "
                    f"(leader_timeout {config.lease:g} s, frequent_interval {config.frequent:g} s)",
                    1,
                )
            )
            _util.run_async(_guarded(demo.run()))
        except DemoFailed:
            view.close()
            tails = demo.log_tails()
            if tails:
                sys.stderr.write(tails + "\n")
            raise
        finally:
            view.close()
        return _report(demo, args.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _guarded(run: Awaitable[None]) -> None:
    """Run the demo; SIGINT/SIGTERM cancel it, which still stops every node."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(run)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _report(demo: _Demo, as_json: bool) -> int:
    ok = len(demo.results) == 2 and all(r.seconds <= r.bound + demo.allowance for r in demo.results)
    if as_json:
        document = {
            "store": demo.spec.url,
            "nodes": len(demo.nodes),
            "leader_timeout": demo.lease,
            "frequent_interval": demo.frequent,
            "allowance_s": demo.allowance,
            "ok": ok,
            "failovers": [
                {
                    "kind": r.kind,
                    "signal": r.signal,
                    "victim": r.victim,
                    "new_leader": r.new_leader,
                    "term": r.term,
                    "seconds": round(r.seconds, 4),
                    "bound_s": r.bound,
                    "within_bound": r.seconds <= r.bound + demo.allowance,
                }
                for r in demo.results
            ],
        }
        sys.stdout.buffer.write(orjson.dumps(document) + b"\n")
        sys.stdout.flush()
        return _util.EXIT_OK if ok else _util.EXIT_ERROR
    view = demo.view
    lines = ["", view.style("Failover, measured from the signal to the new leader's write:", 1)]
    labels = {"crash": "after a crash", "graceful": "after a release"}
    rows = [
        (f"failover {labels[r.kind]} ({r.signal} {r.victim} -> {r.new_leader}):", r)
        for r in demo.results
    ]
    width = max((len(label) for label, _ in rows), default=0)
    for label, r in rows:
        lines.append(
            f"  {label:<{width}} {r.seconds:6.3f} s   bound {r.bound:.3f} s "
            f"({r.bound_text}) + storage latency   {demo._verdict(r)}"
        )
    lines.append(
        f"  (allowance for storage latency and scheduling: {demo.allowance:g} s; "
        "followers poll every frequent_interval in this demo)"
    )
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    if not ok:
        sys.stderr.write("fastelect: error: a failover exceeded its bound\n")
        return _util.EXIT_ERROR
    return _util.EXIT_OK
