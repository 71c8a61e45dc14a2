"""ElectorConfig validates every invariant with one error naming the field."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from fastelect import ConfigError, ElectorConfig


def make(**changes: Any) -> ElectorConfig:
    return ElectorConfig(**{"lockfile_path": "leader.json", "server_id": "a", **changes})


def test_defaults_follow_s3lect() -> None:
    cfg = make()
    assert (cfg.frequent_interval, cfg.infrequent_interval, cfg.leader_timeout) == (5.0, 30.0, 15.0)
    assert (cfg.peer_timeout, cfg.peer_health_path, cfg.peer_mode) == (
        3.0,
        "/health/leadership",
        False,
    )
    assert cfg.safety_margin == 1.5
    assert cfg.max_clock_skew is None
    assert cfg.hook_timeout == 15.0 and cfg.storage_timeout == 2.0
    # Short leases get a proportionate storage bound, not one frequent interval.
    assert make(frequent_interval=0.05, leader_timeout=1.5).storage_timeout == 0.5


def test_timedelta_and_seconds_are_equivalent() -> None:
    a = make(frequent_interval=timedelta(milliseconds=500), leader_timeout=timedelta(seconds=4))
    b = make(frequent_interval=0.5, leader_timeout=4)
    assert (a.frequent_interval, a.leader_timeout) == (b.frequent_interval, b.leader_timeout)
    assert a.ns("frequent_interval") == 500_000_000
    assert a.ns("max_clock_skew") == -1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lockfile_path": ""}, "lockfile_path"),
        ({"lockfile_path": "/abs.json"}, "lockfile_path"),
        ({"lockfile_path": "../escape.json"}, "lockfile_path"),
        ({"server_id": ""}, "server_id"),
        ({"server_id": "   "}, "server_id"),
        ({"server_id": "x" * 200}, "server_id"),
        ({"server_id": "bad\nid"}, "server_id"),
        ({"server_id": 7}, "server_id"),
        ({"frequent_interval": 0}, "frequent_interval"),
        ({"frequent_interval": -1}, "frequent_interval"),
        ({"frequent_interval": float("nan")}, "frequent_interval"),
        ({"frequent_interval": "5s"}, "frequent_interval"),
        ({"leader_timeout": 0}, "leader_timeout"),
        ({"frequent_interval": 15, "leader_timeout": 15}, "frequent_interval"),
        ({"infrequent_interval": 1}, "infrequent_interval"),
        ({"safety_margin": -0.1}, "safety_margin"),
        ({"safety_margin": 15}, "safety_margin"),
        ({"safety_margin": 10.5}, "safety_margin"),
        ({"max_clock_skew": -1}, "max_clock_skew"),
        ({"peer_timeout": 0}, "peer_timeout"),
        ({"hook_timeout": 0}, "hook_timeout"),
        ({"storage_timeout": -2}, "storage_timeout"),
        ({"peer_mode": True}, "peer_ca_cert"),
        ({"peer_mode": True, "peer_ca_cert": b"pem"}, "server_addr"),
        ({"peer_health_path": "health"}, "peer_health_path"),
        ({"on_acquire": "not callable"}, "on_acquire"),
        ({"on_lose": 3}, "on_lose"),
    ],
)
def test_each_invalid_field_is_named(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(**changes)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, ValueError)


def test_copy_revalidates() -> None:
    cfg = make()
    assert cfg.copy(frequent_interval=1).frequent_interval == 1.0
    with pytest.raises(ConfigError):
        cfg.copy(frequent_interval=100)
