"""The lock record codec: s3lect compatibility and untrusted input."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastelect import RecordError
from fastelect.record import ZERO_TIME, encode_record, format_time, parse_record, parse_time


def test_round_trip() -> None:
    body = encode_record("server-001", "10.0.1.42:8443", 1_795_000_000_123_456_000, 7, 15000, 1234)
    rec = parse_record(body)
    assert (rec.leader_id, rec.leader_addr, rec.term, rec.lease_ms, rec.renewal) == (
        "server-001",
        "10.0.1.42:8443",
        7,
        15000,
        1234,
    )
    assert rec.last_updated_ns == 1_795_000_000_123_456_000
    assert not rec.released
    data = orjson.loads(body)
    assert set(data) >= {"leaderID", "leaderAddr", "lastUpdated", "term"}


def test_s3lect_record_without_term_and_with_nanoseconds() -> None:
    body = b'{"leaderID":"go-1","leaderAddr":"h:1","lastUpdated":"2026-11-26T10:30:45.123456789Z"}'
    rec = parse_record(body)
    assert rec.term == 0 and rec.lease_ms == 0
    assert rec.last_updated_ns is not None and rec.last_updated_ns % 1_000_000_000 == 123456789


def test_released_record_uses_go_zero_time() -> None:
    body = encode_record("a", "", None, 3, 1000, 9)
    assert orjson.loads(body)["lastUpdated"] == ZERO_TIME
    rec = parse_record(body)
    assert rec.released and rec.term == 3 and rec.last_updated is None


def test_time_offsets() -> None:
    assert parse_time("2026-01-01T01:00:00+01:00") == parse_time("2026-01-01T00:00:00Z")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'"string"',
        b'{"leaderAddr":"x","lastUpdated":"2026-01-01T00:00:00Z"}',
        b'{"leaderID":"","lastUpdated":"2026-01-01T00:00:00Z"}',
        b'{"leaderID":"a","lastUpdated":5}',
        b'{"leaderID":"a","lastUpdated":"2026-13-01T00:00:00Z"}',
        b'{"leaderID":"a","lastUpdated":"2026-13-01T00:00:00.000000Z"}',
        b'{"leaderID":"a","lastUpdated":"2026-01-01T25:00:00.000000Z"}',
        b'{"leaderID":"a","lastUpdated":"2026-01-01T00:00:00Z","term":"7"}',
        b'{"leaderID":"a","lastUpdated":"2026-01-01T00:00:00Z","term":-1}',
        b'{"leaderID":"a","lastUpdated":"2026-01-01T00:00:00Z","term":true}',
        b'{"leaderID":"a","leaderAddr":3,"lastUpdated":"2026-01-01T00:00:00Z"}',
        b" " * (64 * 1024 + 1),
    ],
)
def test_malformed_records_raise_record_error(body: bytes) -> None:
    with pytest.raises(RecordError):
        parse_record(body)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise_anything_but_record_error(body: bytes) -> None:
    with contextlib.suppress(RecordError):
        parse_record(body)


@given(st.integers(min_value=0, max_value=4_000_000_000 * 10**9))
def test_fast_and_general_time_parsers_agree(ns: int) -> None:
    text = format_time(ns)
    assert parse_time(text) == parse_time(text.replace("Z", "+00:00"))


@given(st.integers(min_value=0, max_value=4_000_000_000 * 10**9))
def test_time_round_trip_to_the_microsecond(ns: int) -> None:
    assert parse_time(format_time(ns)) == ns - ns % 1000


# -- mixed fleets with Go's s3lect -------------------------------------------------


@pytest.mark.parametrize(
    ("written", "unix_ns"),
    [
        # Go's time.Time JSON (RFC 3339 with nanoseconds, trailing zeros trimmed).
        ("2026-11-26T10:30:45.123456789Z", 1795689045123456789),
        ("2026-11-26T10:30:45.1234Z", 1795689045123400000),
        ("2026-11-26T10:30:45Z", 1795689045000000000),
        # A host whose local zone is not UTC writes its offset.
        ("2026-11-26T11:30:45.5+01:00", 1795689045500000000),
        ("2026-11-26T05:00:45.25-05:30", 1795689045250000000),
    ],
)
def test_records_exactly_as_s3lect_writes_them(written: str, unix_ns: int) -> None:
    body = (
        b'{"leaderID":"go-node-1","leaderAddr":"10.0.0.7:8443","lastUpdated":"'
        + written.encode()
        + b'"}'
    )
    rec = parse_record(body)
    assert (rec.leader_id, rec.leader_addr) == ("go-node-1", "10.0.0.7:8443")
    assert rec.last_updated_ns == unix_ns
    # No term, leaseMs, renewal or nonce: term 0, our own lease, not ours.
    assert (rec.term, rec.lease_ms, rec.renewal, rec.nonce) == (0, 0, 0, "")


def test_s3lect_released_record_has_the_zero_time() -> None:
    rec = parse_record(b'{"leaderID":"go-1","leaderAddr":"","lastUpdated":"0001-01-01T00:00:00Z"}')
    assert rec.released and rec.term == 0


def test_our_records_keep_every_field_s3lect_reads() -> None:
    body = encode_record("py-1", "10.0.0.8:8443", 1795689045123456000, 4, 15000, 9, "ab" * 8)
    data = orjson.loads(body)
    # s3lect decodes these three (lastUpdated as RFC 3339 in UTC) and ignores the rest.
    assert data["leaderID"] == "py-1" and data["leaderAddr"] == "10.0.0.8:8443"
    assert data["lastUpdated"] == "2026-11-26T10:30:45.123456Z"
    extra = (data["term"], data["leaseMs"], data["renewal"], data["nonce"])
    assert extra == (4, 15000, 9, "ab" * 8)


def test_long_ids_and_addresses_are_accepted() -> None:
    """s3lect accepts any length; only the shared-memory copy is cut (with a flag)."""
    long_id = "node-" + "x" * 5000
    long_addr = "very-long-host-name." * 30 + ":8443"
    rec = parse_record(encode_record(long_id, long_addr, 1795689045123456000, 1, 15000, 1))
    assert (rec.leader_id, rec.leader_addr) == (long_id, long_addr)


def test_long_leader_id_is_truncated_in_the_table_with_a_flag() -> None:
    from fastelect._core import MAX_ID_BYTES, Campaign, LeadershipTable

    table = LeadershipTable()
    slot = table.slot("default", "me")
    c = Campaign(slot, "me", "me:1", 10**9, 10**8, 4 * 10**8, 5 * 10**7)
    long_id = "é" * 200  # two bytes each: cut on a character boundary
    c.observe_record(0, 0, "e1", long_id, "h:1", 3, 0, 0, False, 1)
    st = slot.status()
    assert st["leader_id_truncated"] and not st["leader_addr_truncated"]
    assert st["leader_id"] == "é" * (MAX_ID_BYTES // 2)
    assert c.leader_id == long_id  # the campaign itself keeps the full id
    c.observe_record(1, 0, "e2", "short", "h:1", 4, 0, 0, False, 1)
    assert not slot.status()["leader_id_truncated"]
    table.close()


def _orjson_model(
    leader_id: str,
    leader_addr: str,
    last_updated_ns: int | None,
    term: int,
    lease_ms: int,
    renewal: int,
    nonce: str,
) -> bytes:
    """What the record was before the core encoded it: orjson over the dict."""
    return orjson.dumps(
        {
            "leaderID": leader_id,
            "leaderAddr": leader_addr,
            "lastUpdated": format_time(last_updated_ns),
            "term": term,
            "leaseMs": lease_ms,
            "renewal": renewal,
            "nonce": nonce,
            "v": 1,
        }
    )


#: Strings as ids may hold them: control characters, quotes, backslashes,
#: non-ASCII and astral code points (hypothesis leaves out lone surrogates,
#: which are not UTF-8; the floors run has an older hypothesis, so no
#: category arguments).
_TEXT = st.text(max_size=80)
_INSTANT = st.one_of(
    st.none(),
    # Year 1 to 9999 in ns: past int64 both ways (the core's slow path).
    st.integers(-62135596800 * 10**9, 253402300799 * 10**9 + 999_999_999),
    st.integers(0, 2**63 - 1),
)
_COUNT = st.integers(0, 2**62)


@given(_TEXT, _TEXT, _INSTANT, _COUNT, _COUNT, _COUNT, _TEXT)
def test_the_compiled_encoder_writes_what_orjson_wrote(
    leader_id: str,
    leader_addr: str,
    last_updated_ns: int | None,
    term: int,
    lease_ms: int,
    renewal: int,
    nonce: str,
) -> None:
    args = (leader_id, leader_addr, last_updated_ns, term, lease_ms, renewal, nonce)
    body = encode_record(*args)
    assert body == _orjson_model(*args)
    assert orjson.loads(body)["leaderID"] == leader_id


@pytest.mark.parametrize(
    "ns",
    [-1, -(10**9), -(10**9) - 1, 0, 999, -62135596800 * 10**9, 2**63 - 1, -(2**63)],
    ids=["-1ns", "-1s", "-1s-1ns", "epoch", "999ns", "year-1", "int64-max", "int64-min"],
)
def test_encoder_edges_of_time(ns: int) -> None:
    args = ("a\x00\x7f\u2028", "b", ns, 1, 2, 3, "n")
    assert encode_record(*args) == _orjson_model(*args)


@pytest.mark.parametrize("ns", [253402300800 * 10**9, -62135596801 * 10**9])
def test_encoder_refuses_years_rfc3339_cannot_write(ns: int) -> None:
    with pytest.raises(ValueError):
        encode_record("a", "b", ns, 1, 1, 1, "")
    with pytest.raises(ValueError):
        format_time(ns)


def test_year_one_has_four_digits() -> None:
    """glibc's strftime("%Y") writes year 1 as "1"; RFC 3339 needs "0001"."""
    assert format_time(-62135596800 * 10**9) == "0001-01-01T00:00:00.000000Z"
