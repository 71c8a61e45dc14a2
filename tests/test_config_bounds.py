"""Config footguns (issues 19 and 21): every duration bounded, ids encodable, host:port, copy().

Each value here was accepted by fastelect 0.1: ``leader_timeout=9_223_370_000``
made two nodes leaders at once, a 1 ms lease was taken, an id with a lone
surrogate raised ``UnicodeEncodeError``, ``server_addr="no-port"`` passed.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta

import pytest

from fastelect import ConfigError, ElectorConfig

REQUIRED_POSITIVE = (
    "frequent_interval",
    "infrequent_interval",
    "leader_timeout",
    "peer_timeout",
    "hook_timeout",
    "storage_timeout",
)
OPTIONAL_NON_NEGATIVE = ("safety_margin", "max_clock_skew")


def config(**fields: object) -> ElectorConfig:
    return ElectorConfig("leader.json", "node-1", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", REQUIRED_POSITIVE + OPTIONAL_NON_NEGATIVE)
@pytest.mark.parametrize(
    "value",
    [math.inf, -math.inf, math.nan, 9_223_370_000, 86_400.001, timedelta(days=2)],
    ids=["inf", "-inf", "nan", "9223370000", "just-past-24h", "2-days"],
)
def test_non_finite_and_absurd_durations_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as raised:
        config(**{field: value})
    assert raised.value.field == field, raised.value


@pytest.mark.parametrize("field", REQUIRED_POSITIVE + OPTIONAL_NON_NEGATIVE)
def test_negative_durations_name_the_field(field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config(**{field: -1.0})
    assert raised.value.field == field


@pytest.mark.parametrize("field", REQUIRED_POSITIVE)
def test_zero_is_refused_where_a_duration_must_be_positive(field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config(**{field: 0})
    assert raised.value.field == field


def test_24_hours_is_the_longest_duration() -> None:
    day = 86_400.0
    c = config(
        leader_timeout=day,
        frequent_interval=3600,
        infrequent_interval=day,
        hook_timeout=day,
        storage_timeout=day,
        max_clock_skew=day,
        peer_timeout=day,
    )
    assert c.ns("leader_timeout") == 86_400 * 10**9


def test_the_found_lease_is_refused() -> None:
    with pytest.raises(ConfigError, match="leader_timeout: must be at most 86400 s"):
        config(leader_timeout=9_223_370_000, frequent_interval=5)


def test_a_lease_no_store_can_renew_is_refused_and_says_why() -> None:
    with pytest.raises(ConfigError) as raised:
        config(leader_timeout=0.001, frequent_interval=0.0005, infrequent_interval=0.0005)
    assert raised.value.field == "leader_timeout"
    assert "at least 10 ms" in str(raised.value) and "whole milliseconds" in str(raised.value)


def test_a_lease_s3_cannot_meet_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fastelect"):
        config(leader_timeout=0.05, frequent_interval=0.01, infrequent_interval=0.01)
    assert any("S3 conditional writes take" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastelect"):
        config(leader_timeout=0.3, frequent_interval=0.03, infrequent_interval=0.03)
    assert not caplog.records


@pytest.mark.parametrize("field", ["server_id", "lockfile_path", "server_addr"])
def test_a_lone_surrogate_is_a_config_error(field: str) -> None:
    fields = {"lockfile_path": "leader.json", "server_id": "node-1", field: "\udc80bad"}
    with pytest.raises(ConfigError) as raised:
        ElectorConfig(**fields)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert "UTF-8" in str(raised.value)


@pytest.mark.parametrize(
    "addr", ["no-port", "host:", ":8443", "host:port", "host:99999", "::1:8443", "a b:1", "h:1/x"]
)
def test_server_addr_must_be_host_and_port(addr: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config(server_addr=addr)
    assert raised.value.field == "server_addr"


@pytest.mark.parametrize(
    "addr", ["", "10.0.1.42:8443", "[::1]:8443", "node-1.example.com:443", "127.0.0.1:0"]
)
def test_server_addr_accepts_host_and_port(addr: str) -> None:
    assert config(server_addr=addr).server_addr == addr


def test_copy_derives_defaulted_fields_again_from_the_new_lease() -> None:
    base = config()  # T = 15: margin 1.5, hook_timeout 15, storage_timeout 2
    longer = base.copy(leader_timeout=60)
    assert (longer.safety_margin, longer.hook_timeout, longer.storage_timeout) == (6.0, 60.0, 2.0)
    shorter = base.copy(leader_timeout=3, frequent_interval=1, infrequent_interval=1)
    assert (shorter.safety_margin, shorter.hook_timeout, shorter.storage_timeout) == (
        0.3,
        3.0,
        1.0,
    )
    # Still derived after a copy of a copy.
    assert shorter.copy(leader_timeout=30).hook_timeout == 30.0


def test_copy_keeps_fields_that_were_set() -> None:
    base = config(safety_margin=0.5, hook_timeout=2.0, storage_timeout=0.7)
    copy = base.copy(leader_timeout=60)
    assert (copy.safety_margin, copy.hook_timeout, copy.storage_timeout) == (0.5, 2.0, 0.7)
    assert copy.copy(hook_timeout=None).hook_timeout == 60.0  # None asks for the default again
    assert base == config(safety_margin=0.5, hook_timeout=2.0, storage_timeout=0.7)
