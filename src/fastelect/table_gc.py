"""Find and remove leadership tables that crashed processes left in /dev/shm.

A process that closes its table unlinks it, but one that is SIGKILLed (or
OOM-killed) leaves ``/dev/shm/fastelect.NAME`` behind for good, and default
table names carry a random part, so nothing ever reuses the name. This
module sweeps them: it reads each segment's 128-byte header raw (any layout
version; see ``docs/table-layout.md``) and removes a segment only when

* it belongs to this process's user (never another user's), and
* its owner is gone or it is marked closed, or it is not a table at all
  (wrong magic or too short) and older than :data:`JUNK_AGE_S` (a creator
  writes the magic last, so a young segment without it may still be being
  set up).

"Gone" is decided by the lock every owner holds on its segment for its
lifetime (an OFD lock): the sweep removes a table only when it can take that
lock itself. The lock is the kernel's, so this holds across PID namespaces:
a sweep in a container never removes the live table of an elector in another
container that shares ``/dev/shm``, whatever the pids look like there. Only
a table written without the lock (by fastelect 0.1) is judged by its pid
(no such pid, or a zombie), and a reused pid then keeps it: the safe
direction.

Only Linux exposes POSIX shared memory as files; elsewhere every function
here finds nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import secrets
import struct
import time
from dataclasses import dataclass

from ._core import _pid_alive

__all__ = [
    "AUTO_SWEEP_MIN_AGE_S",
    "JUNK_AGE_S",
    "SHM_DIR",
    "TableInfo",
    "list_tables",
    "remove_stale_tables",
    "stale_tables",
]

logger = logging.getLogger(__name__)

#: Where Linux exposes POSIX shared memory.
SHM_DIR = "/dev/shm"
#: Segments that are not tables are left alone until this old (seconds, by mtime).
JUNK_AGE_S = 10.0

_PREFIX = "fastelect."
# A segment being removed is first renamed to this prefix + "<pid>.<random>".
_GRAVE_PREFIX = "fastelect-gc."
_MAGIC = 0x31305443454C4546  # "FELECT01"
# magic u64, version u32, header_size u32, slot_count u32, slot_size u32,
# owner_pid i64, created_wall_ns i64, created_mono_ns i64, closed u32,
# flags u32, token u64.
_HEADER = struct.Struct("=QIIIIqqqIIQ")
# flags: the owner holds an OFD write lock on the segment while it lives.
_LOCK_LIVENESS = 1
# struct flock on Linux (x86_64, aarch64): l_type, l_whence, l_start, l_len,
# l_pid, padded to 32 bytes.
_FLOCK = struct.Struct("hhqqi4x")


@dataclass(frozen=True, slots=True)
class TableInfo:
    """One ``/dev/shm/fastelect.*`` segment as its header describes it."""

    #: The table name (what ``LeadershipTable(name)`` / ``attach(name)`` take).
    name: str
    #: The segment's path.
    path: str
    #: Owner uid of the segment file.
    uid: int
    #: Size of the segment in bytes.
    size: int
    #: Layout version, or None when the header is not a table's.
    version: int | None
    #: The writing process's pid (0 when unknown).
    owner_pid: int
    #: Creation time, Unix ns (0 when unknown).
    created_wall_ns: int
    #: The owner closed it (leases zeroed) but did not unlink it.
    closed: bool
    #: "live", "dead owner", "closed", "not a table", "young" (no table header
    #: yet, maybe being created) or "foreign user".
    state: str
    #: How liveness was decided: "lock" (the owner's lock; any PID namespace),
    #: "pid" (a table of fastelect 0.1) or "" (not judged).
    liveness: str = ""
    #: The segment's permission bits.
    mode: int = 0

    @property
    def stale(self) -> bool:
        """True when :func:`remove_stale_tables` would remove it (now)."""
        return self.state in ("dead owner", "closed", "not a table")


def list_tables(directory: str = SHM_DIR) -> list[TableInfo]:
    """Every ``fastelect.*`` segment in ``directory``, sorted by name, with its state."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []  # no /dev/shm on this platform
    now = time.time()
    found = []
    for entry in sorted(names):
        if entry.startswith(_PREFIX):
            info = _inspect(directory, entry, now)
            if info is not None:
                found.append(info)
    return found


def stale_tables(directory: str = SHM_DIR) -> list[TableInfo]:
    """The segments :func:`remove_stale_tables` would remove: this user's, dead or closed."""
    return [info for info in list_tables(directory) if info.stale]


#: The automatic sweep (when a named table is created) leaves segments younger
#: than this alone: a table whose owner died a moment ago costs nothing for a
#: few more seconds, and an operator looking at it (``fastelect status
#: --tables``) still finds it.
AUTO_SWEEP_MIN_AGE_S = 10.0


def remove_stale_tables(directory: str = SHM_DIR, *, min_age_s: float = 0.0) -> list[TableInfo]:
    """Remove this user's stale segments; return those removed.

    Each one is re-checked right before removal, through a rename, so a table
    created under the same name meanwhile by a live process is put back, not
    lost. Leftovers of a sweep that died mid-way are removed too. Segments
    created less than ``min_age_s`` seconds ago are kept (the automatic sweep
    passes :data:`AUTO_SWEEP_MIN_AGE_S`).
    """
    removed = []
    born_before = time.time_ns() - int(min_age_s * 1e9)
    for info in stale_tables(directory):
        if min_age_s > 0 and info.created_wall_ns > born_before:
            continue
        if _remove(directory, info):
            removed.append(info)
            logger.info(
                "removed stale leadership table %s (%s, owner pid %d)",
                info.path,
                info.state,
                info.owner_pid,
                extra={"table": info.name, "owner_pid": info.owner_pid, "state": info.state},
            )
    _remove_dead_graves(directory)
    return removed


# -- internals --------------------------------------------------------------------


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)


def _inspect(directory: str, entry: str, now: float) -> TableInfo | None:
    path = os.path.join(directory, entry)
    try:
        fd = _open(path)
    except FileNotFoundError:
        return None  # removed meanwhile
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ELOOP):
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if st.st_uid != os.geteuid():
                    return _foreign(entry, path, st)
        return None  # not ours to judge
    try:
        return _judge(entry, path, fd, now)
    except OSError:
        return None  # unreadable: not ours to judge
    finally:
        os.close(fd)


def _judge(entry: str, path: str, fd: int, now: float) -> TableInfo:
    """Judge the segment open as ``fd`` (read-only): its owner, header and liveness."""
    st = os.fstat(fd)
    name = entry[len(_PREFIX) :]
    mode = st.st_mode & 0o7777
    if st.st_uid != os.geteuid():
        return _foreign(entry, path, st)
    data = os.pread(fd, _HEADER.size, 0) if st.st_size >= _HEADER.size else b""
    if len(data) < _HEADER.size or _HEADER.unpack(data)[0] != _MAGIC:
        young = now - st.st_mtime < JUNK_AGE_S
        return TableInfo(
            name, path, st.st_uid, st.st_size, None, 0, 0, False,
            "young" if young else "not a table", "", mode,
        )  # fmt: skip
    _, version, _, _, _, owner_pid, created_wall_ns, _, closed, flags, _ = _HEADER.unpack(data)
    liveness = "lock" if flags & _LOCK_LIVENESS else "pid"
    if closed:
        state = "closed"
    elif _owner_alive(fd, flags, owner_pid):
        state = "live"
    else:
        state = "dead owner"
    return TableInfo(
        name, path, st.st_uid, st.st_size, version, owner_pid, created_wall_ns, bool(closed),
        state, liveness, mode,
    )  # fmt: skip


def _foreign(entry: str, path: str, st: os.stat_result) -> TableInfo:
    return TableInfo(
        entry[len(_PREFIX) :], path, st.st_uid, st.st_size, None, 0, 0, False, "foreign user",
        "", st.st_mode & 0o7777,
    )  # fmt: skip


def _owner_alive(fd: int, flags: int, owner_pid: int) -> bool:
    """True unless the table's owner surely is gone."""
    if flags & _LOCK_LIVENESS:
        return _lock_held(fd)
    return _pid_alive(owner_pid)  # a table of fastelect 0.1: no lock to ask


def _lock_held(fd: int) -> bool:
    """Is the owner's lock on the segment held (by another open file)? Unknown: yes."""
    getlk = getattr(fcntl, "F_OFD_GETLK", None)
    if getlk is None:
        return True  # cannot ask: keep it (the safe direction)
    try:
        out = fcntl.fcntl(fd, getlk, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError:
        return True
    return bool(_FLOCK.unpack(out)[0] != fcntl.F_UNLCK)


def _take_lock(fd: int) -> bool:
    """Take a read lock on the segment: True only if no owner holds its lock."""
    setlk = getattr(fcntl, "F_OFD_SETLK", None)
    if setlk is None:
        return False
    try:
        fcntl.fcntl(fd, setlk, _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0))
    except OSError:
        return False
    return True


def _remove(directory: str, info: TableInfo) -> bool:
    """Remove ``info``'s segment if it is still the stale one that was inspected."""
    grave = os.path.join(directory, f"{_GRAVE_PREFIX}{os.getpid()}.{secrets.token_hex(6)}")
    try:
        os.rename(info.path, grave)  # atomic: whatever holds the name now is moved aside
    except FileNotFoundError:
        return False  # someone else removed or replaced it first
    except OSError as exc:
        logger.warning("cannot remove stale leadership table %s: %s", info.path, exc)
        return False
    # Judge what was actually moved: the name may have been re-created by a
    # live process between the scan and the rename.  A table with a lock is
    # removed only while this sweep holds that lock itself: proof that no
    # owner does, in any PID namespace.
    again: TableInfo | None = None
    fd = -1
    try:
        fd = _open(grave)
        again = _judge(os.path.basename(info.path), info.path, fd, time.time())
        if again.stale and again.liveness == "lock" and not again.closed and not _take_lock(fd):
            again = dataclasses.replace(again, state="live")
    except OSError:
        again = None
    try:
        if again is None or not again.stale:
            _put_back(grave, info.path)
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(grave)
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def _put_back(grave: str, path: str) -> None:
    """Return a displaced live (or unjudgeable) segment to its name."""
    # link() never replaces a name a third process created since.
    try:
        os.link(grave, path)
    except OSError as exc:
        logger.error(
            "a live leadership table was displaced from %s and could not be put back: %s",
            path,
            exc,
        )
    os.unlink(grave)


def _remove_dead_graves(directory: str) -> None:
    """Remove ``fastelect-gc.*`` leftovers of sweeps that died mid-way.

    A leftover is removed when what it holds is stale by the same test as a
    table (its owner's lock is free, it is closed, or it is old junk). The
    sweep's pid in its name is not asked: it may be another PID namespace's.
    A grave that holds a live table (a sweep in progress, about to put it
    back) is kept: removing it would take the table from its owner for good.
    """
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            if not entry.startswith(_GRAVE_PREFIX):
                continue
            path = os.path.join(directory, entry)
            with contextlib.suppress(OSError):
                fd = _open(path)
                try:
                    stale = _judge(_PREFIX + entry, path, fd, now).stale
                finally:
                    os.close(fd)
                if stale:
                    os.unlink(path)
