"""The lease watchdog: a small process that stops a leader-only child at its deadline.

``fastelect run`` starts one per child.  It runs outside the sidecar — its
own process, interpreter and session — so it keeps time when the sidecar
cannot: a stalled event loop, a C call holding the GIL, a SIGSTOP, a
debugger, Ctrl-Z on the terminal (the watchdog is in a session of its own,
so terminal signals do not reach it).  It reads the lease deadline from the
leadership table the sidecar publishes in shared memory, which the elector
updates on every renewal, and so needs nothing from the sidecar while it
runs.

The watchdog is started *before* the child.  The child's exec helper
(``_launch.py``) registers its pid over a socket and waits for the answer
before it execs the command, so the command never runs unwatched, and never
starts at all if the lease is already too short for it.

Protocol with the sidecar, one line each:

* stdout: ``ready``, then ``child PID`` (registered) or ``refused PID``
  (the lease was over), later ``TERM PID`` / ``KILL PID`` for each signal
  sent and ``gone PID`` when the child was reaped.
* stdin: ``term`` (the sidecar sent SIGTERM itself: do not send another;
  still SIGKILL at the deadline).  End of file (the sidecar closed it, or
  died) ends the watchdog.

It dies with the sidecar through ``PR_SET_PDEATHSIG``, as the child does:
a SIGKILLed sidecar takes both along, so nothing is left to watch.

This file runs as a script, ``python -I -S _watchdog.py …``, for a fast,
small start (about 25 ms and 14 MB instead of 0.3 s and 47 MB with the
whole package).  At module level it therefore imports only the standard
library; :class:`StopSchedule` and :func:`stop_leads` are also imported by
the sidecar, so both stop children by one rule.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import types
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

__all__ = ["KILL_LEAD_NS", "ProcStat", "StopSchedule", "proc_stat", "stop_leads", "watchdog_argv"]

_NS = 1_000_000_000
#: SIGKILL this long before the lease deadline, so the wake-up latency of
#: whoever sends it and the signal's delivery still land inside the lease.
KILL_LEAD_NS = 50_000_000
_PR_SET_PDEATHSIG = 1


def stop_leads(
    lease_s: float, frequent_s: float, margin_s: float, grace_s: float
) -> tuple[int, int]:
    """``(term_lead_ns, kill_lead_ns)``: how long before the deadline to SIGTERM and SIGKILL.

    A leader renews every F and its lease after a renewal is T - margin, so
    the lease left never drops below T - margin - F while renewals land.
    SIGTERM at half that slack leaves late renewals (and a retry or two)
    time to land first; never earlier than ``grace`` before the deadline,
    since the child needs no more than that.  SIGKILL :data:`KILL_LEAD_NS`
    before the deadline (never before the SIGTERM).
    """
    term = int(min(grace_s, max(0.0, (lease_s - margin_s - frequent_s) / 2)) * _NS)
    return term, min(KILL_LEAD_NS, term)


class StopSchedule:
    """When to signal a child that runs under a lease: one rule for every enforcer.

    Feed it the slot's lease deadline each time you look (0 when there is
    none).  It keeps the latest deadline seen: renewals only move it later,
    and once the lease is gone the last deadline still bounds the child.  A
    child started without a visible lease is due for SIGKILL at once.  A
    renewal that lands after the SIGTERM does not undo it: the child was told
    to stop, and the supervisor starts a fresh one.
    """

    def __init__(self, term_lead_ns: int, kill_lead_ns: int) -> None:
        if not 0 <= kill_lead_ns <= term_lead_ns:
            raise ValueError("need 0 <= kill_lead_ns <= term_lead_ns")
        self.term_lead_ns = term_lead_ns
        self.kill_lead_ns = kill_lead_ns
        #: The latest lease deadline seen (CLOCK_MONOTONIC ns); 0 before the first look.
        self.deadline_ns = 0
        #: True once the child got SIGTERM (from us or, when told, from anyone).
        self.termed = False

    def step(self, now_ns: int, lease_until_ns: int) -> int:
        """Note the deadline now visible; the signal due now (0 for none).

        Returns SIGKILL once ``deadline - kill_lead`` is reached (whether or
        not a SIGTERM went first: sending one just before the SIGKILL would
        only cost time), SIGTERM once ``deadline - term_lead`` is.
        """
        if lease_until_ns > self.deadline_ns:
            self.deadline_ns = lease_until_ns
        if self.deadline_ns == 0:
            self.deadline_ns = now_ns  # never saw a lease: the child may not run
        if now_ns >= self.deadline_ns - self.kill_lead_ns:
            return signal.SIGKILL
        if not self.termed and now_ns >= self.deadline_ns - self.term_lead_ns:
            self.termed = True
            return signal.SIGTERM
        return 0

    def next_check_ns(self) -> int:
        """When the next signal falls due, unless a renewal moves the deadline first."""
        return self.deadline_ns - (self.kill_lead_ns if self.termed else self.term_lead_ns)


class ProcStat(NamedTuple):
    """The fields of ``/proc/PID/stat`` the watchdog needs."""

    ppid: int
    pgid: int
    #: Clock ticks since boot (field 22): tells a process apart from a later
    #: one that reuses its pid.
    start: int


def proc_stat(pid: int) -> ProcStat | None:
    """Parent, process group and start time of ``pid``; None once it is gone (reaped).

    A zombie still counts: until its parent reaps it, its pid (and so its
    process group id) cannot be reused, so signals to that group reach only
    the child and what it left behind.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw.rpartition(b")")[2].split()
    try:
        # fields[0] is field 3 (state): field 4 is the parent, 5 the group, 22 the start time.
        return ProcStat(int(fields[1]), int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def watchdog_argv(
    *,
    parent: int,
    package_path: Sequence[str],
    table: str,
    election: str,
    term: int,
    term_lead_ns: int,
    kill_lead_ns: int,
    register_fd: int,
) -> list[str]:
    """The command line that starts a watchdog (see :func:`main`)."""
    return [
        sys.executable,
        # -I: ignore PYTHON* variables and the user site; -S: skip site (fast
        # start).  The package is found through --package-path instead.
        "-I",
        "-S",
        __file__,
        "--parent",
        str(parent),
        "--package-path",
        os.pathsep.join(package_path),
        "--table",
        table,
        "--election",
        election,
        "--term",
        str(term),
        "--term-lead-ns",
        str(term_lead_ns),
        "--kill-lead-ns",
        str(kill_lead_ns),
        "--register-fd",
        str(register_fd),
    ]


# -- the watchdog process ----------------------------------------------------------------


def _say(line: str) -> None:
    """Tell the sidecar; never block or fail (it may be frozen with a full pipe, or gone)."""
    with contextlib.suppress(OSError):
        os.write(1, (line + "\n").encode())


def _die(message: str, status: int = 1) -> NoReturn:
    with contextlib.suppress(OSError):
        os.write(2, f"fastelect: lease watchdog: {message}\n".encode())
    os._exit(status)


def _arm_parent_death_signal(parent: int) -> None:
    """SIGKILL us when the sidecar dies; exit at once if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            _die(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:  # it died between fork and prctl: we were reparented
        os._exit(1)


def _use_package_without_init(package_path: list[str]) -> None:
    """Make ``import fastelect._core`` work without running ``fastelect/__init__.py``.

    The package's ``__init__`` pulls in the elector, aiohttp and aiobotocore;
    the watchdog needs only the compiled core (and ``errors``, which the core
    imports).  A bare package object with the real ``__path__`` lets the
    normal import machinery find those two modules and nothing else.
    """
    package = types.ModuleType("fastelect")
    package.__path__ = package_path
    sys.modules["fastelect"] = package


class _Watch:
    """The registered child: its pid, and what tells it apart from a later holder of that pid."""

    def __init__(self, pid: int, start: int) -> None:
        self.pid = pid
        self.start = start
        self.pidfd: int | None = None
        # A pidfd names exactly this process, even after the pid is reused.
        with contextlib.suppress(AttributeError, OSError):
            self.pidfd = os.pidfd_open(pid)

    def stat(self) -> ProcStat | None:
        """The child's ``/proc`` stat while it (alive or an unreaped zombie) holds its pid."""
        stat = proc_stat(self.pid)
        return stat if stat is not None and stat.start == self.start else None

    def send(self, sig: int) -> None:
        """Signal the child's process group; only while the child is still ours."""
        stat = self.stat()
        if stat is None:
            return
        # Its pid is still held, so the group id is still the child's group:
        # this reaches helpers it started, never a stranger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        if stat.pgid == self.pid:
            return  # the group signal reached the child: a second one could be handled twice
        # The child moved to another group: signal it on its own too.
        with contextlib.suppress(OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="_watchdog.py", description=__doc__)
    p.add_argument("--parent", type=int, required=True, help="the sidecar's pid")
    p.add_argument("--package-path", required=True, help="fastelect.__path__, os.pathsep-joined")
    p.add_argument("--table", required=True, help="the leadership table's shared-memory name")
    p.add_argument("--election", required=True, help="the election's slot in the table")
    p.add_argument("--term", type=int, required=True, help="the term the child runs under")
    p.add_argument("--term-lead-ns", type=int, required=True)
    p.add_argument("--kill-lead-ns", type=int, required=True)
    p.add_argument("--register-fd", type=int, required=True, help="socket the child registers on")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the watchdog (see the module docstring); ends the process."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    _arm_parent_death_signal(args.parent)
    # Only the sidecar (stdin EOF), the kernel (its death) or SIGKILL end us.
    # Under systemd's default KillMode every process gets SIGTERM at once; the
    # sidecar then stops the child in order, still watched, and closes stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _use_package_without_init(args.package_path.split(os.pathsep))
    from fastelect._core import attach, monotonic_ns

    try:
        reader = attach(args.table)
    except Exception as exc:
        _die(f"cannot attach leadership table {args.table!r}: {exc}")
    if reader.owner_pid != args.parent:
        _die(f"leadership table {args.table!r} belongs to pid {reader.owner_pid}, not the sidecar")
    election, term = args.election, args.term

    def lease_until() -> int:
        """Our term's lease deadline as the table shows it now; 0 for none."""
        try:
            snap = reader.status(election)
        except Exception:
            # The slot stayed busy (a writer frozen mid-update, say): no news,
            # so the last deadline seen stands.  Never guess a later one.
            return 0
        if snap is None or snap["role"] != "leader" or snap["term"] != term:
            return 0  # a later term's lease is not the one the child runs under
        return int(snap["lease_until_ns"])

    _say("ready")
    schedule = StopSchedule(args.term_lead_ns, args.kill_lead_ns)
    watch = _register(args.register_fd, args.parent, schedule, monotonic_ns, lease_until)
    while True:
        if watch.stat() is None:
            _say(f"gone {watch.pid}")
            os._exit(0)
        now = monotonic_ns()
        sig = schedule.step(now, lease_until())
        if sig:
            watch.send(sig)
            _say(f"{'KILL' if sig == signal.SIGKILL else 'TERM'} {watch.pid}")
            if sig == signal.SIGKILL:
                os._exit(0)
        # Sleep to the next threshold (a renewal meanwhile only moves it
        # later: we look again then) or until the sidecar says something.
        timeout = max(0, schedule.next_check_ns() - now) / _NS
        ready, _, _ = select.select([0], [], [], timeout)
        if ready:
            data = os.read(0, 4096)
            if not data:
                os._exit(0)
            if b"term" in data:
                schedule.termed = True


def _register(
    fd: int,
    parent: int,
    schedule: StopSchedule,
    monotonic_ns: Callable[[], int],
    lease_until: Callable[[], int],
) -> _Watch:
    """Wait for the child's exec helper to register its pid; answer ``ok`` or refuse.

    Ends the watchdog if the sidecar closes stdin first (it could not start
    the child) or the helper dies before registering.
    """
    ready, _, _ = select.select([fd, 0], [], [])
    if fd not in ready:
        os._exit(0)  # stdin: the sidecar gave up on the child
    data = os.read(fd, 64)
    try:
        pid = int(data.decode().strip())
    except ValueError:
        os._exit(0)  # EOF: the helper died before registering
    stat = proc_stat(pid)
    # The helper runs in the session it was started in (group id = its pid)
    # as the sidecar's child; anything else is not the child we watch for.
    if stat is None or stat.pgid != pid or stat.ppid != parent:
        _say(f"refused {pid}")
        _die(f"pid {pid} is not the sidecar's new child")
    # Where the lease already ends too soon to start, the command never runs.
    if schedule.step(monotonic_ns(), lease_until()):
        with contextlib.suppress(OSError):
            os.write(fd, b"refused\n")
        _say(f"refused {pid}")
        os._exit(0)
    watch = _Watch(pid, stat.start)
    os.write(fd, b"ok\n")
    os.close(fd)
    _say(f"child {pid}")
    return watch


if __name__ == "__main__":
    main()
