# The leadership table: one 1024-byte slot per election in a block of shared
# memory (layout version 2, docs/table-layout.md).  Included by _core.pyx.
#
# One process writes a table; a process that trusts its owner (the same
# user, or one it names) may map it read-only by name.  Each slot is guarded
# by a seqlock, and the one word is_leader() needs -- the lease deadline, 0
# unless leader -- is read with a single atomic load, so the hot path takes
# no lock and allocates nothing.
#
# Liveness: the owner holds an OFD lock on the segment for as long as it
# lives (FE_HDR_LOCK_LIVENESS).  Every process that shares /dev/shm sees that
# lock, whatever its PID namespace; a pid is only shown, never trusted.

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,24}$")
_SHM_PREFIX = "/fastelect."


cdef inline bint _put_str(char *dst, uint16_t *len_out, Py_ssize_t cap, str value):
    """Copy ``value`` as UTF-8, cut at a character boundary; True if it was cut."""
    cdef bytes raw = value.encode("utf-8")
    cdef Py_ssize_t n = len(raw)
    cdef const unsigned char *src = <const unsigned char *>raw
    cdef bint cut = n > cap
    if cut:
        n = cap
        while n > 0 and (src[n] & 0xC0) == 0x80:
            n -= 1
    memcpy(dst, src, n)
    len_out[0] = <uint16_t>n
    return cut


cdef inline str _get_str(const char *src, uint16_t n, Py_ssize_t cap):
    if n > cap:
        n = <uint16_t>cap
    return src[:n].decode("utf-8", "replace")


@cython.no_gc  # holds only its name: no cycle possible
cdef class _Mapping:
    """A mapped table segment: anonymous (private to this process) or named
    POSIX shared memory.  Registered with the fork guard while mapped."""

    def __cinit__(self):
        memset(&self.r, 0, sizeof(fe_region))
        self.r.fd = -1
        self.uid = -1
        self.mode = 0

    def __dealloc__(self):
        self.release()

    cdef fe_header *header(self):
        return <fe_header *>self.r.base

    cdef fe_slot *slot_at(self, Py_ssize_t index):
        return <fe_slot *>(self.r.base + sizeof(fe_header) + index * sizeof(fe_slot))

    cdef void release(self):
        if self.r.base != NULL:
            fe_region_remove(&self.r)
            munmap(self.r.base, self.r.size)
            self.r.base = NULL
        self.close_fd()

    cdef void close_fd(self):
        if self.r.fd >= 0:
            close(self.r.fd)
            self.r.fd = -1


cdef _Mapping _adopt(void *p, size_t size, bint owned, int fd=-1):
    cdef _Mapping m = _Mapping.__new__(_Mapping)
    m.r.base = <unsigned char *>p
    m.r.size = size
    m.r.owned = owned
    m.r.fd = fd
    fe_region_add(&m.r)
    return m


def _shm_name(str name):
    if not _NAME_RE.match(name):
        raise ValueError(
            f"table name {name!r} must be 1-24 characters of letters, digits, '_', '.', '-'"
        )
    return _SHM_PREFIX + name


def shm_path(str name):
    """Where a named table lives on Linux (for tests and operators)."""
    return "/dev/shm/" + _shm_name(name)[1:]


cdef _Mapping _map_fd(int fd, size_t size, bint writable, bint keep_fd):
    """Map ``fd``; with ``keep_fd`` the mapping owns (and later closes) it."""
    cdef int prot = PROT_READ | (PROT_WRITE if writable else 0)
    cdef void *p = mmap(NULL, size, prot, MAP_SHARED, fd, 0)
    if p == MAP_FAILED:
        raise OSError(errno, os.strerror(errno))
    return _adopt(p, size, writable, fd if keep_fd else -1)


def _pid_alive(int64_t pid):
    """True unless ``pid`` surely runs no more (absent, or a zombie).

    Only for tables written without an owner lock (fastelect 0.1); the one
    pid test of the package (table_gc uses it too).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    # A zombie has exited and will never write again; only its parent's
    # wait() is missing.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return not os.path.isdir("/proc/self")  # reaped meanwhile, or no procfs
    except OSError:
        return True
    state = stat.rfind(b")") + 2  # after "pid (comm) ": comm may hold ")"
    return stat[state : state + 1] != b"Z"


cdef _Mapping _open_existing(str shm, object trust):
    """Map an existing named segment read-only; None if it vanished meanwhile.

    The descriptor stays open with the mapping (its liveness lock is asked
    through it).  ``trust`` (a :class:`_Trust`) is checked on the opened
    segment itself, before anything of it is read; None skips the check.
    """
    cdef bytes path = shm.encode()
    # glibc's shm_open adds O_NOFOLLOW and O_CLOEXEC: a planted symlink is
    # refused, and no exec'd program inherits the descriptor.
    cdef int fd = shm_open(path, O_RDONLY, 0)
    if fd < 0:
        if errno == 2:  # ENOENT
            return None
        raise OSError(errno, f"cannot open shared memory {shm}: {os.strerror(errno)}")
    cdef struct_stat st
    cdef _Mapping m
    try:
        if fstat(fd, &st) != 0:
            raise OSError(errno, os.strerror(errno))
        if trust is not None:
            (<_Trust>trust).check(shm, st.st_uid, st.st_gid, st.st_mode)
        if <size_t>st.st_size < sizeof(fe_header):
            m = _Mapping.__new__(_Mapping)  # empty: not (yet) a table
            close(fd)
        else:
            m = _map_fd(fd, <size_t>st.st_size, False, True)
    except BaseException:
        close(fd)
        raise
    m.uid = st.st_uid
    m.mode = st.st_mode & 0o7777
    return m


cdef bint _owner_alive(_Mapping m):
    """Whether the process that writes ``m``'s table still does (a live lock).

    A table this process writes is alive while open.  Otherwise the owner's
    OFD lock decides, as seen from any PID namespace; only a table written
    without one (fastelect 0.1) falls back to its pid.  When the lock cannot
    be asked, the owner counts as alive: the table's leases still run out on
    their own, so the answer stays safe.
    """
    cdef fe_header *h = m.header()
    cdef int held
    if m.r.owned:
        return not h.closed
    if h.flags & FE_HDR_LOCK_LIVENESS:
        if m.r.fd < 0:
            return True
        held = fe_lock_held(m.r.fd)
        return held != 0
    return _pid_alive(h.owner_pid)


cdef str _uid_name(long uid):
    try:
        import pwd
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError, OverflowError):
        return f"uid {uid}"


@cython.final
cdef class _Trust:
    """Who may own a table this process reads, and whether it may be writable."""

    cdef long me
    cdef long other
    cdef long group
    cdef bint writable_ok
    cdef bint writer
    cdef str name

    cdef int check(self, str shm, long uid, long gid, unsigned long mode) except -1:
        cdef str why
        if uid != self.me and uid != self.other and (self.group < 0 or gid != self.group):
            why = "owned by " + _uid_name(uid)
            if self.group >= 0:
                why += f" and group {gid}"
        elif (mode & 0o022) and not self.writable_ok:
            why = "writable by " + (
                "group and others" if (mode & 0o022) == 0o022
                else ("its group" if mode & 0o020 else "others")
            )
        else:
            return 0
        where = f"leadership table {self.name!r} ({shm_path(self.name)})"
        if self.writer:
            message = (
                f"{where} is squatted: it is {why}, mode {mode & 0o7777:04o}, not by this "
                f"process's {_uid_name(self.me)}. Another local user created a segment of "
                "that name first; this elector will not publish into or trust it. Choose "
                "another table name, or remove the segment as its owner or root"
            )
        else:
            trusted = _uid_name(self.me)
            if self.other >= 0 and self.other != self.me:
                trusted += " or " + _uid_name(self.other)
            if self.group >= 0:
                trusted += f" or group {self.group}"
            message = (
                f"{where} is not trusted: it is {why}, mode {mode & 0o7777:04o}, and this "
                f"process trusts only tables owned by {trusted} that others cannot write. "
                "Another local user may have created it to answer for this host. If that "
                "owner is the host's elector, name it (owner=... or group=...); else remove "
                "the segment "
                "as its owner or root"
            )
        raise UntrustedTableError(self.name, shm_path(self.name), uid, mode & 0o7777, message)


cdef long _group_id(object group) except? -2:
    """``group`` (a gid or a group name) as a gid; -1 for None."""
    if group is None:
        return -1
    if isinstance(group, bool) or not isinstance(group, (int, str)) or group == "":
        raise TypeError(f"group must be a gid (int) or a group name (str), not {group!r}")
    if isinstance(group, int):
        if group < 0:
            raise ValueError(f"group gid must not be negative, not {group}")
        return group
    import grp
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"group {group!r}: no such group") from None


cdef _Trust _make_trust(
    str name, object owner, bint writable_ok, bint writer=False, object group=None
):
    cdef _Trust t = _Trust.__new__(_Trust)
    t.me = os.geteuid()
    t.writer = writer
    t.other = -1
    t.group = _group_id(group)
    t.writable_ok = writable_ok
    t.name = name
    if owner is None:
        return t
    if isinstance(owner, bool):
        raise TypeError(f"owner must be a uid (int) or a user name (str), not {owner!r}")
    if isinstance(owner, int):
        if owner < 0:
            raise ValueError(f"owner uid must not be negative, not {owner}")
        t.other = owner
        return t
    if isinstance(owner, str) and owner:
        import pwd
        try:
            t.other = pwd.getpwnam(owner).pw_uid
        except KeyError:
            raise ValueError(f"owner {owner!r}: no such user") from None
        return t
    raise TypeError(f"owner must be a uid (int) or a user name (str), not {owner!r}")


cdef int _validate_header(_Mapping m) except -1:
    cdef fe_header *h
    if m.r.base == NULL:
        raise FastelectError("not a fastelect leadership table (segment is empty)")
    h = m.header()
    if h.magic != FE_MAGIC:
        raise FastelectError("not a fastelect leadership table (bad magic)")
    if h.version != FE_LAYOUT_VERSION:
        raise FastelectError(
            f"leadership table layout {h.version} is not supported (this build reads "
            f"{FE_LAYOUT_VERSION}); upgrade the process that wrote it or this one"
        )
    if (h.header_size != sizeof(fe_header) or h.slot_size != sizeof(fe_slot)
            or m.r.size < sizeof(fe_header) + <size_t>h.slot_count * sizeof(fe_slot)):
        raise FastelectError("leadership table is truncated or has a foreign layout")
    return 0


cdef class LeadershipTable:
    """The leadership table this process writes: one slot per election.

    ``LeadershipTable()`` is private to the process; ``LeadershipTable("name")``
    publishes it as POSIX shared memory so other processes can :func:`attach`
    it: mode 0600 (only this user), or ``mode=0o640`` / ``0o644`` for readers
    of this group or of any user (who must name this owner to trust it).  Its
    liveness is an OFD lock this process holds on it until :meth:`close`, seen
    from every PID namespace that shares ``/dev/shm``.

    A segment of that name whose owner is gone is replaced; one with a live
    owner raises :class:`FastelectError`; one that another user created raises
    :class:`UntrustedTableError` naming that user and its mode (a squatter
    cannot make this elector trust it).  In a child forked from this process,
    every slot of the table reads as not leading (safety rule 7,
    docs/safety.md#rule-7-nothing-inherited-through-fork-leads).
    """

    def __init__(self, name=None, int slots=8, *, int mode=0o600):
        if slots < 1 or slots > 256:
            raise ValueError("slots must be between 1 and 256")
        if mode & ~0o644 or (mode & 0o600) != 0o600:
            raise ValueError(
                f"mode {mode:04o}: a table is read-write for its owner and at most readable "
                "by group and others (0600, 0640 or 0644)"
            )
        cdef size_t size = sizeof(fe_header) + <size_t>slots * sizeof(fe_slot)
        cdef void *p
        cdef int fd
        cdef uint32_t flags = 0
        cdef bytes path
        self.name = name
        self._slots = {}
        if name is None:
            p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
            if p == MAP_FAILED:
                raise OSError(errno, os.strerror(errno))
            self._map = _adopt(p, size, True)
        else:
            shm = _shm_name(name)
            path = shm.encode()
            # A SIGKILLed owner cannot remove its segment: sweep this user's
            # tables of dead owners first (never a live one or another user's).
            from . import table_gc
            try:
                table_gc.remove_stale_tables(min_age_s=table_gc.AUTO_SWEEP_MIN_AGE_S)
            except OSError:
                pass  # best effort: a sweep that cannot list /dev/shm changes nothing
            for _ in range(3):
                fd = shm_open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
                if fd >= 0:
                    break
                if errno != 17:  # EEXIST
                    raise OSError(errno, f"cannot create shared memory {shm}: {os.strerror(errno)}")
                self._replace_stale(shm)
            else:
                raise FastelectError(f"could not create shared memory {shm}: it keeps reappearing")
            try:
                # The lock first: once a reader can see the magic, the lock
                # that says "alive" is already held.
                if fe_lock_take(fd) == 0:
                    flags |= FE_HDR_LOCK_LIVENESS
                elif errno not in (22, 95):  # EINVAL, ENOTSUP/EOPNOTSUPP: no OFD locks
                    raise OSError(errno, f"cannot lock shared memory {shm}: {os.strerror(errno)}")
                if fchmod(fd, mode) != 0 or ftruncate(fd, size) != 0:
                    raise OSError(errno, os.strerror(errno))
                # The mapping keeps the descriptor, and with it the lock.
                self._map = _map_fd(fd, size, True, True)
            except BaseException:
                shm_unlink(path)
                close(fd)
                raise
            self._map.name = shm
            self._map.r.unlink_on_close = 1
            self._map.uid = os.geteuid()
            self._map.mode = mode
        memset(self._map.r.base, 0, size)
        cdef fe_header *h = self._map.header()
        h.version = FE_LAYOUT_VERSION
        h.header_size = sizeof(fe_header)
        h.slot_count = slots
        h.slot_size = sizeof(fe_slot)
        h.owner_pid = os.getpid()
        h.flags = flags
        # Nonzero: 0 means "no token" (a table of fastelect 0.1).
        h.token = secrets.randbits(64) | 1
        h.created_wall_ns = time.time_ns()
        h.created_mono_ns = fe_clock_ns()
        # magic last: a reader that sees it sees a complete header.
        fe_publish_magic(h)

    def _replace_stale(self, str shm):
        # Another user's segment is never ours to judge or remove, even as
        # root: say who squats the name instead.
        cdef _Mapping old = _open_existing(shm, _make_trust(self.name, None, True, True))
        if old is None:
            return
        cdef fe_header *h
        if old.r.base != NULL and old.r.size >= sizeof(fe_header):
            h = old.header()
            if h.magic == FE_MAGIC and not h.closed and _owner_alive(old):
                raise FastelectError(
                    f"leadership table {shm!r} is in use by a live owner (pid {h.owner_pid} "
                    "in its PID namespace): another elector on this host publishes under "
                    "this name; give each its own table name"
                )
        # Dead owner, closed, or not a table at all: never trust it.
        old.release()
        shm_unlink(shm.encode())

    @property
    def slot_count(self):
        """How many elections this table can hold."""
        self._check_open()
        return self._map.header().slot_count

    @property
    def path(self):
        """The segment's filesystem path on Linux, or None when anonymous."""
        return None if self.name is None else shm_path(self.name)

    @property
    def closed(self):
        """True once :meth:`close` ran."""
        return self._map is None

    @property
    def token(self):
        """A random number naming this table's incarnation (0 when closed)."""
        return 0 if self._map is None else self._map.header().token

    @property
    def inherited(self):
        """True in a child forked from the process that created this table."""
        return self._map is not None and bool(self._map.r.inherited)

    def _check_open(self):
        if self._map is None or self._map.r.base == NULL:
            raise LifecycleError("leadership table is closed")

    def slot(self, str election, str server_id=""):
        """Claim (or return the already claimed) slot for ``election``."""
        self._check_open()
        if self._map.r.inherited:
            raise LifecycleError(
                "this leadership table was inherited through fork(); create a new one "
                "in the child"
            )
        if election in self._slots:
            return self._slots[election]
        if not election or len(election.encode()) > FE_STR_SHORT - 2:
            raise ValueError(f"election name must be 1-{FE_STR_SHORT - 2} bytes")
        cdef int index = len(self._slots)
        if <uint32_t>index >= self._map.header().slot_count:
            raise FastelectError(f"leadership table is full ({index} elections)")
        cdef Slot s = Slot.__new__(Slot)
        s._map = self._map
        s._s = self._map.slot_at(index)
        s.election = election
        s.index = index
        s._begin()
        _put_str(s._s.name.data, &s._s.name.len, FE_STR_SHORT - 2, election)
        _put_str(s._s.server_id.data, &s._s.server_id.len, FE_STR_LONG - 2, server_id)
        s._s.state = SLOT_STARTED
        s._s.role = FOLLOWER
        s._s.last_cycle_mono_ns = fe_clock_ns()
        s._end()
        self._slots[election] = s
        return s

    def reader(self):
        """A :class:`TableReader` over this table, as another process would see it."""
        self._check_open()
        cdef TableReader r = TableReader.__new__(TableReader)
        r._map = self._map
        r._index = {}
        r.name = self.name
        return r

    def close(self):
        """Zero every lease, mark the table closed and remove the named segment.

        Its slots raise :class:`LifecycleError` afterwards.  In a forked child
        this only lets go of the (private) copy: the parent's table is untouched.
        """
        if self._map is None:
            return
        cdef fe_header *h = self._map.header()
        cdef uint32_t i
        cdef fe_slot *s
        cdef Slot slot
        for slot in self._slots.values():
            slot._closed = True
        if not self._map.r.inherited and self._map.r.base != NULL:
            for i in range(h.slot_count):
                s = self._map.slot_at(i)
                fe_write_begin(s)
                fe_store_i64(&s.lease_until_ns, 0)
                if s.state == SLOT_STARTED:
                    s.state = SLOT_STOPPED
                fe_write_end(s)
            h.closed = 1
            if self._map.r.unlink_on_close and self._map.name is not None:
                shm_unlink((<str>self._map.name).encode())
            # Unlinked and closed: the liveness lock has nothing left to say.
            self._map.close_fd()
        self._map.r.unlink_on_close = 0
        # Slots and readers keep a reference to the mapping; it is unmapped when
        # the last of them goes.
        self._map = None
        self._slots = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


cdef dict _slot_dict(fe_slot *c):
    cdef int i
    return {
        "election": _get_str(c.name.data, c.name.len, FE_STR_SHORT - 2),
        "state": ("free", "started", "stopped")[c.state] if c.state <= 2 else "unknown",
        "role": ROLE_NAMES[c.role] if c.role <= 2 else "unknown",
        "lease_until_ns": c.lease_until_ns,
        "deadline_ns": c.deadline_ns,
        "term": c.term,
        "lease_ns": c.lease_ns,
        "last_update_wall_ns": c.last_update_wall_ns,
        "last_cycle_mono_ns": c.last_cycle_mono_ns,
        "watchdog_ns": c.watchdog_ns,
        "leader_since_mono_ns": c.leader_since_mono_ns,
        "server_id": _get_str(c.server_id.data, c.server_id.len, FE_STR_LONG - 2),
        "leader_id": _get_str(c.leader_id.data, c.leader_id.len, FE_STR_LONG - 2),
        "leader_addr": _get_str(c.leader_addr.data, c.leader_addr.len, FE_STR_LONG - 2),
        "leader_id_truncated": bool(c.flags & FE_FLAG_LEADER_ID_TRUNCATED),
        "leader_addr_truncated": bool(c.flags & FE_FLAG_LEADER_ADDR_TRUNCATED),
        "etag": _get_str(c.etag.data, c.etag.len, FE_STR_LONG - 2),
        "counters": {COUNTER_NAMES[i]: c.counters[i] for i in range(len(COUNTER_NAMES))},
    }


cdef object _closed_slot():
    raise LifecycleError("leadership slot is closed (its table was closed)")


# Untracked by the garbage collector like Campaign: it holds only its mapping
# and strings, so it cannot be part of a reference cycle.
@cython.no_gc
cdef class Slot:
    """This process's slot for one election; written only by its Campaign."""

    def is_leader(self):
        """True while this slot holds a lease that has not run out, read now."""
        if self._closed:
            _closed_slot()
        cdef int64_t until = fe_load_i64(&self._s.lease_until_ns)
        # 0 = not leading: no clock read needed (the common case on followers).
        return until != 0 and fe_clock_ns() < until

    def lease_remaining_ns(self):
        """Nanoseconds of lease left (0 when not leader)."""
        if self._closed:
            _closed_slot()
        cdef int64_t left = fe_load_i64(&self._s.lease_until_ns) - fe_clock_ns()
        return left if left > 0 else 0

    @property
    def closed(self):
        """True once the table this slot belongs to was closed."""
        return bool(self._closed)

    def status(self):
        """A consistent snapshot of the slot as a dict."""
        if self._closed:
            _closed_slot()
        cdef fe_slot copy
        if fe_read_slot(self._s, &copy) != 0:
            raise FastelectError("leadership slot stayed busy")
        return _slot_dict(&copy)

    def heartbeat(self, int64_t now_ns, int64_t watchdog_ns):
        """Record that the elector loop completed a cycle at ``now_ns``."""
        if self._closed:
            _closed_slot()
        self._begin()
        self._s.last_cycle_mono_ns = now_ns
        self._s.watchdog_ns = watchdog_ns
        self._end()

    def count(self, int counter):
        """Add one to a counter (a :class:`Counter` value)."""
        if self._closed:
            _closed_slot()
        if counter < 0 or counter >= 16:
            raise ValueError(f"no counter {counter}")
        self._bump(counter)

    def release_slot(self):
        """Mark the election stopped: no lease, state stopped."""
        if self._closed:
            _closed_slot()
        self._begin()
        fe_store_i64(&self._s.lease_until_ns, 0)
        self._s.role = STOPPED
        self._s.state = SLOT_STOPPED
        self._end()

    def restart_slot(self):
        """Mark a stopped slot started again (a restarted elector)."""
        if self._closed:
            _closed_slot()
        self._begin()
        self._s.state = SLOT_STARTED
        self._s.role = FOLLOWER
        self._s.last_cycle_mono_ns = fe_clock_ns()
        self._end()

    # The Campaign's writers: no closed check (a stopping elector may still
    # record its last step); after close the pages are only this process's.

    cdef void _begin(self):
        fe_write_begin(self._s)

    cdef void _end(self):
        fe_write_end(self._s)

    cdef void _set_leader(self, int64_t lease_until, int64_t deadline):
        self._s.role = LEADER
        self._s.deadline_ns = deadline
        fe_store_i64(&self._s.lease_until_ns, lease_until)

    cdef void _set_follower(self):
        fe_store_i64(&self._s.lease_until_ns, 0)
        self._s.role = FOLLOWER

    cdef void _bump(self, int counter):
        self._begin()
        self._s.counters[counter] += 1
        self._end()

    cdef void _put_leader(self, str leader_id, str leader_addr):
        """Copy the leader's id and address (inside a write); flag what was cut."""
        cdef uint32_t flags = self._s.flags & ~(FE_FLAG_LEADER_ID_TRUNCATED
                                                | FE_FLAG_LEADER_ADDR_TRUNCATED)
        if _put_str(self._s.leader_id.data, &self._s.leader_id.len, FE_STR_LONG - 2, leader_id):
            flags |= FE_FLAG_LEADER_ID_TRUNCATED
        if _put_str(self._s.leader_addr.data, &self._s.leader_addr.len, FE_STR_LONG - 2,
                    leader_addr):
            flags |= FE_FLAG_LEADER_ADDR_TRUNCATED
        self._s.flags = flags


cdef class LeaseHolder:
    """The compiled base of :class:`~fastelect.Elector`: ``is_leader()`` in C.

    ``elector.is_leader()`` is then a method found on the type, which the
    interpreter calls straight through its C slot: no Python frame, no bound
    method object and no instance-dict lookup (a per-instance bound method of
    the slot cost about 7 ns more per call).  The answer is the slot's own:
    an atomic load of the lease and a lease-clock read.
    """

    def _hold_slot(self, Slot slot not None):
        """Answer ``is_leader()`` from ``slot`` from now on (once, at construction)."""
        self._held = slot

    def is_leader(self):
        """True only while this node holds an unexpired lease, evaluated now."""
        cdef Slot slot = self._held
        if slot is None:
            return False
        if slot._closed:
            _closed_slot()
        cdef int64_t until = fe_load_i64(&slot._s.lease_until_ns)
        return until != 0 and fe_clock_ns() < until


cdef class TableReader:
    """Read-only view of a leadership table, in this or another process.

    A reader of another process's table keeps answering for that process in
    a child forked from this one; a reader of this process's own table reads
    as not leading there (safety rule 7,
    docs/safety.md#rule-7-nothing-inherited-through-fork-leads).
    """

    cdef _Mapping _open_map(self):
        if self._map is None or self._map.r.base == NULL:
            raise LifecycleError("table reader is closed")
        return self._map

    cdef fe_slot *_find(self, str election) except? NULL:
        cdef _Mapping m = self._open_map()
        cdef object idx
        if election is self._last_name:
            # The hot path asks about the same election (often the same
            # interned literal) again and again: skip the dict.
            return self._last_slot
        idx = self._index.get(election)
        cdef fe_header *h
        cdef uint32_t i
        cdef fe_slot copy
        if idx is not None:
            self._last_name = election
            self._last_slot = m.slot_at(<Py_ssize_t>idx)
            return self._last_slot
        h = m.header()
        # Slots are claimed in order and never move, so a found index stays valid.
        for i in range(h.slot_count):
            if fe_read_slot(m.slot_at(i), &copy) != 0:
                continue
            if copy.state == SLOT_FREE:
                break
            if _get_str(copy.name.data, copy.name.len, FE_STR_SHORT - 2) == election:
                self._index[election] = i
                return m.slot_at(i)
        return NULL

    def is_leader(self, str election="default"):
        """True while the table's owner holds a live lease for ``election``."""
        cdef fe_slot *s = self._find(election)
        if s == NULL:
            return False
        cdef int64_t until = fe_load_i64(&s.lease_until_ns)
        return until != 0 and fe_clock_ns() < until

    def seq(self, str election="default"):
        """The slot's seqlock word (acquire load), or -1 if ``election`` has no slot.

        It changes on every write to the slot and is odd while one is in
        progress: an unchanged even word means a snapshot taken under it is
        still current (the health server caches its answers on it).
        """
        cdef fe_slot *s = self._find(election)
        if s == NULL:
            return -1
        return fe_load_seq(&s.seq)

    def status(self, str election="default"):
        """A consistent snapshot of ``election``'s slot, or None if not started."""
        cdef fe_slot *s = self._find(election)
        cdef fe_slot copy
        if s == NULL:
            return None
        if fe_read_slot(s, &copy) != 0:
            raise FastelectError("leadership slot stayed busy")
        return _slot_dict(&copy)

    def elections(self):
        """Names of the elections started in this table, in slot order."""
        cdef _Mapping m = self._open_map()
        cdef fe_header *h = m.header()
        cdef uint32_t i
        cdef fe_slot copy
        names = []
        for i in range(h.slot_count):
            if fe_read_slot(m.slot_at(i), &copy) != 0 or copy.state == SLOT_FREE:
                break
            names.append(_get_str(copy.name.data, copy.name.len, FE_STR_SHORT - 2))
        return names

    @property
    def owner_pid(self):
        """The writer's pid *in its own PID namespace*: for people, never for liveness."""
        return self._open_map().header().owner_pid

    @property
    def owner_uid(self):
        """The uid that owns the segment (checked when it was attached)."""
        return self._open_map().uid

    @property
    def mode(self):
        """The segment's permission bits when it was attached (e.g. ``0o600``)."""
        return self._open_map().mode

    @property
    def token(self):
        """The table's incarnation (:attr:`LeadershipTable.token`; 0 if it has none)."""
        return self._open_map().header().token

    @property
    def closed(self):
        """True once this reader was closed, or the owner closed (or replaced) the table."""
        if self._map is None or self._map.r.base == NULL:
            return True
        return bool(self._map.header().closed)

    @property
    def owner_alive(self):
        """True while the table's writer holds it: its lock, seen from any PID namespace."""
        if self.closed:
            return False
        return _owner_alive(self._map)

    @property
    def stale(self):
        """True when the table is closed or its owner is gone (:attr:`owner_alive`)."""
        return not self.owner_alive

    def close(self):
        """Unmap the table (if this reader is the last user of the mapping)."""
        self._map = None
        self._index = {}
        self._last_name = None
        self._last_slot = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def attach(str name, owner=None, *, group=None, bint allow_writable=False):
    """Map the named leadership table read-only; raises if it does not exist.

    The table is trusted only if this process's user owns it, or ``owner``
    (a uid or a user name: the host's elector runs as another user) does, or
    its group is ``group`` (a gid or a group name: every member of that group
    is then trusted), and only if neither group nor others may write it
    (unless ``allow_writable``).
    Otherwise :class:`UntrustedTableError` names its owner and mode: another
    local user can create a segment of any free name in ``/dev/shm``.
    """
    shm = _shm_name(name)
    cdef _Mapping m = _open_existing(shm, _make_trust(name, owner, allow_writable, False, group))
    if m is None:
        raise FastelectError(f"no leadership table named {name!r} (is the elector running?)")
    _validate_header(m)
    # Our own table, mapped again by name: the fork guard treats it as ours.
    m.r.mine = fe_region_writes_token(m.header().token)
    cdef TableReader r = TableReader.__new__(TableReader)
    r._map = m
    r._index = {}
    r.name = name
    return r
