# Declarations of the leadership table (_table.pyx): the shared-memory block
# one process writes and any process that trusts its owner may read.

cdef class _Mapping:
    cdef fe_region r
    cdef object name
    # The segment's owner and permission bits, from fstat when it was opened.
    cdef long uid
    cdef unsigned long mode
    cdef fe_header *header(self)
    cdef fe_slot *slot_at(self, Py_ssize_t index)
    cdef void release(self)
    cdef void close_fd(self)


cdef class LeadershipTable:
    cdef _Mapping _map
    cdef dict _slots
    cdef readonly object name


cdef class Slot:
    cdef _Mapping _map
    cdef fe_slot *_s
    cdef bint _closed
    cdef readonly str election
    cdef readonly int index
    cdef void _begin(self)
    cdef void _end(self)
    cdef void _set_leader(self, int64_t lease_until, int64_t deadline)
    cdef void _set_follower(self)
    cdef void _bump(self, int counter)
    cdef void _put_leader(self, str leader_id, str leader_addr)


cdef class LeaseHolder:
    cdef Slot _held


cdef class TableReader:
    cdef _Mapping _map
    cdef dict _index
    cdef object _last_name
    cdef fe_slot *_last_slot
    cdef readonly object name
    cdef _Mapping _open_map(self)
    cdef fe_slot *_find(self, str election) except? NULL
