"""Every process a leader-only child started, found and stopped: a cgroup or a subreaper.

A child's process group is not its tree: ``setsid``, ``timeout``, a
double-forking daemon all leave it, and a group signal misses them.  The
lease watchdog (``_watchdog.py``) is the child's parent, so it holds the
tree by one of two mechanisms, named by :data:`MECHANISMS`:

* ``cgroup``: where cgroup v2 is mounted and our own cgroup is delegated to
  us (we may create a cgroup below it and move processes there), the child
  joins a cgroup of its own before its command runs.  Nothing it starts can
  leave it without the privilege to write another cgroup's ``cgroup.procs``,
  and ``cgroup.kill`` (Linux 5.14) SIGKILLs all of it at once.
* ``subreaper``: elsewhere the watchdog is a child subreaper
  (``PR_SET_CHILD_SUBREAPER``): orphans in the tree are re-parented to it,
  never to init, so the tree is exactly the watchdog's descendants in
  ``/proc``.  Stopping it means SIGKILL to each, reaping, and looking again,
  until none is left.

The watchdog is always a subreaper, also with a cgroup: it reaps the
orphans, so none lingers as a zombie of init's.

This module is imported by the watchdog script (standard library only) and
by the sidecar, which probes the mechanism once at start and logs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

__all__ = [
    "ENV",
    "MECHANISMS",
    "CgroupTree",
    "Mechanism",
    "ProcTree",
    "Tree",
    "become_subreaper",
    "cgroup_base",
    "choose",
    "sweep_stale",
]

Mechanism = Literal["cgroup", "subreaper"]
MECHANISMS: tuple[Mechanism, ...] = ("cgroup", "subreaper")
#: ``FASTELECT_RUN_CONTAINMENT=subreaper`` forces the fallback (``cgroup``
#: requires a cgroup; ``auto``, the default, takes a cgroup where it can).
ENV = "FASTELECT_RUN_CONTAINMENT"
#: The prefix of the cgroups the watchdogs create (then the watchdog's pid).
PREFIX = "fastelect-run-"
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make this process a child subreaper: orphans below it are re-parented to it.

    Raises :class:`OSError` where the kernel refuses (before Linux 3.4).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def cgroup_base() -> Path | None:
    """Our own cgroup v2 directory if it is ours to write (delegated to us); else None."""
    relative = _own_cgroup_v2()
    if relative is None:
        return None
    for mount_root, mount_point in _cgroup2_mounts():
        # Inside a cgroup namespace the mount's root is "/" and our path is
        # relative to it; on the host the root is "/" too.  A bind mount of a
        # subtree shows only what lies below its root.
        if relative == mount_root or relative.startswith(mount_root.rstrip("/") + "/"):
            base = Path(mount_point) / relative[len(mount_root) :].lstrip("/")
            # Moving a process needs write access to the common ancestor's procs.
            if os.access(base, os.W_OK) and os.access(base / "cgroup.procs", os.W_OK):
                return base
    return None


def _own_cgroup_v2() -> str | None:
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def _cgroup2_mounts() -> Iterator[tuple[str, str]]:
    """``(root, mount point)`` of each cgroup2 mount, from ``/proc/self/mountinfo``."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if right.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            yield _unescape(fields[3]), _unescape(fields[4])


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def choose(wanted: str) -> tuple[Mechanism, Path | None]:
    """The mechanism to use for ``wanted`` (``auto``, ``cgroup`` or ``subreaper``).

    Raises :class:`OSError` when ``cgroup`` is wanted and not usable here.
    """
    if wanted == "subreaper":
        return "subreaper", None
    base = cgroup_base()
    if base is not None and _probe(base):
        return "cgroup", base
    if wanted == "cgroup":
        raise OSError(errno.ENOTSUP, "cgroup v2 is not delegated to us here")
    return "subreaper", None


def _probe(base: Path) -> bool:
    """True if a cgroup with ``cgroup.kill`` (Linux 5.14) can be created below ``base``.

    (The root cgroup has no ``cgroup.kill`` of its own: only a new one tells.)
    """
    probe = base / f"{PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / "cgroup.kill").exists()
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def sweep_stale(base: Path) -> None:
    """Remove empty cgroups left by watchdogs that died with their sidecar (SIGKILL)."""
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            pid = entry.name.removeprefix(PREFIX)
            if entry.name == pid or not pid.isdigit() or _alive(int(pid)):
                continue
            with contextlib.suppress(OSError):  # populated (EBUSY) or raced: leave it
                entry.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Tree:
    """The processes of one child's tree; the watchdog that holds it is not one of them."""

    mechanism: Mechanism

    def join(self) -> None:
        """Called in the forked child before its command runs: enter the tree."""

    def pids(self) -> list[int]:
        """The live (not yet dead) processes of the tree now."""
        raise NotImplementedError

    def signal(self, sig: int) -> None:
        """Send ``sig`` to each process of the tree once."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL every process of the tree now (call again until :meth:`pids` is empty)."""
        self.signal(signal.SIGKILL)

    def close(self) -> None:
        """Once the tree is empty: release what holds it."""

    def describe(self) -> str:
        """One word for the log, and for the sidecar: the mechanism and where."""
        return self.mechanism


class ProcTree(Tree):
    """The descendants of the subreaper ``root`` (this process) in ``/proc``."""

    mechanism: Mechanism = "subreaper"

    def __init__(self, root: int) -> None:
        self.root = root

    def pids(self) -> list[int]:
        """Every live descendant of ``root`` (zombies are dead: their parent reaps them).

        Walks the kernel's child lists (``/proc/PID/task/TID/children``), which
        visit the tree only: fast at the SIGKILL point on a busy host.  Where
        the kernel lacks them, scans every process's parent instead.
        """
        if not os.path.exists(f"/proc/{self.root}/task/{self.root}/children"):
            return self._scan()
        found: list[int] = []
        todo = [self.root]
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                        for child in f.read().split():
                            if not _zombie(int(child)):
                                found.append(int(child))
                            todo.append(int(child))  # a zombie's children are alive
        return found

    def _scan(self) -> list[int]:
        children: dict[int, list[int]] = {}
        with contextlib.suppress(OSError):
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat", "rb") as f:
                        raw = f.read()
                except OSError:
                    continue  # gone meanwhile
                # The command name may hold spaces and ')': split after the last ')'.
                fields = raw.rpartition(b")")[2].split()
                if len(fields) < 2 or fields[0] in (b"Z", b"X"):
                    continue
                children.setdefault(int(fields[1]), []).append(int(entry.name))
        found: list[int] = []
        todo = [self.root]
        while todo:
            for child in children.get(todo.pop(), ()):
                found.append(child)
                todo.append(child)
        return found


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[:1] in ([b"Z"], [b"X"])
    except OSError:
        return True  # gone


class CgroupTree(Tree):
    """A cgroup of its own, created below ``base`` and removed by :meth:`close`."""

    mechanism: Mechanism = "cgroup"

    def __init__(self, base: Path, owner: int) -> None:
        self.path = base / f"{PREFIX}{owner}"
        self.path.mkdir()

    @classmethod
    def existing(cls, path: Path) -> CgroupTree:
        """The tree of a cgroup a watchdog created (to empty what it left behind)."""
        tree = cls.__new__(cls)
        tree.path = path
        return tree

    def join(self) -> None:
        """Move the calling process into the cgroup (its children then start there)."""
        with open(self.path / "cgroup.procs", "w") as f:
            f.write("0")

    def pids(self) -> list[int]:
        """The processes in the cgroup and any cgroup below it (zombies are not listed)."""
        found: list[int] = []
        for directory, _dirs, _files in os.walk(self.path):
            with contextlib.suppress(OSError), open(Path(directory) / "cgroup.procs") as f:
                found.extend(int(x) for x in f.read().split())
        return found

    def kill(self) -> None:
        """``cgroup.kill``: the kernel SIGKILLs all of it, also processes forking meanwhile."""
        try:
            with open(self.path / "cgroup.kill", "w") as f:
                f.write("1")
        except OSError:
            super().kill()

    def close(self) -> None:
        """Remove the (empty) cgroup and any the tree made below it, deepest first."""
        for directory, _dirs, _files in sorted(os.walk(self.path), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    def describe(self) -> str:
        """``cgroup PATH``."""
        return f"cgroup {self.path}"
