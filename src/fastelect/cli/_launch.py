"""Exec helper: ``python -I -S _launch.py PARENT_PID REGISTER_FD CMD [ARGS...]`` (Linux).

It asks the kernel to SIGKILL this process when its parent dies
(``PR_SET_PDEATHSIG``), then ``execvp``\\s CMD, which keeps the setting
(it survives ``execve`` except into set-uid programs).  A sidecar that is
SIGKILLed therefore never leaves its leader-only child running while
another node leads.

With a REGISTER_FD (``-`` for none), a socket to the lease watchdog
(``_watchdog.py``), it first registers its pid there and execs CMD only once
the watchdog answers ``ok``: the command never runs unwatched, and never
starts if the lease is already too short for it.

Why a helper instead of ``preexec_fn``: the sidecar has worker threads
(storage I/O, hooks), and code run between ``fork`` and ``exec`` in a
threaded process can deadlock on a lock another thread held at the fork.
This script runs after a clean ``exec`` instead, by path (so it imports
nothing from fastelect), with ``-I -S`` to start in ~10 ms.

The death signal is tied to the *thread* that forked the child; the CLI
forks from its event-loop thread, which lives as long as the process.
"""

import ctypes
import os
import select
import signal
import sys

_PR_SET_PDEATHSIG = 1
# The watchdog is up and waiting before the child starts; this only bounds a broken one.
_REGISTER_TIMEOUT_S = 10.0


def register(fd: int) -> None:
    """Register this process with the lease watchdog on ``fd``; exit unless it says ok."""
    answer = b""
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        ready, _, _ = select.select([fd], [], [], _REGISTER_TIMEOUT_S)
        if ready:
            answer = os.read(fd, 64)
        os.close(fd)
    except OSError:
        pass
    if answer == b"ok\n":
        return
    if answer.startswith(b"refused"):
        sys.stderr.write("fastelect: the lease ran out before the command could start\n")
    else:
        sys.stderr.write("fastelect: the lease watchdog did not answer; not starting the command\n")
    os._exit(126)


def main(argv: list[str]) -> None:
    """Arm the parent-death signal, check the parent is still there, exec the command."""
    if len(argv) < 4:
        sys.stderr.write("usage: _launch.py PARENT_PID REGISTER_FD|- CMD [ARGS...]\n")
        os._exit(2)
    parent = int(argv[1])
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            sys.stderr.write(f"fastelect: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}\n")
            os._exit(126)
    # The parent may have died between fork and prctl: we were reparented then.
    if os.getppid() != parent:
        os._exit(1)
    # Registered only now, with the death signal armed: from here on the
    # watchdog and the kernel between them bound the command's life.
    if argv[2] != "-":
        register(int(argv[2]))
    command = argv[3:]
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        # The shell's convention: 127 for "not found", 126 for "cannot run".
        sys.stderr.write(f"fastelect: cannot run {command[0]!r}: {exc.strerror}\n")
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


if __name__ == "__main__":
    main(sys.argv)
