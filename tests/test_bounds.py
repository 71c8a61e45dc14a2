"""Records and durations have bounds, and terms never go back (issue 19, items 1 and 2).

The values are the ones found by trying fastelect 0.1: a ``leaseMs`` of
9223372036854 (its nanoseconds fit int64, the deadline did not: taken over
after 0 s), a ``leaseMs`` of 10**12 (the election blocked for 31 years), and
records whose term was lost because another field was invalid.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest

from elector_helpers import fast_config, wait_until
from fastelect import Elector, MemoryStorage, RecordError, _core
from fastelect._core import Action, Campaign, LeadershipTable
from fastelect.record import (
    LEASE_MS_MAX,
    TERM_MAX,
    encode_record,
    format_time,
    parse_record,
    record_term,
)
from fastelect.storage import Storage

MS = 1_000_000
S = 1000 * MS
T = 1000 * MS
F = 100 * MS
I64_MAX = 2**63 - 1
#: The found values.
OVERFLOWING_LEASE_MS = 9_223_372_036_854
ABSURD_LEASE_MS = 10**12


def make(*, skew: int = -1, now: int = 0) -> tuple[Campaign, _core.Slot]:
    slot = LeadershipTable().slot("default", "me")
    return Campaign(slot, "me", "me:1", T, F, 4 * F, 50 * MS, skew, False, now), slot


def observe(
    c: Campaign,
    now: int,
    etag: str,
    *,
    term: int = 3,
    lease_ms: int = 0,
    wall_now: int = 0,
    updated: int = 0,
) -> int:
    c.observe_record(now, wall_now, etag, "other", "other:1", term, lease_ms, 1, False, updated)
    return c.poll(now)


def body(**fields: object) -> bytes:
    record: dict[str, object] = {
        "leaderID": "other",
        "leaderAddr": "10.0.0.1:8443",
        "lastUpdated": "2026-01-01T00:00:00.000000Z",
        "term": 3,
        "leaseMs": 1000,
        "renewal": 1,
    }
    record.update(fields)
    return orjson.dumps({k: v for k, v in record.items() if v is not None})


# -- the record's bounds (parsing) ----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"leaseMs": OVERFLOWING_LEASE_MS}, "leaseMs is out of range"),
        ({"leaseMs": ABSURD_LEASE_MS}, "leaseMs is out of range"),
        ({"leaseMs": LEASE_MS_MAX + 1}, "leaseMs is out of range"),
        ({"leaseMs": 0}, "leaseMs is out of range"),
        ({"leaseMs": -1}, "leaseMs is out of range"),
        ({"term": TERM_MAX + 1}, "term is out of range"),
        ({"term": 2**62 + 1}, "term is out of range"),
        ({"lastUpdated": "2263-01-01T00:00:00Z"}, "lastUpdated is out of range"),
        ({"lastUpdated": "1600-01-01T00:00:00Z"}, "lastUpdated is out of range"),
    ],
)
def test_records_outside_the_bounds_are_invalid(fields: dict[str, object], why: str) -> None:
    with pytest.raises(RecordError, match=why):
        parse_record(body(**fields))


def test_records_at_the_bounds_are_valid() -> None:
    assert parse_record(body(leaseMs=LEASE_MS_MAX, term=TERM_MAX)).lease_ms == LEASE_MS_MAX
    assert parse_record(body(leaseMs=1, term=0)).term == 0
    # s3lect writes neither term nor leaseMs: term 0, and the reader's own lease.
    rec = parse_record(body(leaseMs=None, term=None, renewal=None))
    assert (rec.term, rec.lease_ms) == (0, 0)


@pytest.mark.parametrize(
    ("raw", "term"),
    [
        (b"not json", None),
        (b"[40]", None),
        (body(term=40, leaseMs=-1), 40),
        (body(term=40, leaseMs=ABSURD_LEASE_MS), 40),
        (body(term=40, leaderID=""), 40),
        (body(term=2**62 + 1), None),
        (body(term=True), None),
        (body(term="40"), None),
    ],
)
def test_record_term_salvages_only_an_in_bounds_integer_term(raw: bytes, term: int | None) -> None:
    assert record_term(raw) == term


# -- the core: out-of-bounds observations are garbage, arithmetic saturates ------------


def test_core_never_takes_a_record_whose_lease_overflows_before_its_own_lease() -> None:
    c, slot = make()
    # Before: 9223372036854 ms in ns fits int64, first_seen + it did not: legal at once.
    assert observe(c, 10 * MS, "a", lease_ms=OVERFLOWING_LEASE_MS) == Action.WAIT
    assert c.takeover_legal_at() >= 10 * MS
    assert observe(c, 10 * MS + T - 1, "a", lease_ms=OVERFLOWING_LEASE_MS) == Action.WAIT
    # An invalid record, like any garbage: taken after our own T of one etag.
    assert observe(c, 10 * MS + T, "a", lease_ms=OVERFLOWING_LEASE_MS) == Action.TAKEOVER
    assert c.begin_write(10 * MS + T)[:2] == ("a", 4)  # its in-bounds term still counts
    assert slot.status()["counters"]["record_errors"] == 3


def test_core_does_not_let_an_absurd_lease_block_the_election_for_years() -> None:
    c, _ = make()
    assert observe(c, 0, "a", lease_ms=ABSURD_LEASE_MS) == Action.WAIT
    # Before: legal only after 10**12 ms (31 years).
    assert observe(c, T, "a", lease_ms=ABSURD_LEASE_MS) == Action.TAKEOVER


def test_core_treats_an_out_of_range_term_as_garbage() -> None:
    c, slot = make()
    observe(c, 0, "good", term=7, lease_ms=1000)
    assert observe(c, 1, "bad", term=TERM_MAX + 1) == Action.WAIT
    assert observe(c, T + 1, "bad", term=TERM_MAX + 1) == Action.TAKEOVER
    assert c.begin_write(T + 1)[:2] == ("bad", 8)  # the term seen before the garbage
    assert slot.status()["counters"]["record_errors"] == 2


def test_deadline_arithmetic_saturates_at_the_end_of_int64() -> None:
    now = I64_MAX - 10 * S
    c, _ = make(now=now)
    # first seen + lease would wrap to the far past (legal at once) without saturation.
    assert observe(c, now, "a", lease_ms=LEASE_MS_MAX) == Action.WAIT
    assert c.takeover_legal_at() == I64_MAX
    assert c.next_at_ns > now


def test_wall_clock_rule_saturates_for_a_last_updated_at_the_end_of_int64() -> None:
    now = 100 * S
    c, _ = make(skew=10 * S, now=now)
    # Rule 1(c): updated + lease + skew - (wall - mono) would wrap past int64.
    updated = I64_MAX - S
    assert observe(c, now, "a", lease_ms=LEASE_MS_MAX, wall_now=now, updated=updated) == (
        Action.WAIT
    )
    assert c.next_at_ns > now


@pytest.mark.parametrize("field", ["lease", "infrequent", "skew"])
def test_core_refuses_durations_past_24_hours(field: str) -> None:
    c, _ = make()
    day = _core.MAX_DURATION_NS
    lease, infrequent, skew = T, 4 * F, -1
    if field == "lease":
        lease = day + 1
    elif field == "infrequent":
        infrequent = day + 1
    else:
        skew = day + 1
    with pytest.raises(ValueError, match="24 h"):
        c.configure(lease, F, infrequent, 50 * MS, skew)
    c.configure(day, F, day, 50 * MS, day)  # 24 h itself is fine


# -- terms never go back (rule 5), in the core ------------------------------------------


def test_garbage_keeps_the_term_seen_before_it() -> None:
    c, _ = make()
    observe(c, 0, "good", term=41, lease_ms=1000)
    c.observe_garbage(1, "junk")
    c.observe_garbage(T + 1, "junk")
    assert c.poll(T + 1) == Action.TAKEOVER
    assert c.begin_write(T + 1)[1] == 42


def test_garbage_with_an_in_bounds_term_counts_that_term() -> None:
    c, _ = make()
    c.observe_garbage(0, "junk", 40)
    c.observe_garbage(T, "junk", 40)
    assert c.poll(T) == Action.TAKEOVER
    assert c.begin_write(T)[1] == 41
    # Never lowers what was seen, and ignores what is not an in-bounds integer.
    c2, _ = make()
    observe(c2, 0, "good", term=50, lease_ms=1000)
    for term in (40, -1, TERM_MAX + 1, True):
        c2.observe_garbage(1, "junk", term)  # type: ignore[arg-type]
    assert c2.max_term_seen == 50


# -- the Elector against a real storage ---------------------------------------------------


async def _takeover_after(storage: Storage, raw: bytes) -> tuple[float, Elector]:
    await storage.put_if_match("leader.json", raw, "")
    elector = Elector(fast_config("taker"), storage)
    started = time.monotonic()
    await elector.start()
    await asyncio.wait_for(elector.wait_for_leadership(), 5)
    return time.monotonic() - started, elector


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "lease_ms",
    [pytest.param(OVERFLOWING_LEASE_MS, id="overflowing"), pytest.param(ABSURD_LEASE_MS, id="31y")],
)
async def test_an_absurd_lease_is_an_invalid_record_taken_after_our_own_lease(
    storage: Storage, lease_ms: int, caplog: pytest.LogCaptureFixture
) -> None:
    lease = 0.3  # fast_config's T
    raw = body(lastUpdated=format_time(time.time_ns()), leaseMs=lease_ms, term=9)
    with caplog.at_level(logging.WARNING, logger="fastelect"):
        waited, elector = await _takeover_after(storage, raw)
    try:
        assert waited >= lease, f"took an absurd lease over after {waited:.3f} s, before T"
        assert elector.term == 10  # the invalid record's in-bounds term counts
        assert elector.slot.status()["counters"]["record_errors"] >= 1
        assert any("leaseMs is out of range" in r.getMessage() for r in caplog.records)
    finally:
        await elector.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("garbage", "term"),
    [
        pytest.param(b"\x00not json", 42, id="not-json"),
        pytest.param(body(term=2**62 + 1), 42, id="out-of-range-term"),
        pytest.param(body(term=60, leaseMs=-1), 61, id="invalid-lease-valid-term"),
    ],
)
async def test_a_takeover_of_garbage_never_writes_a_lower_term(
    storage: Storage, garbage: bytes, term: int
) -> None:
    # The node first sees a valid record (term 41), then the record turns to garbage.
    await storage.put_if_match(
        "leader.json", encode_record("go-node", "10.0.0.1:8443", time.time_ns(), 41, 300, 1), ""
    )
    elector = Elector(fast_config("taker"), storage)
    await elector.start()
    try:
        await wait_until(lambda: elector._campaign.max_term_seen == 41, 5, "never read term 41")
        _, etag = await storage.get("leader.json")
        await storage.put_if_match("leader.json", garbage, etag)
        await asyncio.wait_for(elector.wait_for_leadership(), 5)
        assert elector.term == term
        stored = parse_record((await storage.get("leader.json"))[0])
        assert stored.term == term
    finally:
        await elector.stop()


@pytest.mark.asyncio
async def test_a_fresh_node_continues_from_the_valid_term_of_an_invalid_record() -> None:
    storage = MemoryStorage()
    _, elector = await _takeover_after(storage, body(term=60, leaseMs=-1))
    try:
        assert elector.term == 61  # was 1: the term was thrown away with the record
    finally:
        await elector.stop()
