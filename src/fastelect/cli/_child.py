"""Leader-only child processes: start them so they die with us, stop them in time.

Three layers keep a child from outliving its leadership (safety rule 6,
docs/safety.md#rule-6-leader-only-work-stops-at-the-lease):

1. The supervisor (``fastelect run``) stops the child on every ending it sees:
   lost leadership, a stop signal, the child's own exit (its process group is
   swept so helpers it started go too).
2. Something outside the event loop watches the lease in the leadership
   table and signals SIGTERM when it is about to run out without a renewal
   and SIGKILL just before the deadline, by one rule
   (:class:`~._watchdog.StopSchedule`):

   * on Linux a :class:`Watchdog` *process* per child (``_watchdog.py``), so
     not even a frozen sidecar (SIGSTOP, a debugger, Ctrl-Z) can delay it;
     the child registers with it before its command starts;
   * elsewhere a :class:`LeaseGuard` thread, which a busy or stalled event
     loop cannot delay (it needs only the GIL, which blocking I/O releases).

   Never both for one child: two enforcers would each send SIGTERM, and
   many programs take a second SIGTERM as "abort now, skip the cleanup".
3. ``PR_SET_PDEATHSIG`` (see ``_launch.py``): if the sidecar is SIGKILLed,
   the kernel kills the child (and its watchdog) at once.

Children run in a session (and process group) of their own, so a terminal's
Ctrl-C reaches only the sidecar, which then stops the child in order, and so
signals reach every process the child started in its group.
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
from ._watchdog import StopSchedule, watchdog_argv

__all__ = ["LAUNCHER", "Child", "LeaseGuard", "Watchdog", "spawn"]

_log = logging.getLogger(__name__)
_NS = 1_000_000_000
# A watchdog starts in ~20 ms and exits at once on EOF; these bound broken ones.
_WATCHDOG_READY_S = 10.0
_WATCHDOG_EXIT_S = 5.0

#: The exec helper that arms PR_SET_PDEATHSIG before running the command.
LAUNCHER = Path(__file__).with_name("_launch.py")


def launcher_argv(command: Sequence[str], register_fd: int | None = None) -> list[str]:
    """argv that runs ``command`` through the launcher (Linux) or directly (elsewhere)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    # -I: ignore PYTHON* variables and the user site; -S: skip site (faster start).
    # The command itself still gets the full environment through execvp.
    register = "-" if register_fd is None else str(register_fd)
    return [sys.executable, "-I", "-S", str(LAUNCHER), str(os.getpid()), register, *command]


async def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[Any] | None = asyncio.subprocess.DEVNULL,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    watchdog: Watchdog | None = None,
) -> Child:
    """Start ``command`` in a new session, armed to die with this process.

    With a ``watchdog`` (Linux), the command starts only once the child has
    registered with it.  stdin defaults to /dev/null: a child in its own
    session cannot read the terminal anyway (it would be stopped with SIGTTIN).
    """
    register_fd = watchdog.child_fd if watchdog is not None else None
    try:
        proc = await asyncio.create_subprocess_exec(
            *launcher_argv(command, register_fd),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            pass_fds=() if register_fd is None else (register_fd,),
        )
    finally:
        if watchdog is not None:
            # The child has its own copy (or never started): ours must go, so
            # the watchdog sees end of file if the child dies unregistered.
            watchdog.close_child_fd()
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
        """The latest lease deadline seen (CLOCK_MONOTONIC ns)."""
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


class Watchdog:
    """The sidecar's end of one child's lease watchdog process (see :mod:`._watchdog`).

    Start it with :meth:`start` before the child, pass it to :func:`spawn`,
    then :meth:`stop` it once the child has been reaped.  ``fired`` is set
    (and ``on_signal`` called on the loop) when the watchdog signals the
    child or refuses to let it start; ``ended`` when its output ends (it exited).
    """

    #: Whether this platform has what the watchdog needs (/proc, PR_SET_PDEATHSIG).
    AVAILABLE = sys.platform.startswith("linux")

    def __init__(self, proc: asyncio.subprocess.Process, child_end: socket.socket) -> None:
        self.proc = proc
        self._child_end: socket.socket | None = child_end
        self._reader: asyncio.Task[None] | None = None
        self._stopping = False
        self.fired = asyncio.Event()
        self.ended = asyncio.Event()
        #: The last signal the watchdog sent the child (0 for none).
        self.signal = 0
        #: True if it refused to let the child start (the lease was over).
        self.refused = False
        #: True once it saw the child reaped (and so ended by itself).
        self.gone = False
        self.on_signal: Callable[[int], object] | None = None

    @classmethod
    async def start(
        cls,
        *,
        table: str,
        election: str,
        term: int,
        term_lead_ns: int,
        kill_lead_ns: int,
    ) -> Watchdog:
        """Start the watchdog and wait until it has the table mapped.

        Raises :class:`OSError` if it cannot start or does not get ready.
        """
        from .. import __path__ as package_path

        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *watchdog_argv(
                    parent=os.getpid(),
                    package_path=list(package_path),
                    table=table,
                    election=election,
                    term=term,
                    term_lead_ns=term_lead_ns,
                    kill_lead_ns=kill_lead_ns,
                    register_fd=theirs.fileno(),
                ),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
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
        watchdog = cls(proc, ours)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(_WATCHDOG_READY_S):
                first = await proc.stdout.readline()
            if first.strip() != b"ready":
                raise OSError("the lease watchdog exited before it was ready")
        except BaseException as exc:
            await watchdog.stop()
            if isinstance(exc, TimeoutError):
                raise OSError(
                    f"the lease watchdog was not ready after {_WATCHDOG_READY_S:g} s"
                ) from None
            raise
        watchdog._reader = asyncio.get_running_loop().create_task(watchdog._read())
        return watchdog

    @property
    def child_fd(self) -> int | None:
        """The socket the child's exec helper registers on (until :meth:`close_child_fd`)."""
        return None if self._child_end is None else self._child_end.fileno()

    def close_child_fd(self) -> None:
        """Drop our copy of the child's registration socket (once the child has its own)."""
        if self._child_end is not None:
            self._child_end.close()
            self._child_end = None

    def note_term(self) -> None:
        """Tell the watchdog we sent the child SIGTERM ourselves, so it sends no second one."""
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                stdin.write(b"term\n")

    async def _read(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        try:
            async for raw in stream:
                kind, _, _pid = raw.decode(errors="replace").strip().partition(" ")
                if kind == "gone":
                    self.gone = True
                elif kind == "refused":
                    self.refused = True
                    self.fired.set()
                elif kind in ("TERM", "KILL"):
                    self.signal = signal.SIGKILL if kind == "KILL" else signal.SIGTERM
                    if self.on_signal is not None:
                        self.on_signal(self.signal)
                    self.fired.set()
        finally:
            self.ended.set()

    @property
    def unexpected_exit(self) -> bool:
        """True if the watchdog ended without being told to, having sent nothing."""
        return (
            self.ended.is_set() and not self._stopping and not self.fired.is_set() and not self.gone
        )

    async def stop(self) -> None:
        """End the watchdog (stdin EOF) and reap it; SIGKILL it if it lingers."""
        self._stopping = True
        self.close_child_fd()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(_WATCHDOG_EXIT_S):
                await self.proc.wait()
        except TimeoutError:
            _log.warning("lease watchdog %d did not exit: SIGKILL", self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader
