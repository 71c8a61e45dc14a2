"""Exec helper: ``python -I -S _launch.py PARENT_PID CMD [ARGS...]`` (Linux).

It asks the kernel to SIGKILL this process when its parent dies
(``PR_SET_PDEATHSIG``), then ``execvp``\\s CMD, which keeps the setting
(it survives ``execve`` except into set-uid programs).  A parent that is
SIGKILLed therefore never leaves this child running.  ``fastelect demo``
starts its nodes this way; ``fastelect run`` starts leader-only children
through their lease watchdog instead (``_watchdog.py``), which also holds
their whole tree.

Why a helper instead of ``preexec_fn``: the CLI has worker threads
(storage I/O, hooks), and code run between ``fork`` and ``exec`` in a
threaded process can deadlock on a lock another thread held at the fork.
This script runs after a clean ``exec`` instead, by path (so it imports
nothing from fastelect), with ``-I -S`` to start in ~10 ms.

The death signal is tied to the *thread* that forked the child; the CLI
forks from its event-loop thread, which lives as long as the process.
"""

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    """Arm the parent-death signal, check the parent is still there, exec the command."""
    if len(argv) < 3:
        sys.stderr.write("usage: _launch.py PARENT_PID CMD [ARGS...]\n")
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
    command = argv[2:]
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        # The shell's convention: 127 for "not found", 126 for "cannot run".
        sys.stderr.write(f"fastelect: cannot run {command[0]!r}: {exc.strerror}\n")
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


if __name__ == "__main__":
    main(sys.argv)
