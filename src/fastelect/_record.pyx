# The lock record's JSON body, written in C (included by _core.pyx).
#
# Byte for byte what orjson writes for the record's dict in key order (no
# spaces; '"', '\\' and control characters escaped as orjson escapes them,
# everything else raw UTF-8): a renewal encodes one record per lease, and at
# 100,000 elections the dict, the orjson call and the time formatting were a
# large part of what a renewal cost.  tests/test_record.py holds the orjson
# model every output is compared with.

from cpython.bytes cimport PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

from libc.stdio cimport snprintf
from libc.time cimport gmtime_r, time_t, tm

#: Bumped when the record format changes incompatibly (the record's "v").
cdef int64_t _RECORD_VERSION = 1
RECORD_VERSION = _RECORD_VERSION

#: Go's zero time: lastUpdated of a released record.
cdef const char *_ZERO_TIME = b"0001-01-01T00:00:00Z"
cdef const char *_HEX = b"0123456789abcdef"
#: The record's bounds (docs/safety.md#bounds): a record outside them is invalid.
#: 24 h: no lease may block an election longer than a day.
cdef int64_t _LEASE_MS_MAX = 86_400_000
#: 2**53 - 1: the largest integer every JSON reader (JavaScript's, Go's float64) keeps exact.
cdef int64_t _TERM_MAX = 9_007_199_254_740_991
RECORD_LEASE_MS_MAX = _LEASE_MS_MAX
RECORD_TERM_MAX = _TERM_MAX

#: 9999-12-31T23:59:59 UTC, the last second RFC 3339's four-digit year can show.
cdef int64_t _MAX_SECONDS = 253402300799


cdef Py_ssize_t _escaped_len(const unsigned char *p, Py_ssize_t n) noexcept:
    """Length of ``p[:n]`` once escaped, without the quotes."""
    cdef Py_ssize_t out = n
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if c == 34 or c == 92 or c == 8 or c == 9 or c == 10 or c == 12 or c == 13:
            out += 1
        elif c < 32:
            out += 5
    return out


cdef char *_put_escaped(char *w, const unsigned char *p, Py_ssize_t n) noexcept:
    """Write ``p[:n]`` escaped, in quotes; return the end."""
    cdef Py_ssize_t i
    cdef unsigned char c
    w[0] = 34
    w += 1
    for i in range(n):
        c = p[i]
        if c >= 32 and c != 34 and c != 92:
            w[0] = <char>c
            w += 1
            continue
        w[0] = 92
        if c == 34 or c == 92:
            w[1] = <char>c
        elif c == 8:
            w[1] = 98   # b
        elif c == 9:
            w[1] = 116  # t
        elif c == 10:
            w[1] = 110  # n
        elif c == 12:
            w[1] = 102  # f
        elif c == 13:
            w[1] = 114  # r
        else:
            w[1] = 117  # u00XX
            w[2] = 48
            w[3] = 48
            w[4] = _HEX[c >> 4]
            w[5] = _HEX[c & 15]
            w += 4
        w += 2
    w[0] = 34
    return w + 1


cdef int _format_time(char *buf, object unix_ns) except -1:
    """RFC 3339 with microseconds in UTC into ``buf`` (>= 32 bytes); its length.

    ``None`` is the zero time.  As record.format_time: the nanoseconds are
    cut to microseconds, and a year outside 1..9999 is a ValueError.
    """
    if unix_ns is None:
        memcpy(buf, _ZERO_TIME, 20)
        return 20
    cdef int64_t ns, seconds, rest
    try:
        ns = unix_ns
    except OverflowError:
        # Past 2262 in int64 nanoseconds: Python's integers (never our own clock).
        seconds_obj, rest_obj = divmod(unix_ns, 1_000_000_000)
        if not -62135596800 <= seconds_obj <= _MAX_SECONDS:
            raise ValueError(f"lastUpdated out of range: {unix_ns} ns") from None
        seconds, rest = seconds_obj, rest_obj
    else:
        seconds = ns // 1_000_000_000  # C division (cdivision): truncates
        rest = ns - seconds * 1_000_000_000
        if rest < 0:  # floor, as Python's divmod: -1 ns is 23:59:59.999999 the day before
            seconds -= 1
            rest += 1_000_000_000
    cdef int64_t micros = rest // 1000
    cdef tm parts
    cdef time_t t = <time_t>seconds
    if seconds < -62135596800 or seconds > _MAX_SECONDS or gmtime_r(&t, &parts) == NULL:
        raise ValueError(f"lastUpdated out of range: {unix_ns} ns")
    return snprintf(buf, 32, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
                    parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                    parts.tm_hour, parts.tm_min, parts.tm_sec, <int>micros)


def encode_record_body(str leader_id, str leader_addr, object last_updated_ns,
                       int64_t term, int64_t lease_ms, int64_t renewal, str nonce,
                       int64_t version):
    """The lock record's JSON bytes (see fastelect.record.encode_record)."""
    return _encode_record(leader_id, leader_addr, last_updated_ns, term, lease_ms, renewal,
                          nonce, version)


cdef bytes _encode_record(str leader_id, str leader_addr, object last_updated_ns,
                          int64_t term, int64_t lease_ms, int64_t renewal, str nonce,
                          int64_t version):
    cdef Py_ssize_t id_n, addr_n, nonce_n
    cdef const unsigned char *id_p = <const unsigned char *>PyUnicode_AsUTF8AndSize(
        leader_id, &id_n)
    cdef const unsigned char *addr_p = <const unsigned char *>PyUnicode_AsUTF8AndSize(
        leader_addr, &addr_n)
    cdef const unsigned char *nonce_p = <const unsigned char *>PyUnicode_AsUTF8AndSize(
        nonce, &nonce_n)
    cdef char when[32]
    cdef char tail[160]
    cdef int when_n = _format_time(when, last_updated_ns)
    cdef int tail_n = snprintf(tail, sizeof(tail), '","term":%lld,"leaseMs":%lld,"renewal":%lld,',
                               <long long>term, <long long>lease_ms, <long long>renewal)
    cdef char end[48]
    cdef int end_n = snprintf(end, sizeof(end), ',"v":%lld}', <long long>version)
    cdef Py_ssize_t id_e = _escaped_len(id_p, id_n)
    cdef Py_ssize_t addr_e = _escaped_len(addr_p, addr_n)
    cdef Py_ssize_t nonce_e = _escaped_len(nonce_p, nonce_n)
    # {"leaderID":<id>,"leaderAddr":<addr>,"lastUpdated":"<when>","term":...,"nonce":<n>,"v":1}
    cdef Py_ssize_t total = (12 + id_e + 2 + 14 + addr_e + 2 + 16 + when_n + tail_n
                             + 8 + nonce_e + 2 + end_n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char *w = PyBytes_AS_STRING(out)
    memcpy(w, b'{"leaderID":', 12)
    w = _put_escaped(w + 12, id_p, id_n)
    memcpy(w, b',"leaderAddr":', 14)
    w = _put_escaped(w + 14, addr_p, addr_n)
    memcpy(w, b',"lastUpdated":"', 16)
    w += 16
    memcpy(w, when, when_n)
    w += when_n
    memcpy(w, tail, tail_n)
    w += tail_n
    memcpy(w, b'"nonce":', 8)
    w = _put_escaped(w + 8, nonce_p, nonce_n)
    memcpy(w, end, end_n)
    return out
