"""Leader-only child processes: start them so they die with us, stop them (and their trees) in time.

Three layers keep a child, and everything it starts, from outliving its
leadership (safety rule 6, docs/safety.md#rule-6-leader-only-work-stops-at-the-lease):

1. The supervisor (``fastelect run``) stops the child on every ending it sees:
   lost leadership, a stop signal, the child's own exit (what is left of its
   tree is stopped too).
2. Something outside the event loop watches the lease in the leadership
   table and signals SIGTERM when it is about to run out without a renewal
   and SIGKILL just before the deadline, by one rule
   (:class:`~._watchdog.StopSchedule`):

   * on Linux a :class:`Watchdog` *process* per child (``_watchdog.py``),
     which is the child's parent and holds its whole tree — a cgroup of its
     own where cgroup v2 is delegated to us, else its descendants as a child
     subreaper (:mod:`._tree`) — so not even a frozen sidecar (SIGSTOP, a
     debugger, Ctrl-Z) can delay it, and a grandchild that left the child's
     process group (``setsid``, ``timeout``, a daemon) is stopped too;
   * elsewhere a :class:`LeaseGuard` thread, which a busy or stalled event
     loop cannot delay (it needs only the GIL, which blocking I/O releases);
     it signals the child's process group only.

   Never both for one child: two enforcers would each send SIGTERM, and
   many programs take a second SIGTERM as "abort now, skip the cleanup".
3. The sidecar's death: the watchdog sees its socket close and stops the
   tree; the child dies with the watchdog (``PR_SET_PDEATHSIG``).  Without a
   watchdog, ``_launch.py`` arms the death signal (the child itself only).

Children run in a session (and process group) of their own, so a terminal's
Ctrl-C reaches only the sidecar, which then stops the child in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .._core import Slot, monotonic_ns
from ._tree import CgroupTree
from ._watchdog import StopSchedule, watchdog_argv

__all__ = ["LAUNCHER", "Child", "LeaseGuard", "Watchdog", "WatchedChild", "spawn"]

_log = logging.getLogger(__name__)
_NS = 1_000_000_000
# A watchdog starts in ~50 ms and exits soon after EOF; these bound broken ones.
_WATCHDOG_READY_S = 10.0
_WATCHDOG_EXIT_S = 5.0

#: The exec helper that arms PR_SET_PDEATHSIG before running the command.
LAUNCHER = Path(__file__).with_name("_launch.py")


def launcher_argv(command: Sequence[str]) -> list[str]:
    """argv that runs ``command`` through the launcher (Linux) or directly (elsewhere)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    # -I: ignore PYTHON* variables and the user site; -S: skip site (faster start).
    # The command itself still gets the full environment through execvp.
    return [sys.executable, "-I", "-S", str(LAUNCHER), str(os.getpid()), *command]


async def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[Any] | None = asyncio.subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> Child:
    """Start ``command`` in a new session, armed to die with this process.

    stdin defaults to /dev/null: a child in its own session cannot read the
    terminal anyway (it would be stopped with SIGTTIN).  A child that must
    run under a lease is started by its :class:`Watchdog` instead.
    """
    proc = await asyncio.create_subprocess_exec(
        *launcher_argv(command),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    return Child(proc)


class Child:
    """A started child process and the signals we may send it, from any thread."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        #: The child's pid, which is also its process group id (new session).
        self.pid = proc.pid
        # A pidfd names this very process even after its pid is reused, so a
        # late signal can never hit a stranger.  Open it now: the loop reaps
        # children only on its own thread, so the child is at worst a zombie.
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(proc.pid)
        self._closed = False
        #: True once the child was sent SIGTERM (by us, or a watchdog told us
        #: it did), so that :meth:`terminate` does not send a second one.
        self.term_sent = False

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative N: killed by signal N), else None."""
        return self.proc.returncode

    def send(self, sig: int) -> None:
        """Signal the child's process group, so helpers it started get it too; never raises.

        The child itself gets the signal separately only if it has left its
        group: sent twice, a signal can be handled twice, and many programs
        take a second SIGTERM as "abort now, skip the cleanup".
        """
        if self._closed:
            return
        if sig == signal.SIGTERM:
            self.term_sent = True
        if self.proc.returncode is None:
            # Not reaped yet, so the group id is still ours (a zombie holds it).
            try:
                in_group = os.getpgid(self.pid) == self.pid
            except OSError:
                in_group = False
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            if in_group:
                return
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            elif self.proc.returncode is None:
                os.kill(self.pid, sig)

    async def wait(self) -> int:
        """Wait for the child to exit; returns its returncode."""
        return await self.proc.wait()

    async def terminate(self, grace: float) -> int:
        """SIGTERM (unless it was sent already), SIGKILL after ``grace`` seconds.

        Returns the returncode.
        """
        if self.proc.returncode is None:
            if not self.term_sent:
                self.send(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await self.proc.wait()
            except TimeoutError:
                _log.warning("child %d ignored SIGTERM for %.1f s: SIGKILL", self.pid, grace)
                self.send(signal.SIGKILL)
        return await self.proc.wait()

    def close(self) -> None:
        """After the child exited: kill what is left of its group, drop the pidfd."""
        if self._closed:
            return
        if self.proc.returncode is not None:
            # Helpers the child left behind in its group are leader-only work too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        self._closed = True
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class LeaseGuard:
    """Stops a child before the lease it runs under can run out: a thread.

    Used where the :class:`Watchdog` process is not available (not Linux).
    Follows :class:`~._watchdog.StopSchedule` on the slot's lease, and calls
    ``on_fire(signal)`` from its thread after each signal it sends.
    """

    def __init__(
        self,
        slot: Slot,
        child: Child,
        *,
        term_lead_ns: int,
        kill_lead_ns: int,
        on_fire: Callable[[int], object],
    ) -> None:
        self._schedule = StopSchedule(term_lead_ns, kill_lead_ns)
        self._slot = slot
        self._child = child
        self._on_fire = on_fire
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"fastelect-lease-guard-{child.pid}", daemon=True
        )
        #: The last signal the guard sent (0 for none).
        self.fired = 0

    @property
    def deadline_ns(self) -> int:
        """The latest lease deadline seen (lease clock ns: CLOCK_BOOTTIME on Linux)."""
        return self._schedule.deadline_ns

    def start(self) -> None:
        """Start watching (at once: a lease that is already over kills the child now)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and wait for the thread."""
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        schedule = self._schedule
        while not self._done.is_set():
            now = monotonic_ns()
            left = self._slot.lease_remaining_ns()
            if self._child.term_sent:
                schedule.termed = True  # the supervisor sent one: no second SIGTERM
            sig = schedule.step(now, now + left if left > 0 else 0)
            if sig:
                self._fire(sig)
                if sig == signal.SIGKILL:
                    return
            # Sleep to the next threshold; a renewal meanwhile only moves it later.
            self._done.wait(max(0, schedule.next_check_ns() - now) / _NS)

    def _fire(self, sig: int) -> None:
        self.fired = sig
        self._child.send(sig)
        with contextlib.suppress(Exception):  # a closed loop must not kill the guard
            self._on_fire(sig)


class WatchedChild:
    """A child its :class:`Watchdog` started: signals go through the watchdog to its whole tree.

    The watchdog is the child's parent and reaps it; it reports the exit
    status.  Should the watchdog die, the kernel kills the child with it
    (``PR_SET_PDEATHSIG``), and a pidfd tells us when it is gone.
    """

    def __init__(self, watchdog: Watchdog, pid: int) -> None:
        self._watchdog = watchdog
        #: The child's pid, which is also its process group and session id.
        self.pid = pid
        self._pidfd: int | None = None
        # Open now, while the watchdog cannot have reaped it: it has not
        # exited, or its exit report is still ahead of us.
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(pid)
        #: The exit status once reported (negative N: killed by signal N).
        self.returncode: int | None = None
        self.exited = asyncio.Event()
        #: True once the tree was sent SIGTERM (by us, or by the watchdog at the lease).
        self.term_sent = False

    def send(self, sig: int) -> None:
        """SIGTERM (at most once) or SIGKILL to the child's whole tree; never raises."""
        if self.returncode is not None:
            return
        if sig == signal.SIGTERM:
            self.term_sent = True
        if self._watchdog.tell("kill" if sig == signal.SIGKILL else "term"):
            return
        # The watchdog is gone (and so, by its death signal, the child): the
        # pidfd reaches the child alone, and never a stranger.
        with contextlib.suppress(OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)

    async def wait(self) -> int:
        """Wait until the child and its tree are gone; returns its returncode."""
        await self.exited.wait()
        if self.returncode is None:
            # The watchdog ended without a report: the kernel SIGKILLed the child.
            await self._gone()
            self.returncode = -signal.SIGKILL
        return self.returncode

    async def _gone(self) -> None:
        if self._pidfd is None:
            return  # no pidfd (Linux < 5.3): the death signal was sent as the watchdog died
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def readable() -> None:  # a pidfd turns readable once its process has exited
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(self._pidfd, readable)
        try:
            await gone
        finally:
            loop.remove_reader(self._pidfd)

    async def terminate(self, grace: float) -> int:
        """SIGTERM to the tree (unless it was sent already), SIGKILL after ``grace`` seconds."""
        if self.returncode is None:
            if not self.term_sent:
                self.send(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await self.wait()
            except TimeoutError:
                _log.warning("child %d ignored SIGTERM for %.1f s: SIGKILL", self.pid, grace)
                self.send(signal.SIGKILL)
        return await self.wait()

    def close(self) -> None:
        """Drop the pidfd (what is left of the tree goes when the watchdog stops)."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class Watchdog:
    """The sidecar's end of one child's lease watchdog process (see :mod:`._watchdog`).

    :meth:`start` starts the watchdog, which starts the command once it sees a
    lease long enough (``child`` is then set, else ``refused``).  :meth:`stop`
    it once the child is gone: that also stops whatever is left of the
    child's tree.  ``fired`` is set when the watchdog signalled the tree at
    the lease; ``ended`` when it exited.
    """

    #: Whether this platform has what the watchdog needs (/proc, prctl).
    AVAILABLE = sys.platform.startswith("linux")

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proc = proc
        self._reader = reader
        self._writer = writer
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.fired = asyncio.Event()
        self.ended = asyncio.Event()
        #: The last signal the watchdog sent the tree at the lease (0 for none).
        self.signal = 0
        #: True if it refused to start the child (the lease was over).
        self.refused = False
        #: How it holds the tree: ``cgroup PATH`` or ``subreaper``.
        self.mechanism = ""
        self.child: WatchedChild | None = None
        #: True once it reported the child's exit (its tree gone too).
        self.reported = False

    @classmethod
    async def start(
        cls,
        *,
        command: Sequence[str],
        env: Mapping[str, str],
        table: str,
        table_token: int,
        election: str,
        term: int,
        term_lead_ns: int,
        kill_lead_ns: int,
        containment: str,
    ) -> Watchdog:
        """Start the watchdog and, through it, the command; return once it started or refused.

        Raises :class:`OSError` if the watchdog cannot start or does not get ready.
        """
        from .. import __path__ as package_path

        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *watchdog_argv(
                    parent=os.getpid(),
                    package_path=list(package_path),
                    table=table,
                    table_token=table_token,
                    election=election,
                    term=term,
                    term_lead_ns=term_lead_ns,
                    kill_lead_ns=kill_lead_ns,
                    control_fd=theirs.fileno(),
                    containment=containment,
                    command=command,
                ),
                # The child inherits stdout and stderr from it: ours.
                stdin=asyncio.subprocess.DEVNULL,
                env=dict(env),
                # Its own session: Ctrl-C or Ctrl-Z on the terminal stops the
                # sidecar, never the watchdog that must outlast its freeze.
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        watchdog = cls(proc, reader, writer)
        try:
            async with asyncio.timeout(_WATCHDOG_READY_S):
                ready = (await reader.readline()).decode(errors="replace").split(maxsplit=1)
                if ready[:1] != ["ready"]:
                    raise OSError("the lease watchdog exited before it was ready")
                watchdog.mechanism = ready[1].strip() if len(ready) > 1 else ""
                started = (await reader.readline()).decode(errors="replace").split()
            if started == ["refused"]:
                watchdog.refused = True
                watchdog.fired.set()
            elif len(started) == 2 and started[0] == "child":
                watchdog.child = WatchedChild(watchdog, int(started[1]))
            else:
                raise OSError("the lease watchdog exited before it started the command")
        except BaseException as exc:
            await watchdog.stop()
            if isinstance(exc, TimeoutError):
                raise OSError(
                    f"the lease watchdog was not ready after {_WATCHDOG_READY_S:g} s"
                ) from None
            raise
        watchdog._task = asyncio.get_running_loop().create_task(watchdog._read())
        return watchdog

    def tell(self, command: str) -> bool:
        """Send ``term`` or ``kill``; False if the watchdog is gone (or going)."""
        if self.ended.is_set() or self._writer.is_closing():
            return False
        try:
            self._writer.write(f"{command}\n".encode())
        except (OSError, RuntimeError):
            return False
        return True

    async def _read(self) -> None:
        child = self.child
        try:
            async for raw in self._reader:
                kind, _, rest = raw.decode(errors="replace").strip().partition(" ")
                if kind in ("TERM", "KILL"):
                    self.signal = signal.SIGKILL if kind == "KILL" else signal.SIGTERM
                    if child is not None:
                        child.term_sent = True  # no second SIGTERM from the sidecar
                    self.fired.set()
                elif kind == "exit" and child is not None:
                    with contextlib.suppress(ValueError):
                        child.returncode = int(rest)
                    self.reported = True
                    child.exited.set()
        except OSError:
            pass
        finally:
            self.ended.set()
            if child is not None:
                child.exited.set()

    @property
    def unexpected_exit(self) -> bool:
        """True if the watchdog ended without being told to and without reporting the exit."""
        return self.ended.is_set() and not self._stopping and not self.reported and not self.refused

    async def stop(self) -> None:
        """End the watchdog (end of file: it stops the whole tree) and reap it."""
        self._stopping = True
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.close()
        try:
            async with asyncio.timeout(_WATCHDOG_EXIT_S):
                await self.proc.wait()
        except TimeoutError:
            _log.warning("lease watchdog %d did not exit: SIGKILL", self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        kind, _, path = self.mechanism.partition(" ")
        if kind == "cgroup" and path:
            # A watchdog that died (SIGKILL) left its cgroup: stop what is in it.
            await _empty_cgroup(Path(path))


async def _empty_cgroup(path: Path) -> None:
    """Kill everything in a watchdog's leftover cgroup and remove it (if it still exists)."""
    if not path.is_dir():  # noqa: ASYNC240 - a stat on cgroupfs (in memory) never blocks
        return
    tree = CgroupTree.existing(path)
    for _ in range(int(_WATCHDOG_EXIT_S / 0.01)):
        if not tree.pids():
            break
        tree.kill()
        await asyncio.sleep(0.01)
    else:
        _log.warning("processes in %s outlived cgroup.kill", path)
    tree.close()
