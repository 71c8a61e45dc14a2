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
