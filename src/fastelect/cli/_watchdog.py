"""The lease watchdog: a small process that runs a leader-only child and stops its whole tree.

``fastelect run`` starts one per child.  The watchdog *is* the child's
parent: it forks and execs the command itself, once it has seen a lease
long enough for it.  It runs outside the sidecar — its own process,
interpreter and session — so it keeps time when the sidecar cannot: a
stalled event loop, a C call holding the GIL, a SIGSTOP, a debugger, Ctrl-Z
on the terminal (the watchdog is in a session of its own, so terminal
signals do not reach it).  It reads the lease deadline from the leadership
table the sidecar publishes in shared memory, which the elector updates on
every renewal, and so needs nothing from the sidecar while it runs.

It holds the child's whole tree, not only its process group (see
:mod:`._tree`): a cgroup of its own where cgroup v2 is delegated to us, else
``/proc`` under a child subreaper (this process), so that processes that
call ``setsid`` or double-fork are stopped too.  At the SIGTERM point of an
unrenewed lease every process of the tree gets SIGTERM once; at the SIGKILL
point all of it is killed, again and again until none is left.

Protocol with the sidecar over a socket (``--control-fd``), one line each:

* to the sidecar: ``ready MECHANISM``, then ``child PID`` (started) or
  ``refused`` (the lease was already too short to start), later ``TERM`` /
  ``KILL`` for each signal it sent at the lease, and ``exit RETURNCODE``
  once the child has been reaped and nothing is left of its tree (negative
  N: killed by signal N).  Then it exits.
* from the sidecar: ``term`` (SIGTERM to the tree, unless it had one),
  ``kill`` (stop the whole tree now).  End of file — the sidecar is done, or
  died — stops the whole tree and ends the watchdog: a SIGKILLed sidecar
  takes every process of its child's tree along.

The child dies with the watchdog through ``PR_SET_PDEATHSIG``; if the
watchdog itself is SIGKILLed, the sidecar stops what is left (all of it
with a cgroup; only the child itself otherwise).

This file runs as a script, ``python -I -S _watchdog.py …``, for a faster,
smaller start than the whole package's 0.3 s and 47 MB: ready in 60-100 ms
(median 87 ms; a bare ``python -I -S`` takes 50 ms of it) with 19 MB RSS,
8.5 MB of it private, measured on the 2-core test VM.  At module level it
therefore imports only the standard library; :class:`StopSchedule` and
:func:`stop_leads` are also imported by the sidecar, so both stop children
by one rule.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import sys
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from ._tree import Tree

__all__ = ["KILL_LEAD_NS", "StopSchedule", "stop_leads", "watchdog_argv"]

_NS = 1_000_000_000
#: SIGKILL this long before the lease deadline, so the wake-up latency of
#: whoever sends it and the signal's delivery still land inside the lease.
KILL_LEAD_NS = 50_000_000
_PR_SET_PDEATHSIG = 1
# While stopping a tree: how long to wait for SIGCHLD before looking again.
_STOP_POLL_S = 0.005


def stop_leads(
    lease_s: float, frequent_s: float, margin_s: float, grace_s: float
) -> tuple[int, int]:
    """``(term_lead_ns, kill_lead_ns)``: how long before the deadline to SIGTERM and SIGKILL.

    A leader renews every F and its lease after a renewal is T - margin, so
    the lease left never drops below T - margin - F while renewals land.
    SIGTERM at half that slack leaves late renewals (and a retry or two)
    time to land first; never earlier than ``grace`` before the deadline,
    since the child needs no more than that.  SIGKILL :data:`KILL_LEAD_NS`
    before the deadline, whatever the grace: a SIGTERM point later than that
    is moved to it (the child then gets SIGKILL without a SIGTERM first).
    """
    term = int(min(grace_s, max(0.0, (lease_s - margin_s - frequent_s) / 2)) * _NS)
    return max(term, KILL_LEAD_NS), KILL_LEAD_NS


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
        #: The latest lease deadline seen (lease clock ns, CLOCK_BOOTTIME on
        #: Linux); 0 before the first look.
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


def watchdog_argv(
    *,
    parent: int,
    package_path: Sequence[str],
    table: str,
    table_token: int,
    election: str,
    term: int,
    term_lead_ns: int,
    kill_lead_ns: int,
    control_fd: int,
    containment: str,
    command: Sequence[str],
) -> list[str]:
    """The command line that starts a watchdog for ``command`` (see :func:`main`)."""
    return [
        sys.executable,
        # -I: ignore PYTHON* variables and the user site; -S: skip site (fast
        # start).  The package is found through --package-path instead.  The
        # command still gets the whole environment.
        "-I",
        "-S",
        __file__,
        "--parent",
        str(parent),
        "--package-path",
        os.pathsep.join(package_path),
        "--table",
        table,
        "--table-token",
        str(table_token),
        "--election",
        election,
        "--term",
        str(term),
        "--term-lead-ns",
        str(term_lead_ns),
        "--kill-lead-ns",
        str(kill_lead_ns),
        "--control-fd",
        str(control_fd),
        "--containment",
        containment,
        "--",
        *command,
    ]


# -- the watchdog process ----------------------------------------------------------------


def _die(message: str, status: int = 1) -> NoReturn:
    with contextlib.suppress(OSError):
        os.write(2, f"fastelect: lease watchdog: {message}\n".encode())
    os._exit(status)


def _use_package_without_init(package_path: list[str]) -> None:
    """Make ``import fastelect._core`` work without running ``fastelect/__init__.py``.

    The package's ``__init__`` pulls in the elector, aiohttp and aiobotocore;
    the watchdog needs only the compiled core (and ``errors``, which the core
    imports) and :mod:`._tree`.  Bare package objects with the real
    ``__path__`` let the normal import machinery find those and nothing else.
    """
    package = types.ModuleType("fastelect")
    package.__path__ = package_path
    sys.modules["fastelect"] = package
    cli = types.ModuleType("fastelect.cli")
    cli.__path__ = [os.path.join(p, "cli") for p in package_path]
    sys.modules["fastelect.cli"] = cli


class _Control:
    """The socket to the sidecar: lines out (never blocking), commands in."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.set_inheritable(False)  # the child must not hold the sidecar's line
        self.sock.setblocking(False)
        self.closed = False

    def say(self, line: str) -> None:
        """Tell the sidecar; never block or fail (it may be frozen with a full buffer, or gone)."""
        with contextlib.suppress(OSError):
            self.sock.send((line + "\n").encode())

    def read(self) -> bytes:
        """What the sidecar sent (b"" at end of file)."""
        try:
            return self.sock.recv(4096)
        except BlockingIOError:
            return b"\0"  # a spurious wake-up: nothing, and not the end
        except OSError:
            return b""


class _Watchdog:
    """One child under one lease: start it, signal its tree, reap everything."""

    def __init__(self, control: _Control, tree: Tree, schedule: StopSchedule) -> None:
        self.control = control
        self.tree = tree
        self.schedule = schedule
        self.child = 0
        self.returncode: int | None = None
        # SIGCHLD wakes select() through this pipe (Python's wake-up fd).
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def start(self, command: Sequence[str]) -> None:
        """Fork and exec ``command`` in a session and the tree of its own."""
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the child: only async-signal-safe-ish work, then exec
            os.close(ready_r)
            self._exec(command, ready_w)
        os.close(ready_w)
        # The exec closes ready_w (O_CLOEXEC): EOF means the command runs; a
        # byte means the child failed before (its message is on stderr).
        failed = os.read(ready_r, 1)
        os.close(ready_r)
        self.child = pid
        self.control.say(f"child {pid}")
        if failed:
            self.reap_until_gone()
            self.finish()

    def _exec(self, command: Sequence[str], ready_w: int) -> NoReturn:
        status = 126
        try:
            os.setsid()
            # Ignored signals stay ignored across exec: give the command the defaults.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
            self.tree.join()
            try:
                os.execvp(command[0], list(command))
            except OSError as exc:
                status = 127 if isinstance(exc, FileNotFoundError) else 126
                # The shell's convention: 127 for "not found", 126 for "cannot run".
                os.write(2, f"fastelect: cannot run {command[0]!r}: {exc.strerror}\n".encode())
        except BaseException as exc:  # never return into the watchdog's code
            with contextlib.suppress(BaseException):
                os.write(2, f"fastelect: cannot start the command: {exc}\n".encode())
        with contextlib.suppress(OSError):
            os.write(ready_w, b"x")
        os._exit(status)

    def reap(self) -> None:
        """Reap every child that has exited (orphans of the tree are ours too)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.returncode = os.waitstatus_to_exitcode(status)

    def wait(self, timeout: float) -> bool:
        """Sleep until a child exits, the sidecar speaks, or ``timeout``; False at its EOF."""
        control = self.control.sock.fileno()
        fds = [self.wake_r] if self.control.closed else [self.wake_r, control]
        ready, _, _ = select.select(fds, [], [], timeout)
        if self.wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(self.wake_r, 4096)
        if control in ready:
            data = self.control.read()
            if not data:
                self.control.closed = True
                return False
            if b"kill" in data:
                self.stop_tree()
            elif b"term" in data:
                self.term()
        return True

    def term(self) -> None:
        """SIGTERM to every process of the tree, once per child."""
        if not self.schedule.termed:
            self.schedule.termed = True
            self.tree.signal(signal.SIGTERM)

    def stop_tree(self) -> None:
        """SIGKILL the whole tree, reaping, until nothing of it is left."""
        while True:
            self.reap()
            if not self.tree.pids():
                self.reap()
                return
            self.tree.kill()
            select.select([self.wake_r], [], [], _STOP_POLL_S)
            with contextlib.suppress(OSError):
                os.read(self.wake_r, 4096)

    def reap_until_gone(self) -> None:
        while self.returncode is None:
            self.reap()
            if self.returncode is None:
                select.select([self.wake_r], [], [], _STOP_POLL_S)
                with contextlib.suppress(OSError):
                    os.read(self.wake_r, 4096)

    def finish(self) -> NoReturn:
        """The child is reaped: stop what is left of its tree, report, clean up, exit."""
        self.stop_tree()
        self.control.say(f"exit {self.returncode}")
        self.tree.close()
        os._exit(0)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="_watchdog.py", description=__doc__)
    p.add_argument("--parent", type=int, required=True, help="the sidecar's pid")
    p.add_argument("--package-path", required=True, help="fastelect.__path__, os.pathsep-joined")
    p.add_argument("--table", required=True, help="the leadership table's shared-memory name")
    p.add_argument(
        "--table-token", type=int, required=True, help="the table's incarnation (its token)"
    )
    p.add_argument("--election", required=True, help="the election's slot in the table")
    p.add_argument("--term", type=int, required=True, help="the term the child runs under")
    p.add_argument("--term-lead-ns", type=int, required=True)
    p.add_argument("--kill-lead-ns", type=int, required=True)
    p.add_argument("--control-fd", type=int, required=True, help="socket to the sidecar")
    p.add_argument("--containment", choices=("cgroup", "subreaper"), required=True)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        p.error("no command")
    return args


def _make_tree(containment: str) -> Tree:
    from fastelect.cli._tree import CgroupTree, ProcTree, become_subreaper, cgroup_base

    # Always a subreaper: orphans of the tree come to us to be found and reaped.
    try:
        become_subreaper()
    except OSError as exc:
        _die(str(exc))
    if containment == "cgroup":
        base = cgroup_base()
        if base is None:
            _die("cgroup v2 is no longer usable here")
        try:
            return CgroupTree(base, os.getpid())
        except OSError as exc:
            _die(f"cannot create a cgroup below {base}: {exc}")
    return ProcTree(os.getpid())


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the watchdog (see the module docstring); ends the process."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    # The sidecar's end of the socket closes when it dies, however it dies:
    # that, not a death signal, ends us, so we can stop the tree first.
    if os.getppid() != args.parent:
        os._exit(1)
    # Only the sidecar (end of file), or SIGKILL end us.  Under systemd's
    # default KillMode every process gets SIGTERM at once; the sidecar then
    # stops the child in order, still watched, and closes the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control = _Control(args.control_fd)
    _use_package_without_init(args.package_path.split(os.pathsep))
    from fastelect._core import attach, monotonic_ns

    try:
        reader = attach(args.table)
    except Exception as exc:
        _die(f"cannot attach leadership table {args.table!r}: {exc}")
    # The table must be the one the sidecar created, and still held by it:
    # its token, and its owner's lock.  Never a pid: the pid in the table is
    # its writer's in the writer's PID namespace.
    if reader.token != args.table_token or not reader.owner_alive:
        _die(
            f"leadership table {args.table!r} is not the sidecar's live table "
            f"(token {reader.token}, expected {args.table_token}; "
            f"owner {'alive' if reader.owner_alive else 'gone'})"
        )
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

    tree = _make_tree(args.containment)
    control.say(f"ready {tree.describe()}")
    schedule = StopSchedule(args.term_lead_ns, args.kill_lead_ns)
    watchdog = _Watchdog(control, tree, schedule)
    # Where the lease already ends too soon to start, the command never runs.
    if schedule.step(monotonic_ns(), lease_until()):
        control.say("refused")
        tree.close()
        os._exit(0)
    watchdog.start(args.command)
    _run(watchdog, monotonic_ns, lease_until)


def _run(watchdog: _Watchdog, clock: Callable[[], int], lease_until: Callable[[], int]) -> NoReturn:
    schedule = watchdog.schedule
    while True:
        watchdog.reap()
        if watchdog.returncode is not None:
            watchdog.finish()
        now = clock()
        sig = schedule.step(now, lease_until())
        if sig == signal.SIGTERM:
            watchdog.tree.signal(signal.SIGTERM)
            watchdog.control.say("TERM")
        elif sig == signal.SIGKILL:
            watchdog.control.say("KILL")
            watchdog.stop_tree()
            watchdog.reap_until_gone()
            watchdog.finish()
        # Sleep to the next threshold (a renewal meanwhile only moves it
        # later: we look again then), until a child exits or the sidecar speaks.
        timeout = max(0, schedule.next_check_ns() - now) / _NS
        if not watchdog.wait(timeout):
            watchdog.stop_tree()  # the sidecar is done, or died: nothing may run on
            watchdog.reap_until_gone()
            watchdog.finish()


if __name__ == "__main__":
    main()
