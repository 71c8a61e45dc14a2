"""``fastelect run``: a sidecar that runs a command only while this node leads.

Like ``consul lock`` or ``etcdctl elect``, for a bucket::

    fastelect run --store s3://locks/jobs --id "$(hostname)" --lock nightly.json -- ./nightly.sh

The sidecar campaigns; while it leads it runs the command as a child
(stdout/stderr passed through, stdin from /dev/null) with ``FASTELECT_TERM``
(the fencing token) and ``FASTELECT_LEADER_ID`` in its environment.

* Leadership lost: SIGTERM to the child, SIGKILL after ``--grace``, campaign on.
* The lease is about to run out without a renewal: SIGTERM; SIGKILL 50 ms
  before the deadline, whatever ``--grace`` says.  On Linux a watchdog
  process does this, so it happens even while the sidecar itself is frozen
  (see :mod:`._child` and :mod:`._watchdog`), and to the child's whole
  tree: a cgroup, or the watchdog as a child subreaper (:mod:`._tree`).  The
  child is started again only once a lease long enough for it is held (a
  renewal landed, or this node leads again), never in a loop meanwhile.
* The child exits by itself: release the lock and exit with its status
  (128 + N if a signal N killed it), or start it again with ``--restart``.
* SIGTERM, SIGINT or SIGHUP to the sidecar: stop the child, release, exit 0.
* The sidecar is SIGKILLed: the watchdog stops the child's tree.

The leadership is always published in a shared-memory table (the
watchdog reads the lease from it): ``--shm NAME``, else
``run-<digest of store, lock and id>-<random>`` (see
:func:`default_table_name`), removed on stop.  Without a command, with
``--shm`` or ``--health-bind``, the sidecar just campaigns and publishes the
leadership until stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._core import LeadershipTable
from ..config import ElectorConfig
from ..elector import Elector, LeadershipLost
from ..errors import ConfigError, TLSError
from ..storage import Storage
from ..tls import TLSCertificate
from . import _tree, _util
from ._child import Child, LeaseGuard, Watchdog, WatchedChild, spawn
from ._watchdog import stop_leads
from .stores import StoreSpec, add_create_store_arg, parse_store_url

if TYPE_CHECKING:
    from ..health import HealthServer

__all__ = ["add_parser", "command", "default_table_name"]

_log = logging.getLogger("fastelect.cli.run")
_NS = 1_000_000_000

# "unwatched": the lease watchdog died, so the child was stopped (it must not
# run without one) and is started again under a new watchdog.
Outcome = Literal["exited", "lost", "stop", "unwatched"]


def add_parser(subparsers: Any) -> None:
    """Register ``run``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run a command only while this node is the leader (a sidecar)",
        description=_util.paragraph(
            "Campaign for a lock and run COMMAND only while this node leads. "
            "The child gets FASTELECT_TERM (fencing token) and FASTELECT_LEADER_ID; it is "
            "stopped when leadership ends, before the lease runs out, and dies with the sidecar."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  fastelect run --store file:///var/lib/fastelect --id node1 -- ./job.sh --flag\n"
        "  fastelect run --store 's3://locks/jobs?region=eu-west-1' --id \"$(hostname)\" \\\n"
        "      --lock nightly.json --restart -- ./worker\n"
        "  fastelect run --store s3://locks/web --id web-1 --shm web  # publish only",
    )
    p.add_argument("--store", required=True, metavar="URL", help="file:///dir or s3://bucket/…")
    add_create_store_arg(p)
    p.add_argument("--id", required=True, dest="server_id", help="this node's unique id")
    p.add_argument(
        "--lock",
        type=_util.lock_key,
        default="leader.json",
        metavar="KEY",
        help="lock object key (default leader.json)",
    )
    p.add_argument(
        "--addr",
        default=None,
        metavar="HOST:PORT",
        help="address written as leaderAddr (default: --health-bind when it names a host)",
    )
    _util.add_timing_args(p, lease=15.0, frequent=5.0, infrequent=30.0)
    child = p.add_argument_group("the child")
    child.add_argument(
        "--grace",
        type=_util.positive_seconds,
        default=10.0,
        metavar="S",
        help="time between SIGTERM and SIGKILL when leadership ends or on stop (default 10); "
        "never past the lease deadline",
    )
    child.add_argument(
        "--restart",
        action="store_true",
        help="start the command again when it exits while still leader (default: release "
        "the lock and exit with its status)",
    )
    child.add_argument(
        "--restart-delay",
        type=_util.non_negative_seconds,
        default=1.0,
        metavar="S",
        help="pause before a restart (default 1)",
    )
    publish = p.add_argument_group("publishing the leadership")
    publish.add_argument(
        "--shm",
        type=_util.table_name,
        metavar="NAME",
        help="publish the leadership table in shared memory as NAME, for "
        "fastelect.attach(NAME).is_leader('default') in other processes",
    )
    publish.add_argument(
        "--health-bind",
        metavar="ADDR",
        help="also serve GET /health/leadership over HTTPS on ADDR (e.g. :8443)",
    )
    publish.add_argument("--tls-cert", metavar="FILE", help="PEM certificate for --health-bind")
    publish.add_argument("--tls-key", metavar="FILE", help="PEM private key for --health-bind")
    _util.add_logging_args(p)
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARGS...]",
        help="the command to run while leader",
    )
    p.set_defaults(handler=command, parser=p)


def command(args: argparse.Namespace) -> int:
    """Validate the flags, then run the sidecar on uvloop."""
    parser: argparse.ArgumentParser = args.parser
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd and not (args.shm or args.health_bind):
        parser.error("give a command after '--' (or --shm / --health-bind to only publish)")
    if args.health_bind and not (args.tls_cert and args.tls_key):
        parser.error("--health-bind needs --tls-cert and --tls-key")
    if (args.tls_cert or args.tls_key) and not args.health_bind:
        parser.error("--tls-cert/--tls-key are only used with --health-bind")
    _util.configure_logging(args, default=logging.INFO)
    spec = parse_store_url(args.store, create=args.create_store)
    # The bind first: the address written as leaderAddr derives from it.
    cert = _health_cert(args.tls_cert, args.tls_key) if args.health_bind else None
    if args.health_bind:
        _check_health_bind(args.health_bind, cert)
    addr = args.addr if args.addr is not None else _addr_from_bind(args.health_bind)
    config = _util.elector_config(
        args, lockfile_path=args.lock, server_id=args.server_id, server_addr=addr
    )
    # A command's lease watchdog reads the deadline from a named table, so
    # there is always one then (private: mode 0600, removed on stop).
    table_name = args.shm or (
        default_table_name(args.store, args.lock, args.server_id)
        if cmd or args.health_bind
        else None
    )
    sidecar = Sidecar(
        spec,
        config,
        cmd,
        grace=args.grace,
        restart=args.restart,
        restart_delay=args.restart_delay,
        table_name=table_name,
        health_bind=args.health_bind,
        tls_cert=cert,
    )
    return _util.run_async(sidecar.run())


def default_table_name(store: str, lock: str, server_id: str) -> str:
    """The sidecar's table name when ``--shm`` is not given: ``run-DIGEST-RANDOM``.

    DIGEST (8 hex digits) is of the store URL, the lock and the id, so an
    operator can tell whose table it is; RANDOM (8 hex digits) is drawn per
    start.  Never a pid: sidecars in containers that share ``/dev/shm`` but
    not a PID namespace are all PID 1, and a pid-named table collided.  The
    random part keeps apart two sidecars of one lock and id (a duplicate id,
    or a restart whose predecessor's table is still being swept), and
    leaves another local user no name to create first.
    """
    digest = hashlib.blake2b(
        "\0".join((store, lock, server_id)).encode(), digest_size=4
    ).hexdigest()
    return f"run-{digest}-{secrets.token_hex(4)}"


def _health_cert(cert_path: str, key_path: str) -> TLSCertificate:
    try:
        return TLSCertificate.from_files(cert_path, key_path)
    except TLSError as exc:  # its message names the file at fault
        raise ConfigError("--tls-cert/--tls-key", str(exc)) from exc


def _check_health_bind(bind: str, cert: TLSCertificate | None) -> None:
    # Checked before anything starts, so a typo is bad input (exit 2), not a
    # failure found after the sidecar began campaigning.
    from ..health import HealthServerConfig

    assert cert is not None
    try:
        HealthServerConfig(bind_addr=bind, tls_cert=cert)
    except ConfigError as exc:
        raise ConfigError("--health-bind", str(exc).removeprefix(f"{exc.field}: ")) from exc


def _addr_from_bind(bind: str | None) -> str:
    """``10.0.0.5:8443`` → itself; ``:8443`` or ``0.0.0.0:8443`` → "" (no usable host)."""
    if not bind:
        return ""
    host, _, _port = bind.rpartition(":")
    host = host.strip("[]")
    if not host:
        return ""
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_unspecified:
            return ""
    return bind


@dataclass
class _Watch:
    """How a child's run ended."""

    #: None when the watchdog did not let it start.
    child: Child | WatchedChild | None
    outcome: Outcome
    #: The signal the lease guard or watchdog sent the child (0: none).
    guard_signal: int = 0
    #: The watchdog did not let the child start: the lease was already over.
    refused: bool = False


class Sidecar:
    """One ``fastelect run``: an elector, optional publishing, and the child it supervises."""

    def __init__(
        self,
        spec: StoreSpec,
        config: ElectorConfig,
        command: list[str],
        *,
        grace: float,
        restart: bool,
        restart_delay: float,
        table_name: str | None,
        health_bind: str | None,
        tls_cert: TLSCertificate | None,
    ) -> None:
        self._spec = spec
        self._config = config
        self._command = command
        self._grace = grace
        self._restart = restart
        self._restart_delay = restart_delay
        self._table_name = table_name
        #: The table's incarnation: a watchdog checks it reads this very table.
        self._table_token = 0
        self._health_bind = health_bind
        self._tls_cert = tls_cert
        self._stopping = asyncio.Event()
        # When to SIGTERM and SIGKILL a child ahead of an unrenewed lease's
        # deadline: the watchdog and the guard thread use the same leads.
        self._term_lead_ns, self._kill_lead_ns = stop_leads(
            config.lease, config.frequent, config.ns("safety_margin") / _NS, grace
        )
        #: How watchdogs hold the child's tree: "cgroup" or "subreaper".
        self._containment: str = "subreaper"

    def _choose_containment(self) -> str:
        """Pick how the child's whole tree is held and stopped; the line to log ("" for none).

        Chosen before anything starts (a bad setting is bad input), logged
        once the store answered (a store that fails stays one line).
        """
        if not (self._command and Watchdog.AVAILABLE and self._table_name):
            return ""
        wanted = os.environ.get(_tree.ENV, "auto") or "auto"
        if wanted not in ("auto", *_tree.MECHANISMS):
            raise ConfigError(_tree.ENV, f"must be auto, cgroup or subreaper, not {wanted!r}")
        try:
            self._containment, base = _tree.choose(wanted)
        except OSError as exc:
            raise _util.CLIError(f"{_tree.ENV}=cgroup: {exc.strerror}") from exc
        if base is not None:
            _tree.sweep_stale(base)
            return (
                "the child's whole tree is stopped at the lease: a cgroup of its own "
                f"below {base} (cgroup.kill)"
            )
        why = f"{_tree.ENV}=subreaper" if wanted == "subreaper" else "no delegated cgroup v2 here"
        return (
            "the child's whole tree is stopped at the lease: its watchdog is a child "
            f"subreaper and stops every descendant ({why})"
        )

    async def run(self) -> int:
        """Campaign and supervise until stopped or the child ends; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        storage: Storage | None = None
        table: LeadershipTable | None = None
        elector: Elector | None = None
        health: HealthServer | None = None
        try:
            containment = self._choose_containment()
            storage = self._spec.create()
            if self._table_name:
                table = LeadershipTable(self._table_name, slots=1)
                self._table_token = table.token
            elector = Elector(self._config, storage, table=table)
            await elector.start()
            # Logged once the store answered, so a bad --store is one clean line.
            if table is not None:
                _log.info("publishing the leadership in table %s", self._table_name)
            if containment:
                _log.info("%s", containment)
            if self._health_bind:
                health = await self._start_health()
            return await self._supervise(elector, storage)
        finally:
            if elector is not None:
                # The child is gone by now, so releasing cannot let a second
                # copy of leader-only work start while ours still runs.
                await elector.stop()
            if health is not None:
                await health.stop()
            if storage is not None:
                await storage.close()
            if table is not None:
                table.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        if not self._stopping.is_set():
            _log.info("received %s: stopping", signal.Signals(sig).name)
        self._stopping.set()

    async def _start_health(self) -> HealthServer:
        # Imported here: granian is heavy and only --health-bind needs it.
        from ..health import HealthServer, HealthServerConfig

        assert self._table_name is not None and self._tls_cert is not None
        assert self._health_bind is not None
        config = HealthServerConfig(bind_addr=self._health_bind, tls_cert=self._tls_cert)
        server = HealthServer(config, self._table_name, routes={"/health/leadership": "default"})
        await server.start()
        return server

    async def _supervise(self, elector: Elector, storage: Storage) -> int:
        where = storage.describe(self._config.lockfile_path)
        if not self._command:
            await self._stopping.wait()
            return _util.EXIT_OK
        while True:
            if not await self._until_leader(elector):
                return _util.EXIT_OK
            term = elector.term
            env = dict(os.environ)
            env["FASTELECT_TERM"] = str(term)
            env["FASTELECT_LEADER_ID"] = self._config.server_id
            env["FASTELECT_LOCK"] = where
            if self._table_name:
                env["FASTELECT_SHM"] = self._table_name
            watch = await self._run_child(elector, term, where, env)
            child = watch.child
            if watch.outcome == "stop":
                return _util.EXIT_OK
            if child is None:
                _log.warning("the lease of term %d ran out before the child could start", term)
                continue
            status = _util.exit_status(child.returncode or 0)
            if watch.outcome == "unwatched":
                _log.error(
                    "the lease watchdog of child %d exited unexpectedly: child stopped; "
                    "starting it again under a new watchdog in %.1f s",
                    child.pid,
                    self._restart_delay,
                )
                # Paced like --restart, so a watchdog that keeps dying cannot spin us.
                if await self._sleep_or_stop(self._restart_delay):
                    return _util.EXIT_OK
                continue
            if watch.outcome == "lost":
                if watch.guard_signal:
                    _log.warning(
                        "the lease of term %d was about to run out without a renewal: "
                        "child %d stopped with %s",
                        term,
                        child.pid,
                        signal.Signals(watch.guard_signal).name,
                    )
                else:
                    _log.info("lost leadership of %s (term %d); campaigning again", where, term)
                continue
            if not self._restart:
                _log.info("child %d exited with status %d; releasing %s", child.pid, status, where)
                return status
            _log.info(
                "child %d exited with status %d; restarting in %.1f s",
                child.pid,
                status,
                self._restart_delay,
            )
            if await self._sleep_or_stop(self._restart_delay):
                return _util.EXIT_OK

    async def _until_leader(self, elector: Elector) -> bool:
        """Wait until this node leads with room for a child; False if asked to stop first.

        "Room": more of the lease is left than the SIGTERM lead.  With less,
        a watchdog would refuse the child or stop it at once, so starting
        one would only spin (as it did through a store outage: the lease
        still valid, the child stopped, started again, stopped, ...).  Wait
        instead for the deadline: by then a renewal has moved it on, or the
        leadership is over and we wait to lead again.
        """
        while not self._stopping.is_set():
            if elector.is_leader():
                left = elector.slot.lease_remaining_ns()
                if left > self._term_lead_ns:
                    return True
                if await self._sleep_or_stop(left / _NS + 0.001):
                    return False
                continue
            lead = asyncio.ensure_future(elector.wait_for_leadership())
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({lead, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (lead, stop):
                    task.cancel()
                await asyncio.gather(lead, stop, return_exceptions=True)
        return False

    async def _run_child(
        self, elector: Elector, term: int, where: str, env: dict[str, str]
    ) -> _Watch:
        """Start the command under a lease enforcer; wait for its run to end; stop and reap it."""
        loop = asyncio.get_running_loop()
        fired = asyncio.Event()
        watchdog: Watchdog | None = None
        guard: LeaseGuard | None = None
        child: Child | WatchedChild
        if Watchdog.AVAILABLE and self._table_name:
            # The watchdog starts the child itself, once it sees the lease.
            try:
                watchdog = await Watchdog.start(
                    command=self._command,
                    env=env,
                    table=self._table_name,
                    table_token=self._table_token,
                    election=elector.election,
                    term=term,
                    term_lead_ns=self._term_lead_ns,
                    kill_lead_ns=self._kill_lead_ns,
                    containment=self._containment,
                )
            except OSError as exc:
                raise _util.CLIError(f"cannot start the lease watchdog: {exc}") from exc
            if watchdog.child is None:
                await watchdog.stop()
                return _Watch(None, "lost", refused=True)
            child = watchdog.child
            fired = watchdog.fired
        else:
            try:
                child = await spawn(self._command, env=env)
            except OSError as exc:
                raise _util.CLIError(f"cannot start {self._command[0]!r}: {exc}") from exc
        _log.info(
            "leader of %s (term %d): started %s as pid %d%s",
            where,
            term,
            self._command[0],
            child.pid,
            f" (watched; its tree held by {watchdog.mechanism})" if watchdog is not None else "",
        )
        try:
            if isinstance(child, Child):
                # No watchdog process here: a thread bounds the child by the
                # lease from now until it is reaped, including while it is
                # being stopped below.
                guard = LeaseGuard(
                    elector.slot,
                    child,
                    term_lead_ns=self._term_lead_ns,
                    kill_lead_ns=self._kill_lead_ns,
                    on_fire=_wake_from_thread(loop, fired),
                )
                guard.start()
            try:
                outcome = await self._watch(elector, child, fired, watchdog)
                if outcome != "exited":
                    why = {"stop": "shutting down", "unwatched": "its lease watchdog is gone"}.get(
                        outcome, "leadership ended"
                    )
                    _log.info("%s: stopping child %d", why, child.pid)
                    await child.terminate(self._grace)
            finally:
                # Also on cancellation or error: never leave the child behind.
                if child.returncode is None:
                    child.send(signal.SIGKILL)
                    await child.wait()
                if guard is not None:
                    guard.stop()
                child.close()
        finally:
            if watchdog is not None:
                # Also stops whatever is left of the child's tree.
                await watchdog.stop()
        if guard is not None:
            return _Watch(child, outcome, guard.fired)
        assert watchdog is not None
        return _Watch(child, outcome, watchdog.signal)

    async def _watch(
        self,
        elector: Elector,
        child: Child | WatchedChild,
        fired: asyncio.Event,
        watchdog: Watchdog | None,
    ) -> Outcome:
        """Wait until the child exits, leadership ends, or we are told to stop."""
        exited = asyncio.ensure_future(child.wait())
        lost = asyncio.ensure_future(_until_lost(elector))
        stop = asyncio.ensure_future(self._stopping.wait())
        alarm = asyncio.ensure_future(fired.wait())
        tasks = [exited, lost, stop, alarm]
        if watchdog is not None:
            tasks.append(asyncio.ensure_future(watchdog.ended.wait()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._stopping.is_set():
            return "stop"
        child_exited = exited in done
        if watchdog is not None and watchdog.ended.is_set() and watchdog.unexpected_exit:
            return "unwatched"
        # A child that exited because the guard signalled it, or once the
        # leadership was gone, did not "exit on its own".
        if not child_exited or fired.is_set() or not elector.is_leader():
            return "lost"
        return "exited"

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; True if asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()


def _wake_from_thread(
    loop: asyncio.AbstractEventLoop, event: asyncio.Event
) -> Callable[[int], None]:
    """A callback for another thread that sets ``event`` on ``loop``."""

    def wake(_sig: int) -> None:
        loop.call_soon_threadsafe(event.set)

    return wake


async def _until_lost(elector: Elector) -> None:
    """Return when the leadership this node holds now ends (at the deadline at the latest)."""
    if not elector.is_leader():
        return
    try:
        async with elector.leadership():
            await asyncio.Event().wait()
    except LeadershipLost:
        return
