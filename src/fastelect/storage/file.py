"""A lock store in a local directory: the embedded default.

Safe for any number of processes on one host sharing one directory on a local
filesystem. It is not a distributed lock: network filesystems (NFS, SMB) do
not give the atomic rename and ``flock`` semantics it relies on.

Each key is one file in the directory. Its name is the key percent-encoded
(``cluster/leader`` is stored as ``cluster%2Fleader``), so every key maps to
a file directly inside the directory and none can reach outside it.
Hidden files beside it (``.<name>.lock``, ``.<name>.<pid>.<random>.tmp``)
are the key's lock file and in-flight writes; encoded names never start with
a dot, so these cannot collide with keys. A writer killed mid-write leaves its
temp file behind; the next write of that key removes it (see
:meth:`FileStorage._sweep_temp_files`).

File format (version 1)::

    fastelect-file/1 <32 lowercase hex digits: this write's etag>\\n<body>
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import stat
import time
from urllib.parse import quote

from ..errors import ConfigError
from ._io_threads import IOThreads
from .base import (
    MAX_OBJECT_SIZE,
    ObjectNotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageReadOnly,
    StorageStats,
    StorageUnavailable,
)
from .verify import VerifyReport, verify_storage

__all__ = ["FileStorage", "require_directory", "resolve_directory"]

logger = logging.getLogger(__name__)

# Bump the version in the magic when the on-disk format changes.
_MAGIC = b"fastelect-file/1 "
_TOKEN = re.compile(rb"[0-9a-f]{32}")
# What follows ".<name>." in a temp file's name, before ".tmp". Exactly one
# dot: names may contain dots ("a.1"), and ".a.1.<pid>.<hex>.tmp" belongs to
# key "a.1", not to key "a".
_TEMP_TAIL = re.compile(r"[0-9]+\.[0-9a-f]{16}")
_HEADER_LEN = len(_MAGIC) + 32 + 1
# Leaves room under NAME_MAX (255) for the ".<name>.<pid>.<16 hex>.tmp" temp names.
_MAX_NAME_BYTES = 200
# Orphaned temp files of a key are looked for at most this often (seconds).
_SWEEP_INTERVAL_S = 10.0
# errnos that mean "refused", not "broken": reported as StorageAuthError
# (EROFS as its subclass StorageReadOnly, with its own message).
_DENIED = frozenset({errno.EACCES, errno.EPERM})
# Lock and record files are opened without following a symlink in their
# place: a planted link must not make FileStorage create, lock or read a
# file outside its directory.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# errnos that may clear on their own: reported as StorageUnavailable.
_TRANSIENT = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.EDQUOT,
        errno.EINTR,
        errno.EIO,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ENOSPC,
        errno.ESTALE,
    }
)


class FileStorage:
    """A :class:`~fastelect.storage.Storage` in a local directory.

    ``directory`` is resolved at construction the way the kernel resolves
    it (:func:`resolve_directory`: symlinks followed, ``..`` taken after
    them), so every spelling of one directory names one lock; ``directory``
    (the property), :meth:`describe` and every error show that resolved
    path.

    ``create`` (default False) says whether FileStorage may make the
    directory. By default it must already exist: a missing one is a
    :class:`~fastelect.ConfigError` naming it, raised here, before anything
    is written, because a typo in the path would otherwise make a second,
    separate lock beside the one every other node uses. With
    ``create=True`` a missing directory is made (mode 0700; missing parents
    with the default mode) by :meth:`check` or on first use. A directory
    removed while in use is never re-made unless ``create=True``: the
    storage reports it instead.
    ``lock_timeout`` (seconds, default 2.0) bounds the wait for another
    process's write to finish; past it the write fails with
    StorageUnavailable instead of hanging behind a frozen process.

    **Writes** take an exclusive ``flock`` on the key's lock file, compare the
    current etag, write a temp file in the same directory, fsync it, rename it
    over the key's file and fsync the directory. A separate lock file is needed
    because the rename swaps the data file's inode, so a lock on the data file
    would guard the old one. ``flock`` rather than ``fcntl``/``lockf`` because
    flock locks belong to the open file description: two coroutines of one
    process, each with its own descriptor, exclude each other, while POSIX
    record locks are per process and would let both in.

    **Reads** take no lock: files are never modified in place, so one
    ``open`` sees one whole version, header and body together.

    **Why ABA cannot happen.** Each write draws a fresh 128-bit random token,
    stores it in the file's header and returns it as the etag, so an etag
    names exactly one write (a repeat has probability ~2**-128 per pair).
    Etags are not derived from ``fstat``: inodes are reused as soon as a
    replaced file is freed, and ext4/xfs timestamps come from a coarse clock
    (one tick is ~1-4 ms) that can also step backwards, so two writes of the
    same size within a tick could reproduce an old (inode, mtime, ctime,
    size). A file not written by FileStorage (no valid header) gets an etag
    from its ``fstat`` (prefixed ``stat-``, never equal to a token) so an
    elector can still replace garbage.

    Blocking file calls run on this storage's own few daemon threads (at most
    8), reads included: a page-cached read takes ~2 us inline and ~40 us
    through a thread, but a stalled disk would otherwise stall the whole event
    loop. Not the loop's default executor: that one is shared with other
    work, and refuses new work at interpreter exit, when a release must still
    be written. A call hung in the kernel keeps its thread; at most 256 more
    calls wait behind busy threads before new ones fail at once with
    StorageUnavailable (see ``fastelect.storage._io_threads``).

    **Links and directories inside the directory.** A key's file or lock
    file that is a symlink is refused (``O_NOFOLLOW``), never followed; one
    that is a directory is reported by path with what to do.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        create: bool = False,
        lock_timeout: float = 2.0,
    ) -> None:
        if not os.fspath(directory):
            raise ConfigError("directory", "must not be empty")
        if not lock_timeout > 0:
            raise ConfigError("lock_timeout", f"must be > 0 seconds, got {lock_timeout!r}")
        self._dir = resolve_directory(directory)
        self._create = bool(create)
        if not self._create:
            require_directory(self._dir, directory, hint="pass create=True to have it made")
        self._lock_timeout = lock_timeout
        self._io = IOThreads(f"FileStorage({self._dir})")
        self._ready = False
        self._closed = False
        # When each key's orphaned temp files were last swept (monotonic s).
        self._swept: dict[str, float] = {}
        #: Requests issued so far.
        self.stats = StorageStats()

    @property
    def directory(self) -> str:
        """The storage directory, resolved as the kernel resolves it (no symlink, no ``..``)."""
        return self._dir

    async def get(self, key: str) -> tuple[bytes, str]:
        """Return the body (at most MAX_OBJECT_SIZE + 1 bytes) and etag of ``key``."""
        self._check_open()
        name = _file_name(key)
        self.stats.gets += 1
        return await self._io.run(self._get_sync, name)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        """Write ``body`` if the current etag is ``etag`` ("" = must not exist)."""
        self._check_open()
        name = _file_name(key)
        self.stats.puts += 1
        return await self._io.run(self._put_sync, name, bytes(body), etag)

    async def check(self) -> None:
        """Prove this process can write in the directory (made first if missing and ``create``)."""
        self._check_open()
        await self._io.run(self._check_sync)

    async def close(self) -> None:
        """Mark the storage closed (no descriptor outlives an operation)."""
        self._closed = True
        self._io.close()

    def describe(self, key: str) -> str:
        """``file://<absolute path of the key's file>``."""
        return f"file://{os.path.join(self._dir, _file_name(key))}"

    # -- worker-thread side -------------------------------------------------

    def _get_sync(self, name: str) -> tuple[bytes, str]:
        self._ensure_directory(once=True)
        path = os.path.join(self._dir, name)
        data, etag = self._read(path, _HEADER_LEN + MAX_OBJECT_SIZE + 1)
        if data is None:
            raise ObjectNotFound(f"file://{path} does not exist")
        return data, etag

    def _put_sync(self, name: str, body: bytes, etag: str) -> str:
        self._ensure_directory(once=False)
        path = os.path.join(self._dir, name)
        lock_path = os.path.join(self._dir, f".{name}.lock")
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
        except OSError as exc:
            raise self._os_error(exc, "opening the lock file", lock_path) from exc
        try:
            self._lock(lock_fd, lock_path)
            # Holding the lock: nobody else can replace the file until we return.
            _, current = self._read(path, _HEADER_LEN)
            if etag == "":
                if current:
                    raise PreconditionFailed(f"file://{path} already exists")
            elif not current:
                raise PreconditionFailed(f"file://{path} no longer exists")
            elif current != etag:
                raise PreconditionFailed(f"file://{path} changed since etag {etag}")
            self._sweep_temp_files(name)
            token = secrets.token_hex(16)
            self._replace(path, name, _MAGIC + token.encode() + b"\n" + body)
            return f'"{token}"'
        finally:
            # Closing the descriptor releases the flock.
            os.close(lock_fd)

    def _check_sync(self) -> None:
        self._ensure_directory(once=False)
        probe = os.path.join(self._dir, f".probe.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise self._os_error(exc, "writing in the storage directory", probe) from exc

    def _ensure_directory(self, *, once: bool) -> None:
        if once and self._ready:
            return
        if not self._create:
            self._require_directory()
            self._ready = True
            return
        try:
            os.makedirs(self._dir, mode=0o700, exist_ok=True)
        except FileExistsError as exc:
            # makedirs(exist_ok=True) raises this only when the path is not a directory.
            raise StorageError(
                f"storage directory {self._dir} exists but is not a directory"
            ) from exc
        except OSError as exc:
            raise self._os_error(exc, "creating the storage directory", self._dir) from exc
        self._ready = True

    def _require_directory(self) -> None:
        # Checked again at use: the directory may be gone since construction,
        # and re-making it would start a second, empty lock.
        try:
            info = os.stat(self._dir)
        except FileNotFoundError as exc:
            raise StorageError(
                f"storage directory {self._dir} no longer exists (it was there when this"
                " FileStorage was made); FileStorage does not re-make it, as a new empty"
                " directory would be a new lock: restore it, or use create=True"
            ) from exc
        except OSError as exc:
            raise self._os_error(exc, "opening the storage directory", self._dir) from exc
        if not stat.S_ISDIR(info.st_mode):
            raise StorageError(f"storage directory {self._dir} exists but is not a directory")

    def _read(self, path: str, limit: int) -> tuple[bytes | None, str]:
        """Return (body, etag) of ``path``, or (None, "") if it does not exist."""
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:
            return None, ""
        except OSError as exc:
            raise self._os_error(exc, "opening", path) from exc
        try:
            st = os.fstat(fd)
            chunks: list[bytes] = []
            size = 0
            while size < limit:
                chunk = os.read(fd, limit - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise self._os_error(exc, "reading", path) from exc
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if data.startswith(_MAGIC) and data[_HEADER_LEN - 1 : _HEADER_LEN] == b"\n":
            token = data[len(_MAGIC) : _HEADER_LEN - 1]
            if _TOKEN.fullmatch(token):
                return data[_HEADER_LEN : _HEADER_LEN + MAX_OBJECT_SIZE + 1], f'"{token.decode()}"'
        # Not written by FileStorage: name this exact file version by its fstat.
        etag = f'"stat-{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_ctime_ns:x}-{st.st_size:x}"'
        return data[: MAX_OBJECT_SIZE + 1], etag

    def _replace(self, path: str, name: str, data: bytes) -> None:
        tmp = os.path.join(self._dir, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            # The temp file may never have been created, or already renamed.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._os_error(exc, "writing", path) from exc
        # The rename is only durable once the directory entry is on disk. If
        # this fails the outcome is unknown, and the caller must treat it so.
        try:
            dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise self._os_error(exc, "syncing the storage directory", self._dir) from exc

    def _sweep_temp_files(self, name: str) -> None:
        """Remove temp files of ``name`` left by writers that died mid-write.

        Called with the key's lock held. A temp file exists only while its
        writer holds that lock, and the kernel releases a flock only when
        the writer closes it (after renaming or removing its temp file) or
        dies, so every temp file of this key seen now is an orphan. The pid
        in the name tells operators whose it was. Swept at most every
        _SWEEP_INTERVAL_S per key and instance: a directory listing per
        renewal would be wasted work, and an orphan costs only disk space.
        """
        now = time.monotonic()
        last = self._swept.get(name)
        if last is not None and now - last < _SWEEP_INTERVAL_S:
            return
        self._swept[name] = now
        prefix, suffix = f".{name}.", ".tmp"
        try:
            entries = os.listdir(self._dir)
        except OSError:
            return  # the write itself will report a broken directory
        for entry in entries:
            if not (entry.startswith(prefix) and entry.endswith(suffix)):
                continue
            if not _TEMP_TAIL.fullmatch(entry[len(prefix) : -len(suffix)]):
                continue
            try:
                os.unlink(os.path.join(self._dir, entry))
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning(
                    "cannot remove orphaned temp file %s: %s",
                    os.path.join(self._dir, entry),
                    exc,
                    extra={"path": os.path.join(self._dir, entry)},
                )
                continue
            logger.info(
                "removed temp file %s of a writer that died mid-write",
                os.path.join(self._dir, entry),
                extra={"path": os.path.join(self._dir, entry)},
            )

    def _lock(self, fd: int, lock_path: str) -> None:
        # Poll with LOCK_NB rather than block: a worker thread stuck in flock
        # behind a frozen process could never be cancelled or reclaimed.
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.0002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._os_error(exc, "locking", lock_path) from exc
            if time.monotonic() >= deadline:
                raise StorageUnavailable(
                    f"timed out after {self._lock_timeout} s waiting for the lock {lock_path}"
                    " (another process is writing, or is frozen mid-write)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.002)

    def _os_error(self, exc: OSError, action: str, path: str) -> StorageError:
        where = exc.filename if exc.filename is not None else path
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EROFS:
            return StorageReadOnly(
                f"{action} {where} failed: the filesystem holding the storage directory"
                f" {self._dir} is mounted read-only; remount it read-write or use a"
                " directory on a writable filesystem (reads still work, writes cannot)"
            )
        if exc.errno == errno.EISDIR:
            # exc.filename may be the temp file a rename came from: name ``path``.
            return StorageError(
                f"{action} {path} failed: it is a directory, where FileStorage keeps"
                f" {_role(path)} (a plain file); something else replaced it. Remove that"
                f" directory once nothing uses it (rmdir {path}): FileStorage makes the"
                " file again"
            )
        if exc.errno == errno.ELOOP:
            # Only O_NOFOLLOW opens get here: the directory itself is resolved.
            return StorageError(
                f"{action} {path} failed: it is a symbolic link, and FileStorage follows"
                f" no link in place of {_role(path)} (one could make it create, lock or"
                f" read a file outside {self._dir}); remove the link (rm {path})"
            )
        if exc.errno in _DENIED:
            return StorageAuthError(
                f"permission denied {action} {where} ({reason}): the storage directory"
                f" {self._dir} and its files must be readable and writable by this"
                " process's user; check their owner and mode"
            )
        if exc.errno == errno.ENOTDIR:
            return StorageError(
                f"{action} {where} failed: a component of the storage directory path"
                f" {self._dir} is a file, not a directory"
            )
        if exc.errno in _TRANSIENT:
            return StorageUnavailable(f"{action} {where} failed: {reason}")
        return StorageError(f"{action} {where} failed: {reason}")

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"FileStorage({self._dir}) is closed")

    # -- added for fastelect check (kept at the end of the class) ------------

    async def delete(self, key: str) -> None:
        """Remove ``key``'s file and its lock file (a missing key is not an error).

        Never delete a lock electors are using: any node may create a missing
        record at once, while the old leader's lease still runs (and a writer
        that already opened the removed lock file would not exclude one that
        creates a new one). Electors never delete; ``fastelect check`` removes
        its probe object with this.
        """
        self._check_open()
        name = _file_name(key)
        await self._io.run(self._delete_sync, name)

    async def verify(self, prefix: str = "") -> VerifyReport:
        """Probe this store's conditional writes; see :func:`fastelect.storage.verify_storage`."""
        return await verify_storage(self, prefix=prefix)

    def _delete_sync(self, name: str) -> None:
        path = os.path.join(self._dir, name)
        lock_path = os.path.join(self._dir, f".{name}.lock")
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | _NOFOLLOW)
        except FileNotFoundError:
            lock_fd = -1  # never written through FileStorage, or already deleted
        except OSError as exc:
            raise self._os_error(exc, "opening the lock file", lock_path) from exc
        try:
            if lock_fd >= 0:
                # Wait out a write in progress so it cannot land after the unlink.
                self._lock(lock_fd, lock_path)
            for victim in (path, lock_path):
                try:
                    os.unlink(victim)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise self._os_error(exc, "deleting", victim) from exc
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)


def resolve_directory(directory: str | os.PathLike[str]) -> str:
    """The absolute path the kernel reaches through ``directory``.

    ``..`` is taken the way the kernel takes it: after following the symlink
    before it (``jump/../locks``, with ``jump`` a link to ``/a/b``, is
    ``/a/locks``), never by crossing out text as ``os.path.abspath`` and
    ``normpath`` do, which named a second directory and so a second lock.
    A part of the path that does not exist yet is kept as written (it will be
    created), but a ``..`` after it names nothing the kernel could reach and
    is a :class:`~fastelect.ConfigError`.
    """
    given = os.fspath(directory)
    path = given if os.path.isabs(given) else os.path.join(os.getcwd(), given)
    parts = path.split(os.sep)
    # The longest prefix the kernel resolves; "/" (parts[:1]) always does.
    reached = len(parts)
    missing: OSError | None = None
    while reached > 1:
        try:
            os.stat(os.sep.join(parts[:reached]))
            break
        except OSError as exc:
            missing = exc
            reached -= 1
    if ".." in parts[reached:]:
        reason = missing.strerror if missing is not None and missing.strerror else "missing"
        raise ConfigError(
            "directory",
            f"{given!r}: {os.sep.join(parts[: reached + 1])} cannot be reached ({reason}),"
            " so the '..' after it names no directory",
        )
    return os.path.realpath(path)


def require_directory(
    resolved: str, given: str | os.PathLike[str], *, hint: str, field: str = "directory"
) -> None:
    """Raise :class:`~fastelect.ConfigError` unless ``resolved`` is an existing directory.

    ``hint`` says how the caller may ask for it to be made (``create=True``,
    ``--create-store``). Errors other than "missing" and "not a directory"
    (permission denied on a parent) are left for the storage's first use,
    which reports them as storage errors.
    """
    shown = (
        resolved if os.fspath(given) == resolved else f"{resolved} (given as {os.fspath(given)!r})"
    )
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        raise ConfigError(
            field,
            f"storage directory {shown} does not exist; a typo here would make a second,"
            f" separate lock, so it is not made silently: create it (mkdir -m 700"
            f" {resolved}) or {hint}",
        ) from None
    except NotADirectoryError:
        raise ConfigError(
            field, f"storage directory {shown}: a component of the path is a file"
        ) from None
    except OSError:
        return
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(field, f"storage directory {shown} exists but is not a directory")


def _role(path: str) -> str:
    name = os.path.basename(path)
    return "a key's lock file" if name.startswith(".") and name.endswith(".lock") else "a record"


def _file_name(key: str) -> str:
    """Map ``key`` to its file name, rejecting keys that are not plain relative paths."""
    if not key:
        raise ConfigError("key", "must not be empty")
    if "\0" in key:
        raise ConfigError("key", f"{key!r} contains a NUL byte")
    if key.startswith("/"):
        raise ConfigError("key", f"{key!r} is absolute; keys are relative to the storage directory")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ConfigError(
            "key", f"{key!r} has an empty, '.' or '..' path component; it must not escape"
        )
    # quote() with safe="" keeps only [A-Za-z0-9_.~-] and encodes "%" too, so
    # the mapping is injective and the result never contains "/".
    name = quote(key, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]  # dot-names are reserved for lock and temp files
    if len(name.encode()) > _MAX_NAME_BYTES:
        raise ConfigError("key", f"{key!r} is too long ({_MAX_NAME_BYTES} bytes once encoded)")
    return name
