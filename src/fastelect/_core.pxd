# Declarations of fastelect's compiled core, one file per idea (the way
# uvloop lays out one extension): the C layer, the leadership table, the
# election rules.  _core.pyx includes the matching .pyx files.

from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t

cdef extern from "Python.h":
    pass

include "_shm.pxd"
include "_table.pxd"
include "_rules.pxd"
