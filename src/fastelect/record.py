"""The lock record: encoding and untrusted-input parsing.

The JSON is a superset of s3lect's, so Go and Python nodes share one lock::

    {"leaderID": "server-001", "leaderAddr": "10.0.1.42:8443",
     "lastUpdated": "2026-11-26T10:30:45.123456Z", "term": 7,
     "leaseMs": 15000, "renewal": 1234, "nonce": "9f2c4e1a7b3d5c60", "v": 1}

``term`` is the fencing token; a record without it (written by s3lect) counts
as term 0.  ``nonce`` names the elector incarnation that wrote the record
(safety rule 0); s3lect neither writes nor keeps it.  Ids and addresses may be
as long as the 64 KiB record allows, as s3lect's are.  A released record
keeps its id and term and carries the zero time ``0001-01-01T00:00:00Z``
(s3lect's convention) as ``lastUpdated``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from ._core import RECORD_LEASE_MS_MAX, RECORD_TERM_MAX, RECORD_VERSION, encode_record_body
from .errors import RecordError
from .storage.base import MAX_OBJECT_SIZE

__all__ = [
    "LEASE_MS_MAX",
    "RECORD_VERSION",
    "TERM_MAX",
    "ZERO_TIME",
    "LockRecord",
    "encode_record",
    "parse_record",
    "record_term",
]

#: The longest lease a record may advertise (24 h, in ms); longer is invalid.
LEASE_MS_MAX: int = RECORD_LEASE_MS_MAX
#: The highest term a record may carry (2**53 - 1, exact in every JSON reader).
TERM_MAX: int = RECORD_TERM_MAX
#: lastUpdated must fit the lease clock's int64 nanoseconds (1677-09-21 .. 2262-04-11).
_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1

#: Go's zero time, which s3lect writes as lastUpdated when it releases.
ZERO_TIME = "0001-01-01T00:00:00Z"

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(Z|z|[+-]\d{2}:\d{2})$"
)
_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()


@dataclass(frozen=True, slots=True)
class LockRecord:
    """A parsed lock record."""

    leader_id: str
    leader_addr: str
    #: lastUpdated as Unix nanoseconds; None for the zero time (released).
    last_updated_ns: int | None
    term: int
    lease_ms: int
    renewal: int
    #: The writer's incarnation nonce ("" when absent, as in s3lect's records).
    nonce: str = ""

    @property
    def released(self) -> bool:
        """True when the leader handed the lock back (lastUpdated is the zero time)."""
        return self.last_updated_ns is None

    @property
    def last_updated(self) -> datetime | None:
        """lastUpdated as an aware datetime (None when released)."""
        if self.last_updated_ns is None:
            return None
        return datetime.fromtimestamp(self.last_updated_ns / 1e9, UTC)


def format_time(unix_ns: int | None) -> str:
    """RFC 3339 with microseconds in UTC, or the zero time for None."""
    if unix_ns is None:
        return ZERO_TIME
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    return f"{_format_seconds(seconds)}.{nanos // 1000:06d}Z"


@functools.lru_cache(maxsize=4)
def _format_seconds(seconds: int) -> str:
    # Renewals repeat the same second many times; strftime is most of the cost.
    # Not strftime("%Y"): glibc writes year 1 as "1", and RFC 3339 wants "0001".
    d = datetime.fromtimestamp(seconds, UTC)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"


def parse_time(text: str) -> int | None:
    """Parse RFC 3339 (up to nanoseconds, as Go writes) to Unix ns; None for year 1."""
    # Fast path for the exact shape format_time writes ("...T10:30:45.123456Z"):
    # a poll parses one per read, and the whole-second part repeats for a while.
    if len(text) == 27 and text[19] == "." and text[26] == "Z" and text[20:26].isdigit():
        seconds = _seconds_of(text[:19])
        if seconds is not None:
            return seconds * 1_000_000_000 + int(text[20:26]) * 1000
    return _parse_time_slow(text)


@functools.lru_cache(maxsize=8)
def _seconds_of(prefix: str) -> int | None:
    """Unix seconds of "YYYY-MM-DDTHH:MM:SS" in UTC (None: let the slow path decide)."""
    nanos = _parse_time_slow(prefix + "Z")
    return None if nanos is None else nanos // 1_000_000_000


def _parse_time_slow(text: str) -> int | None:
    match = _RFC3339.match(text)
    if match is None:
        raise RecordError(f"lastUpdated is not an RFC 3339 time: {text[:64]!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if year <= 1:
        return None
    try:
        ordinal = datetime(year, month, day).toordinal()
    except ValueError as exc:
        raise RecordError(f"lastUpdated is not a valid date: {text[:64]!r}") from exc
    if hour > 23 or minute > 59 or second > 60:
        raise RecordError(f"lastUpdated is not a valid time: {text[:64]!r}")
    fraction = match.group(7) or ""
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    offset = 0
    zone = match.group(8)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    seconds = (ordinal - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second - offset
    unix_ns = seconds * 1_000_000_000 + nanos
    if not _NS_MIN <= unix_ns <= _NS_MAX:
        # Outside int64 nanoseconds: no clock of ours can compare with it.
        raise RecordError(f"lastUpdated is out of range: {text[:64]!r}")
    return unix_ns


def encode_record(
    leader_id: str,
    leader_addr: str,
    last_updated_ns: int | None,
    term: int,
    lease_ms: int,
    renewal: int,
    nonce: str = "",
) -> bytes:
    """The record's JSON bytes; ``last_updated_ns=None`` writes a released record.

    Encoded in the compiled core, byte for byte as orjson would write the
    record's fields in this order (tests/test_record.py checks it against
    orjson); ``lastUpdated`` as :func:`format_time` writes it.
    """
    return encode_record_body(
        leader_id, leader_addr, last_updated_ns, term, lease_ms, renewal, nonce, RECORD_VERSION
    )


def _int_field(data: dict[str, object], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordError(f"{key} must be an integer, not {type(value).__name__}")
    if (value < low or value > high) and not (key in _OPTIONAL and key not in data):
        raise RecordError(f"{key} is out of range [{low}, {high}]: {value}")
    return value


#: Fields s3lect does not write: absent, they default (term 0, leaseMs 0 = "our own T").
_OPTIONAL = frozenset({"term", "leaseMs", "renewal"})


def record_term(body: bytes) -> int | None:
    """The in-bounds ``term`` of a record body, valid or not (rule 5); None if it has none.

    A record can be invalid in another field (a leaseMs of -1, a missing
    leaderID) and still carry the term its writer fenced with: a node that
    replaces it must write a higher one, so the term counts.
    """
    if len(body) > MAX_OBJECT_SIZE:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    term = data.get("term") if isinstance(data, dict) else None
    if isinstance(term, bool) or not isinstance(term, int) or not 0 <= term <= TERM_MAX:
        return None
    return term


def parse_record(body: bytes) -> LockRecord:
    """Parse untrusted record bytes; raises RecordError on anything malformed.

    Out of bounds is malformed too (docs/safety.md#bounds): ``leaseMs`` in
    [1, 86,400,000] when present (absent, as s3lect writes it, means the
    reader's own lease), ``term`` in [0, 2**53 - 1], ``lastUpdated`` within
    int64 nanoseconds.
    """
    if len(body) > MAX_OBJECT_SIZE:
        raise RecordError(f"record is larger than {MAX_OBJECT_SIZE} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"record is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RecordError(f"record must be a JSON object, not {type(data).__name__}")
    leader_id = data.get("leaderID")
    if not isinstance(leader_id, str) or not leader_id:
        raise RecordError("leaderID must be a non-empty string")
    leader_addr = data.get("leaderAddr", "")
    if not isinstance(leader_addr, str):
        raise RecordError("leaderAddr must be a string")
    updated = data.get("lastUpdated")
    if not isinstance(updated, str):
        raise RecordError("lastUpdated must be an RFC 3339 string")
    nonce = data.get("nonce", "")
    if not isinstance(nonce, str) or len(nonce) > 64:
        raise RecordError("nonce must be a string of at most 64 characters")
    return LockRecord(
        leader_id=leader_id,
        leader_addr=leader_addr,
        last_updated_ns=parse_time(updated),
        term=_int_field(data, "term", 0, 0, TERM_MAX),
        lease_ms=_int_field(data, "leaseMs", 0, 1, LEASE_MS_MAX),
        renewal=_int_field(data, "renewal", 0, 0, 2**62),
        nonce=nonce,
    )
