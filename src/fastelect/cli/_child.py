"""Leader-only child processes: start them so they die with us, stop them in time.

Three layers keep a child from outliving its leadership (safety rule 6):

1. The supervisor (``fastelect run``) stops the child on every ending it sees:
   lost leadership, a stop signal, the child's own exit (its process group is
   swept so helpers it started go too).
2. A :class:`LeaseGuard` thread watches the lease in the leadership slot and
   signals SIGTERM when it is about to run out without a renewal and SIGKILL
   just before the deadline.  A thread rather than a loop timer, so a busy or
   stalled event loop cannot delay it (it needs only the GIL, which blocking
   I/O releases).
3. ``PR_SET_PDEATHSIG`` (see ``_launch.py``): if the sidecar is SIGKILLed,
   the kernel kills the child at once.

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
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .._core import Slot, monotonic_ns

__all__ = ["LAUNCHER", "Child", "LeaseGuard", "spawn"]

_log = logging.getLogger(__name__)
_NS = 1_000_000_000

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
    terminal anyway (it would be stopped with SIGTTIN).
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

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative N: killed by signal N), else None."""
        return self.proc.returncode

    def send(self, sig: int) -> None:
        """Signal the child's process group and the child itself; never raises."""
        if self._closed:
            return
        if self.proc.returncode is None:
            # Not reaped yet, so the group id is still ours (a zombie holds it).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            elif self.proc.returncode is None:
                os.kill(self.pid, sig)

    async def wait(self) -> int:
        """Wait for the child to exit; returns its returncode."""
        return await self.proc.wait()

    async def terminate(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the returncode."""
        if self.proc.returncode is None:
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
    """Stops a child before the lease it runs under can run out.

    Tracks the latest lease deadline the slot has shown (renewals only move
    it later; a loss zeroes the slot but the last deadline still bounds the
    child).  At ``deadline - term_lead`` it sends SIGTERM, at
    ``deadline - kill_lead`` SIGKILL, and calls ``on_fire(signal)`` from its
    thread each time.  A renewal that lands after the SIGTERM does not undo
    it: the child was told to stop and the supervisor starts a fresh one.
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
        if not 0 <= kill_lead_ns <= term_lead_ns:
            raise ValueError("need 0 <= kill_lead_ns <= term_lead_ns")
        self._slot = slot
        self._child = child
        self._term_lead = term_lead_ns
        self._kill_lead = kill_lead_ns
        self._on_fire = on_fire
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"fastelect-lease-guard-{child.pid}", daemon=True
        )
        #: The latest lease deadline seen (CLOCK_MONOTONIC ns).
        self.deadline_ns = 0
        #: The last signal the guard sent (0 for none).
        self.fired = 0

    def start(self) -> None:
        """Start watching (at once: a lease that is already over kills the child now)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and wait for the thread."""
        self._done.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        termed = False
        while not self._done.is_set():
            now = monotonic_ns()
            left = self._slot.lease_remaining_ns()
            if left > 0:
                self.deadline_ns = max(self.deadline_ns, now + left)
            elif self.deadline_ns == 0:
                self.deadline_ns = now  # never saw a lease: the child may not run
            if not termed and now >= self.deadline_ns - self._term_lead:
                termed = True
                self._fire(signal.SIGTERM)
            if now >= self.deadline_ns - self._kill_lead:
                self._fire(signal.SIGKILL)
                return
            target = self.deadline_ns - (self._kill_lead if termed else self._term_lead)
            # Sleep to the next threshold; a renewal meanwhile only moves it later.
            self._done.wait((target - now) / _NS)

    def _fire(self, sig: int) -> None:
        self.fired = sig
        self._child.send(sig)
        with contextlib.suppress(Exception):  # a closed loop must not kill the guard
            self._on_fire(sig)
