"""Tests for fastelect.election: the Manager of a cluster and a shard election.

Two halves:

* the Manager's own behaviour, with a fake elector factory that records what
  it was asked to build, start and stop (no I/O, no sleeps);
* end to end, with real electors on the moto S3 server and real granian
  health servers: three managers in one cluster and two shards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

import fastelect
from elector_helpers import MinimalStore
from fastelect import ConfigError, FastelectError, LeadershipTable, LifecycleError, MemoryStorage
from fastelect._core import LeaseHolder, shm_path
from fastelect.config import ElectorConfig
from fastelect.election import (
    CLUSTER_HEALTH_PATH,
    SHARD_HEALTH_PATH,
    ElectionConfig,
    HealthServerConfig,
    Manager,
    ManagerConfig,
    ManagerStopError,
)
from fastelect.errors import (
    HealthServerError,
    ObjectNotFound,
    StorageUnavailable,
)
from fastelect.storage import S3Storage, Storage
from fastelect.tls import CertificateAuthority, TLSCertificate, client_ssl_context
from helpers import free_port

WAIT = 10.0  # seconds: bound on every wait for an election outcome


# --------------------------------------------------------------------------- #
# Shared fixtures and helpers
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    """A development CA for the health servers."""
    return CertificateAuthority.create()


@pytest.fixture(scope="module")
def server_cert(ca: CertificateAuthority) -> TLSCertificate:
    """A loopback server certificate signed by ``ca``."""
    return ca.issue(common_name="fastelect-test", ip_addresses=["127.0.0.1"])


def ids() -> tuple[str, str]:
    """A unique (cluster_id, server_id) pair, so tables of concurrent tests never clash."""
    tag = uuid.uuid4().hex[:8]
    return f"cluster-{tag}", f"node-{tag}"


async def eventually(
    what: str, check: Callable[[], bool], *, timeout: float = WAIT, every: float = 0.01
) -> None:
    """Wait until ``check()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)


# --------------------------------------------------------------------------- #
# A fake elector factory
# --------------------------------------------------------------------------- #


class FakeElector:
    """Records what the Manager does with it; leadership is set by the test."""

    def __init__(
        self,
        config: ElectorConfig,
        storage: Storage,
        logger: logging.Logger | None,
        *,
        table: LeadershipTable,
        election: str,
    ) -> None:
        self.config = config
        self.storage = storage
        self.logger = logger
        self.table = table
        self.election = election
        self.starts = 0
        self.stops = 0
        self.leader = False
        # Optional attributes the manager's mirror publishes (see ElectorFactory).
        self.term: int | None = None
        self.leader_id = ""
        self.peer_ca: bytes | None = None
        self.start_error: BaseException | None = None
        self.stop_error: BaseException | None = None
        self.start_gate: asyncio.Event | None = None
        self.first_cycle = asyncio.Event()

    async def start(self) -> None:
        self.starts += 1
        if self.start_gate is not None:
            await self.start_gate.wait()
        if self.start_error is not None:
            raise self.start_error

    async def stop(self) -> None:
        self.stops += 1
        self.leader = False
        if self.stop_error is not None:
            raise self.stop_error

    def is_leader(self) -> bool:
        return self.leader

    async def wait_for_election(self) -> None:
        await self.first_cycle.wait()

    def enable_peer_mode(self, ca_cert: bytes) -> None:
        self.peer_ca = ca_cert

    async def run_hook(self, name: str) -> None:
        """Call a hook the way Elector does: async ones awaited, sync ones in a thread."""
        hook = getattr(self.config, name)
        assert hook is not None, f"the manager passed no {name} hook"
        if asyncio.iscoroutinefunction(hook):
            await hook()
            return
        result = await asyncio.to_thread(hook)
        if result is not None:
            await result


class FakeFactory:
    """An ElectorFactory that builds FakeElectors and keeps them by election name."""

    def __init__(self, prepare: Callable[[FakeElector], None] | None = None) -> None:
        self.built: list[FakeElector] = []
        self.prepare = prepare

    def __call__(
        self,
        config: ElectorConfig,
        storage: Storage,
        logger: logging.Logger | None,
        *,
        table: LeadershipTable,
        election: str,
    ) -> FakeElector:
        elector = FakeElector(config, storage, logger, table=table, election=election)
        if self.prepare is not None:
            self.prepare(elector)
        self.built.append(elector)
        return elector

    def one(self, election: str) -> FakeElector:
        found = [e for e in self.built if e.election == election]
        assert len(found) == 1, f"expected one {election} elector, built {len(found)}"
        return found[0]


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[tuple[Manager, FakeFactory]]:
    """A Manager on a FakeFactory (shard "s1", server_addr set); stopped after the test."""
    cluster_id, server_id = ids()
    factory = FakeFactory()
    manager = Manager(
        ManagerConfig(cluster_id, "s1", server_id, "127.0.0.1:8443"), elector_factory=factory
    )
    try:
        yield manager, factory
    finally:
        await manager.stop()  # a no-op for tests that stopped it themselves


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cluster_id": ""}, "cluster_id"),
        ({"shard_id": "  "}, "shard_id"),
        ({"server_id": ""}, "server_id"),
        ({"server_id": "a\nb"}, "server_id"),
        ({"cluster_id": 7}, "cluster_id"),
        ({"server_addr": None}, "server_addr"),
        # The cluster elector id is f"{shard_id}-{server_id}": too long together.
        ({"shard_id": "s" * 60, "server_id": "n" * 60}, "shard_id"),
        ({"server_id": "n" * 121}, "server_id"),
        ({"logger": "fastelect"}, "logger"),
        ({"table_name": "has/slash"}, "table_name"),
        ({"table_name": "x" * 25}, "table_name"),
    ],
)
def test_manager_config_names_the_bad_field(kwargs: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"cluster_id": "c", "shard_id": "s", "server_id": "n"}
    values.update(kwargs)
    with pytest.raises(ConfigError) as info:
        ManagerConfig(**values)
    assert info.value.field == field


def test_manager_config_elector_ids() -> None:
    cfg = ManagerConfig("c1", "shard-7", "node-3", "10.0.0.1:8443")
    assert cfg.cluster_elector_id == "shard-7-node-3"
    assert cfg.shard_elector_id == "node-3"


def test_election_config_defaults_for_none_and_zero() -> None:
    storage = MemoryStorage()
    for value in (None, 0, 0.0, timedelta(0)):
        cfg = ElectionConfig(
            storage, frequent_interval=value, infrequent_interval=value, leader_timeout=value
        )
        assert (cfg.frequent_interval, cfg.infrequent_interval, cfg.leader_timeout) == (
            5.0,
            30.0,
            15.0,
        )
    cfg = ElectionConfig(storage)
    assert (cfg.frequent, cfg.infrequent, cfg.lease) == (5.0, 30.0, 15.0)
    assert not cfg.peer_mode and cfg.ca_cert is None


def test_election_config_accepts_timedelta_and_seconds() -> None:
    cfg = ElectionConfig(
        MemoryStorage(),
        frequent_interval=timedelta(milliseconds=250),
        infrequent_interval=2,
        leader_timeout=3.5,
    )
    assert (cfg.frequent_interval, cfg.infrequent_interval, cfg.leader_timeout) == (0.25, 2.0, 3.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"frequent_interval": -1}, "frequent_interval"),
        ({"leader_timeout": "15s"}, "leader_timeout"),
        # The elector's invariants, checked at construction under the same names.
        ({"frequent_interval": 20, "leader_timeout": 15}, "frequent_interval"),
        ({"infrequent_interval": 1}, "infrequent_interval"),
        ({"peer_mode": True}, "ca_cert"),
        ({"peer_mode": 1, "ca_cert": b"pem"}, "peer_mode"),
        ({"ca_cert": "not bytes"}, "ca_cert"),
        (
            {"ca_cert": b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n"},
            "ca_cert",
        ),
        ({"on_acquire": "not callable"}, "on_acquire"),
        ({"on_lose": 3}, "on_lose"),
        ({"storage": object()}, "storage"),
    ],
)
def test_election_config_names_the_bad_field(kwargs: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"storage": MemoryStorage()}
    values.update(kwargs)
    with pytest.raises(ConfigError) as info:
        ElectionConfig(**values)
    assert info.value.field == field


def test_health_server_config_is_reexported() -> None:
    from fastelect import health

    assert HealthServerConfig is health.HealthServerConfig


def test_table_name_default_and_override() -> None:
    cfg = ManagerConfig("c", "s", "n")
    name = Manager(cfg).table_name
    assert name == Manager(ManagerConfig("c", "s", "n")).table_name, "derived name is stable"
    assert name != Manager(ManagerConfig("c", "s", "m")).table_name
    assert 1 <= len(name) <= 24 and name.replace("-", "").isalnum()
    assert str(os.getpid()) in name
    assert Manager(ManagerConfig("c", "s", "n", table_name="mine")).table_name == "mine"


# --------------------------------------------------------------------------- #
# The Manager with a fake elector factory
# --------------------------------------------------------------------------- #


@pytest.mark.asyncio
async def test_cluster_election_ids_lock_path_and_health_path(
    fake: tuple[Manager, FakeFactory],
) -> None:
    manager, factory = fake
    storage = MemoryStorage()
    await manager.start_cluster_election(
        ElectionConfig(storage, frequent_interval=1, infrequent_interval=2, leader_timeout=3)
    )
    elector = factory.one("cluster")
    cfg = manager.config
    assert elector.starts == 1
    assert elector.config.server_id == f"s1-{cfg.server_id}"
    assert elector.config.server_addr == "127.0.0.1:8443"
    assert elector.config.lockfile_path == "leader.json"
    assert elector.config.peer_health_path == CLUSTER_HEALTH_PATH == "/health/leadership/cluster"
    assert elector.config.peer_mode is False
    assert (elector.config.frequent, elector.config.infrequent, elector.config.lease) == (1, 2, 3)
    assert elector.storage is storage
    assert elector.election == "cluster"
    assert elector.table.name == manager.table_name
    assert manager.cluster_elector is elector and manager.shard_elector is None


@pytest.mark.asyncio
async def test_cluster_peer_mode_from_config(
    fake: tuple[Manager, FakeFactory], ca: CertificateAuthority
) -> None:
    manager, factory = fake
    await manager.start_cluster_election(
        ElectionConfig(MemoryStorage(), peer_mode=True, ca_cert=ca.cert_pem)
    )
    elector = factory.one("cluster")
    assert elector.config.peer_mode is True
    assert elector.config.peer_ca_cert == ca.cert_pem


@pytest.mark.asyncio
async def test_shard_election_ids_and_always_peer_mode(
    fake: tuple[Manager, FakeFactory], ca: CertificateAuthority
) -> None:
    manager, factory = fake
    storage = MemoryStorage()
    # peer_mode=False is overridden: the shard election always checks peers.
    await manager.start_shard_election(ElectionConfig(storage, ca_cert=ca.cert_pem))
    elector = factory.one("shard")
    assert elector.starts == 1
    assert elector.config.server_id == manager.config.server_id
    assert elector.config.lockfile_path == "leader.json"
    assert elector.config.peer_health_path == SHARD_HEALTH_PATH == "/health/leadership/shard"
    assert elector.config.peer_mode is True
    assert elector.config.peer_ca_cert == ca.cert_pem
    assert elector.storage is storage
    assert elector.election == "shard"
    assert manager.shard_elector is elector and manager.cluster_elector is None


@pytest.mark.asyncio
async def test_shard_election_requires_ca_cert(fake: tuple[Manager, FakeFactory]) -> None:
    manager, factory = fake
    with pytest.raises(ConfigError, match="ca_cert: is required") as info:
        await manager.start_shard_election(ElectionConfig(MemoryStorage()))
    assert info.value.field == "ca_cert"
    assert factory.built == []
    assert manager.shard_elector is None


@pytest.mark.asyncio
async def test_shard_election_requires_server_addr(ca: CertificateAuthority) -> None:
    cluster_id, server_id = ids()
    factory = FakeFactory()
    manager = Manager(ManagerConfig(cluster_id, "s1", server_id), elector_factory=factory)
    with pytest.raises(ConfigError) as info:
        await manager.start_shard_election(ElectionConfig(MemoryStorage(), ca_cert=ca.cert_pem))
    assert info.value.field == "server_addr"
    assert factory.built == []
    await manager.stop()


@pytest.mark.asyncio
async def test_starting_an_election_twice_raises(
    fake: tuple[Manager, FakeFactory], ca: CertificateAuthority
) -> None:
    manager, factory = fake
    await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    await manager.start_shard_election(ElectionConfig(MemoryStorage(), ca_cert=ca.cert_pem))
    with pytest.raises(LifecycleError, match="cluster election is already started"):
        await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    with pytest.raises(LifecycleError, match="shard election is already started"):
        await manager.start_shard_election(ElectionConfig(MemoryStorage(), ca_cert=ca.cert_pem))
    assert len(factory.built) == 2
    assert isinstance(LifecycleError("x"), RuntimeError)


@pytest.mark.asyncio
async def test_concurrent_starts_build_one_elector(fake: tuple[Manager, FakeFactory]) -> None:
    manager, factory = fake
    gate = asyncio.Event()
    factory.prepare = lambda e: setattr(e, "start_gate", gate)
    first = asyncio.create_task(manager.start_cluster_election(ElectionConfig(MemoryStorage())))
    await asyncio.sleep(0)  # let it claim the election and block in start()
    with pytest.raises(LifecycleError, match="already starting"):
        await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    gate.set()
    await asyncio.wait_for(first, WAIT)
    assert len(factory.built) == 1 and factory.built[0].starts == 1


@pytest.mark.asyncio
async def test_failed_start_leaves_the_election_unstarted(
    fake: tuple[Manager, FakeFactory],
) -> None:
    manager, factory = fake
    factory.prepare = lambda e: setattr(e, "start_error", StorageUnavailable("no bucket"))
    with pytest.raises(StorageUnavailable):
        await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    assert manager.cluster_elector is None
    assert manager.is_cluster_leader() is False
    with pytest.raises(LifecycleError):
        await manager.wait_for_cluster_election()
    # The failure is not sticky: the caller may try again.
    factory.prepare = None
    await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    assert manager.cluster_elector is factory.built[-1]
    await manager.stop()
    assert factory.built[0].stops == 0, "an elector that never started is not stopped"
    assert factory.built[1].stops == 1


@pytest.mark.asyncio
async def test_one_storage_for_both_elections_is_rejected(
    fake: tuple[Manager, FakeFactory], ca: CertificateAuthority
) -> None:
    manager, factory = fake
    storage = MemoryStorage()
    await manager.start_cluster_election(ElectionConfig(storage))
    with pytest.raises(ConfigError, match="needs its own storage") as info:
        await manager.start_shard_election(ElectionConfig(storage, ca_cert=ca.cert_pem))
    assert info.value.field == "storage"
    assert len(factory.built) == 1


@pytest.mark.asyncio
async def test_calls_that_need_a_started_cluster_election(
    fake: tuple[Manager, FakeFactory], ca: CertificateAuthority
) -> None:
    manager, _factory = fake
    with pytest.raises(LifecycleError, match="cluster election is not started"):
        await manager.wait_for_cluster_election()
    with pytest.raises(LifecycleError, match="cluster election is not started"):
        manager.enable_cluster_peer_mode(ca.cert_pem)
    # Starting the shard election does not make the cluster one started.
    await manager.start_shard_election(ElectionConfig(MemoryStorage(), ca_cert=ca.cert_pem))
    with pytest.raises(LifecycleError, match="cluster election is not started"):
        await manager.wait_for_cluster_election()


@pytest.mark.asyncio
async def test_wait_for_cluster_election_waits_for_the_first_cycle(
    fake: tuple[Manager, FakeFactory],
) -> None:
    manager, factory = fake
    await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    waiter = asyncio.create_task(manager.wait_for_cluster_election())
    await asyncio.sleep(0.01)
    assert not waiter.done(), "returned before the elector's first cycle"
    factory.one("cluster").first_cycle.set()
    await asyncio.wait_for(waiter, WAIT)


@pytest.mark.asyncio
async def test_enable_cluster_peer_mode_reaches_the_elector(
    fake: tuple[Manager, FakeFactory], ca: CertificateAuthority
) -> None:
    manager, factory = fake
    await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    manager.enable_cluster_peer_mode(ca.cert_pem)
    assert factory.one("cluster").peer_ca == ca.cert_pem
    with pytest.raises(ConfigError):
        manager.enable_cluster_peer_mode(b"")


@pytest.mark.asyncio
async def test_is_leader_follows_the_electors_and_is_false_outside_start_stop(
    fake: tuple[Manager, FakeFactory], ca: CertificateAuthority
) -> None:
    manager, factory = fake
    assert manager.is_cluster_leader() is False
    assert manager.is_shard_leader() is False
    await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    await manager.start_shard_election(ElectionConfig(MemoryStorage(), ca_cert=ca.cert_pem))
    cluster, shard = factory.one("cluster"), factory.one("shard")
    # The elector's own check, bound: no manager frame in between.
    assert manager.is_cluster_leader == cluster.is_leader
    assert manager.is_shard_leader == shard.is_leader
    cluster.leader = True
    assert manager.is_cluster_leader() is True and manager.is_shard_leader() is False
    shard.leader = True
    assert manager.is_shard_leader() is True
    await manager.stop()
    cluster.leader = shard.leader = True  # even an elector that still claims it
    assert manager.is_cluster_leader() is False
    assert manager.is_shard_leader() is False


@pytest.mark.asyncio
@pytest.mark.parametrize("election", ["cluster", "shard"])
@pytest.mark.parametrize("kind", ["sync", "async", "none"])
async def test_hooks_log_then_call_the_users(
    fake: tuple[Manager, FakeFactory],
    ca: CertificateAuthority,
    caplog: pytest.LogCaptureFixture,
    election: str,
    kind: str,
) -> None:
    manager, factory = fake
    calls: list[tuple[str, list[str]]] = []

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "fastelect.election"]

    def sync_hook(name: str) -> Callable[[], None]:
        def hook() -> None:
            calls.append((name, logged()))

        return hook

    def async_hook(name: str) -> Callable[[], Awaitable[None]]:
        async def hook() -> None:
            await asyncio.sleep(0)
            calls.append((name, logged()))

        return hook

    make = {"sync": sync_hook, "async": async_hook}.get(kind)
    cfg = ElectionConfig(
        MemoryStorage(),
        ca_cert=ca.cert_pem,
        on_acquire=make("acquire") if make else None,
        on_lose=make("lose") if make else None,
    )
    if election == "cluster":
        await manager.start_cluster_election(cfg)
        elector_id = manager.config.cluster_elector_id
    else:
        await manager.start_shard_election(cfg)
        elector_id = manager.config.shard_elector_id
    elector = factory.one(election)
    caplog.set_level(logging.INFO, logger="fastelect.election")
    caplog.clear()

    await elector.run_hook("on_acquire")
    await elector.run_hook("on_lose")

    acquired = f"Acquired {election} leadership as {elector_id}"
    lost = f"Lost {election} leadership as {elector_id}"
    assert logged() == [acquired, lost]
    if make is not None:
        # Each user hook ran after its log line, exactly once.
        assert calls == [("acquire", [acquired]), ("lose", [acquired, lost])]
    for record in caplog.records:
        assert record.levelno == logging.INFO
        assert record.election == election  # type: ignore[attr-defined]
        assert record.elector == elector_id  # type: ignore[attr-defined]
        assert record.cluster_id == manager.config.cluster_id  # type: ignore[attr-defined]
        assert record.shard_id == "s1"  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_hook_errors_reach_the_elector(fake: tuple[Manager, FakeFactory]) -> None:
    # The elector must see a failing on_acquire (it then releases the lock).
    manager, factory = fake

    async def boom() -> None:
        raise RuntimeError("cannot start leader work")

    await manager.start_cluster_election(ElectionConfig(MemoryStorage(), on_acquire=boom))
    with pytest.raises(RuntimeError, match="cannot start leader work"):
        await factory.one("cluster").run_hook("on_acquire")


@pytest.mark.asyncio
async def test_manager_logger_is_used_and_handed_to_electors(
    ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger(f"app.elections.{uuid.uuid4().hex}")
    cluster_id, server_id = ids()
    factory = FakeFactory()
    manager = Manager(
        ManagerConfig(cluster_id, "s1", server_id, "127.0.0.1:1", logger=logger), factory
    )
    caplog.set_level(logging.INFO, logger=logger.name)
    await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    assert factory.one("cluster").logger is logger
    await factory.one("cluster").run_hook("on_acquire")
    await manager.stop()
    assert any(
        r.name == logger.name and r.getMessage().startswith("Acquired cluster leadership")
        for r in caplog.records
    )


@pytest.mark.asyncio
async def test_stop_stops_everything_once_and_drops_the_table(
    fake: tuple[Manager, FakeFactory], ca: CertificateAuthority
) -> None:
    manager, factory = fake
    storage = MemoryStorage()
    await manager.start_cluster_election(ElectionConfig(storage))
    await manager.start_shard_election(ElectionConfig(MemoryStorage(), ca_cert=ca.cert_pem))
    path = shm_path(manager.table_name)
    assert os.path.exists(path), "the manager publishes its table while running"
    await manager.stop()
    assert [e.stops for e in factory.built] == [1, 1]
    assert not os.path.exists(path), "stop() must remove the shared-memory table"
    assert manager.stopped
    await manager.stop()  # idempotent
    assert [e.stops for e in factory.built] == [1, 1]
    # The caller owns the storages: stop() leaves them usable.
    await storage.check()


@pytest.mark.asyncio
async def test_concurrent_stops_both_wait_for_the_electors(
    fake: tuple[Manager, FakeFactory],
) -> None:
    manager, factory = fake
    await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    elector = factory.one("cluster")
    release = asyncio.Event()
    original_stop = elector.stop

    async def slow_stop() -> None:
        await release.wait()
        await original_stop()

    elector.stop = slow_stop  # type: ignore[method-assign]
    first = asyncio.create_task(manager.stop())
    second = asyncio.create_task(manager.stop())
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done(), "a second stop() returned before the first"
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT)
    assert elector.stops == 1


@pytest.mark.asyncio
async def test_stop_without_start_and_restart_after_stop(
    fake: tuple[Manager, FakeFactory], server_cert: TLSCertificate
) -> None:
    manager, factory = fake
    await manager.stop()
    with pytest.raises(LifecycleError, match="stopped"):
        await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    with pytest.raises(LifecycleError, match="stopped"):
        await manager.start_health_server(HealthServerConfig("127.0.0.1:0", server_cert))
    with pytest.raises(LifecycleError, match="stopped"):
        await manager.wait_for_cluster_election()
    assert factory.built == []


@pytest.mark.asyncio
async def test_stop_collects_every_error(
    fake: tuple[Manager, FakeFactory], ca: CertificateAuthority
) -> None:
    manager, factory = fake
    await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
    await manager.start_shard_election(ElectionConfig(MemoryStorage(), ca_cert=ca.cert_pem))
    cluster, shard = factory.one("cluster"), factory.one("shard")
    cluster.stop_error = StorageUnavailable("release of the cluster record failed")
    shard.stop_error = ValueError("shard elector broke")
    path = shm_path(manager.table_name)

    with pytest.raises(ManagerStopError) as info:
        await manager.stop()

    err = info.value
    assert isinstance(err, FastelectError) and isinstance(err, ExceptionGroup)
    assert list(err.exceptions) == [cluster.stop_error, shard.stop_error]
    assert "the cluster election: StorageUnavailable: release of the cluster" in str(err)
    assert "the shard election: ValueError: shard elector broke" in str(err)
    assert cluster.stops == shard.stops == 1, "one failure must not skip the other stop"
    assert not os.path.exists(path), "the table is dropped even when stops fail"
    assert manager.is_cluster_leader() is False
    # except* sees the parts, and keeps our type for the rest.
    try:
        raise err
    except* ValueError as matched:
        assert matched.exceptions == (shard.stop_error,)
        assert isinstance(matched, ManagerStopError)
    except* StorageUnavailable:
        pass
    await manager.stop()  # a second stop does not raise again
    assert cluster.stops == shard.stops == 1


# --------------------------------------------------------------------------- #
# Real electors, in memory: the hot path and the published table
# --------------------------------------------------------------------------- #


FAST: dict[str, Any] = {
    "frequent_interval": 0.02,
    "infrequent_interval": 0.05,
    "leader_timeout": 0.3,
}


@pytest.mark.asyncio
async def test_real_elector_binds_the_compiled_slot_check(ca: CertificateAuthority) -> None:
    cluster_id, server_id = ids()
    manager = Manager(ManagerConfig(cluster_id, "s1", server_id, "127.0.0.1:1"))
    try:
        await manager.start_cluster_election(ElectionConfig(MemoryStorage(), **FAST))
        await manager.start_shard_election(
            ElectionConfig(MemoryStorage(), ca_cert=ca.cert_pem, **FAST)
        )
        await asyncio.wait_for(manager.wait_for_cluster_election(), WAIT)
        cluster = manager.cluster_elector
        assert isinstance(cluster, fastelect.Elector)
        # Same cost class as Elector.is_leader: the very same compiled method.
        assert manager.is_cluster_leader == cluster.is_leader
        assert manager.is_cluster_leader.__self__ is cluster  # type: ignore[attr-defined]
        # The compiled method itself: no Python frame between the caller and C.
        assert manager.is_cluster_leader.__func__ is LeaseHolder.is_leader  # type: ignore[attr-defined]
        await eventually("cluster leadership", manager.is_cluster_leader)
        await eventually("shard leadership", manager.is_shard_leader)
        # Another process would see the same through the named table.
        with fastelect.attach(manager.table_name) as reader:
            assert reader.is_leader("cluster") and reader.is_leader("shard")
            assert set(reader.elections()) == {"cluster", "shard"}
            cluster_slot, shard_slot = reader.status("cluster"), reader.status("shard")
        assert cluster_slot is not None and cluster_slot["leader_id"] == f"s1-{server_id}"
        assert shard_slot is not None and shard_slot["leader_id"] == server_id
    finally:
        await manager.stop()
    assert manager.is_cluster_leader() is False and manager.is_shard_leader() is False
    assert not os.path.exists(shm_path(manager.table_name))


# --------------------------------------------------------------------------- #
# The health server
# --------------------------------------------------------------------------- #


async def start_health(manager: Manager, cert: TLSCertificate) -> int:
    """Start ``manager``'s health server on a free loopback port and return the port."""
    for _attempt in range(3):
        port = free_port()
        try:
            await manager.start_health_server(HealthServerConfig(f"127.0.0.1:{port}", cert))
        except HealthServerError:
            continue  # someone took the port in between: try another
        return port
    raise AssertionError("could not start the health server on a free port")


@pytest_asyncio.fixture
async def https(ca: CertificateAuthority) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTPS client that trusts ``ca`` only."""
    connector = aiohttp.TCPConnector(ssl=client_ssl_context(ca.cert_pem))
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=5)
    ) as session:
        yield session


async def status_of(session: aiohttp.ClientSession, port: int, path: str) -> int:
    async with session.get(f"https://127.0.0.1:{port}{path}") as response:
        await response.read()
        return response.status


@pytest.mark.asyncio
async def test_health_server_serves_both_paths_from_the_table(
    ca: CertificateAuthority, server_cert: TLSCertificate, https: aiohttp.ClientSession
) -> None:
    cluster_id, server_id = ids()
    port = free_port()
    manager = Manager(ManagerConfig(cluster_id, "s1", server_id, f"127.0.0.1:{port}"))
    try:
        await manager.start_health_server(HealthServerConfig(f"127.0.0.1:{port}", server_cert))
        assert manager.health_server is not None and manager.health_server.port == port
        with pytest.raises(LifecycleError, match="health server is already started"):
            await manager.start_health_server(HealthServerConfig("127.0.0.1:0", server_cert))
        # Neither election started yet: both 404.
        assert await status_of(https, port, CLUSTER_HEALTH_PATH) == 404
        assert await status_of(https, port, SHARD_HEALTH_PATH) == 404

        await manager.start_cluster_election(ElectionConfig(MemoryStorage(), **FAST))
        await eventually("cluster leadership", manager.is_cluster_leader)
        assert await status_of(https, port, CLUSTER_HEALTH_PATH) == 200
        assert await status_of(https, port, SHARD_HEALTH_PATH) == 404, "shard not started"

        await manager.start_shard_election(
            ElectionConfig(MemoryStorage(), ca_cert=ca.cert_pem, **FAST)
        )
        await eventually("shard leadership", manager.is_shard_leader)
        assert await status_of(https, port, SHARD_HEALTH_PATH) == 200
        async with https.get(f"https://127.0.0.1:{port}{SHARD_HEALTH_PATH}") as response:
            body = await response.json()
        assert body["leaderID"] == server_id
    finally:
        await manager.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await status_of(https, port, CLUSTER_HEALTH_PATH)


@pytest.mark.asyncio
async def test_health_server_port_taken(server_cert: TLSCertificate) -> None:
    cluster_id, _ = ids()
    first = Manager(ManagerConfig(cluster_id, "s1", "a"))
    second = Manager(ManagerConfig(cluster_id, "s1", "b"))
    try:
        port = await start_health(first, server_cert)
        with pytest.raises(HealthServerError):
            await second.start_health_server(HealthServerConfig(f"127.0.0.1:{port}", server_cert))
        assert second.health_server is None
        # A failed start may be retried elsewhere.
        await start_health(second, server_cert)
    finally:
        await first.stop()
        await second.stop()


# --------------------------------------------------------------------------- #
# End to end: three managers, one cluster, two shards, on moto S3
# --------------------------------------------------------------------------- #

# Polls every tens of milliseconds, so elections and the failover (a released
# record is taken within a poll) take well under a second.
E2E: dict[str, Any] = {
    "frequent_interval": 0.05,
    "infrequent_interval": 0.15,
    "leader_timeout": 1.5,
}
# The elector bounds each storage call by min(frequent_interval, 2 s) by
# default: 50 ms here, which moto on a busy 2-core CI box misses often enough
# to make leaders flap.  A production lease is seconds; give the calls time
# (a leader's write is still cut off at its lease deadline) and keep the
# lease well above the elector's 1 s retry back-off.
E2E_STORAGE_TIMEOUT = 1.0


def patient_elector(
    config: ElectorConfig,
    storage: Storage,
    logger: logging.Logger | None,
    *,
    table: LeadershipTable,
    election: str,
) -> fastelect.Elector:
    """An ElectorFactory: real Electors with the end-to-end storage timeout."""
    return fastelect.Elector(
        config.copy(storage_timeout=E2E_STORAGE_TIMEOUT),
        storage,
        logger,
        table=table,
        election=election,
    )


@dataclasses.dataclass
class Node:
    """One server of the end-to-end cluster."""

    name: str
    shard: str
    manager: Manager
    port: int
    cluster_storage: S3Storage
    shard_storage: S3Storage

    def counters(self, election: str) -> dict[str, int]:
        with fastelect.attach(self.manager.table_name) as reader:
            status = reader.status(election)
        assert status is not None, f"{self.name} has no {election} slot"
        return dict(status["counters"])

    def term(self, election: str) -> int:
        elector = (
            self.manager.cluster_elector if election == "cluster" else self.manager.shard_elector
        )
        assert isinstance(elector, fastelect.Elector)
        return elector.term


class Cluster:
    """Builds the nodes and tears everything down (managers, storages) at the end."""

    def __init__(self, endpoint: str, bucket: str, cert: TLSCertificate) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.cert = cert
        self.run = uuid.uuid4().hex[:8]
        self.nodes: dict[str, Node] = {}
        self.storages: list[S3Storage] = []

    def storage(self, prefix: str) -> S3Storage:
        storage = S3Storage(
            self.bucket,
            f"e2e-{self.run}/{prefix}",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            timeout=5.0,
        )
        self.storages.append(storage)
        return storage

    async def add(self, name: str, shard: str) -> Node:
        for _attempt in range(3):
            port = free_port()
            manager = Manager(
                ManagerConfig(f"cluster-{self.run}", shard, name, f"127.0.0.1:{port}"),
                elector_factory=patient_elector,
            )
            try:
                await manager.start_health_server(
                    HealthServerConfig(f"127.0.0.1:{port}", self.cert)
                )
            except HealthServerError:
                await manager.stop()
                continue  # the port was taken meanwhile: server_addr must match, so rebuild
            node = Node(
                name,
                shard,
                manager,
                port,
                # Every node its own client, on the shared prefixes: one cluster
                # lock for all, one lock per shard.
                self.storage("cluster"),
                self.storage(f"shard-{shard}"),
            )
            # Build the S3 clients now: aiobotocore's client setup blocks the event
            # loop for up to a second, which would stall the electors already running.
            await node.cluster_storage.check()
            await node.shard_storage.check()
            self.nodes[name] = node
            return node
        raise AssertionError(f"could not start a health server for {name}")

    async def close(self) -> None:
        errors = []
        for node in self.nodes.values():
            try:
                await node.manager.stop()
            except Exception as exc:
                errors.append(exc)
        for storage in self.storages:
            await storage.close()
        assert not errors, f"stopping the managers failed: {errors}"


def leaders(nodes: list[Node], election: str) -> list[str]:
    check = "is_cluster_leader" if election == "cluster" else "is_shard_leader"
    return [n.name for n in nodes if getattr(n.manager, check)()]


@pytest.mark.s3
@pytest.mark.asyncio
async def test_three_managers_two_shards_and_cluster_failover(
    moto_server: str,
    s3_bucket: str,
    ca: CertificateAuthority,
    server_cert: TLSCertificate,
    https: aiohttp.ClientSession,
) -> None:
    cluster = Cluster(moto_server, s3_bucket, server_cert)
    try:
        n1 = await cluster.add("n1", "a")
        n2 = await cluster.add("n2", "a")
        n3 = await cluster.add("n3", "b")
        nodes = [n1, n2, n3]

        def cluster_cfg(node: Node) -> ElectionConfig:
            return ElectionConfig(node.cluster_storage, peer_mode=True, ca_cert=ca.cert_pem, **E2E)

        def shard_cfg(node: Node) -> ElectionConfig:
            return ElectionConfig(node.shard_storage, ca_cert=ca.cert_pem, **E2E)

        # Start order decides the first leaders: n1 leads shard a, n2 the cluster,
        # so the cluster leader we fail over is a shard *follower*.
        await n1.manager.start_shard_election(shard_cfg(n1))
        await eventually("n1 to lead shard a", n1.manager.is_shard_leader)
        await n2.manager.start_cluster_election(cluster_cfg(n2))
        await eventually("n2 to lead the cluster", n2.manager.is_cluster_leader)
        await n2.manager.start_shard_election(shard_cfg(n2))
        await n3.manager.start_shard_election(shard_cfg(n3))
        for node in (n1, n3):
            await node.manager.start_cluster_election(cluster_cfg(node))
        for node in nodes:
            await asyncio.wait_for(node.manager.wait_for_cluster_election(), WAIT)
        await eventually("n3 to lead shard b", n3.manager.is_shard_leader)

        # Exactly one cluster leader and one leader per shard, every time we look.
        for _ in range(20):
            assert leaders(nodes, "cluster") == ["n2"]
            assert leaders([n1, n2], "shard") == ["n1"]
            assert leaders([n3], "shard") == ["n3"]
            await asyncio.sleep(0.02)

        # The shared health server answers for both elections of each node.
        expected = {
            ("n1", CLUSTER_HEALTH_PATH): 404,
            ("n2", CLUSTER_HEALTH_PATH): 200,
            ("n3", CLUSTER_HEALTH_PATH): 404,
            ("n1", SHARD_HEALTH_PATH): 200,
            ("n2", SHARD_HEALTH_PATH): 404,
            ("n3", SHARD_HEALTH_PATH): 200,
        }
        got = {
            (name, path): await status_of(https, cluster.nodes[name].port, path)
            for name, path in expected
        }
        assert got == expected

        # Stable followers check the leader through its health server, not S3:
        # peer checks succeed while their S3 reads stop.
        followers = [(n1, "cluster"), (n3, "cluster"), (n2, "shard")]

        def storage_of(node: Node, election: str) -> S3Storage:
            return node.cluster_storage if election == "cluster" else node.shard_storage

        await eventually(
            "followers to switch to peer checks",
            lambda: all(n.counters(e)["peer_checks"] >= 2 for n, e in followers),
        )
        before = {(n.name, e): (n.counters(e), storage_of(n, e).stats.gets) for n, e in followers}
        await asyncio.sleep(4 * E2E["infrequent_interval"])
        for node, election in followers:
            counters, gets = before[(node.name, election)]
            now = node.counters(election)
            assert now["peer_checks"] >= counters["peer_checks"] + 2, (
                f"{node.name} made no peer checks in its {election} election"
            )
            assert now["peer_failures"] == counters["peer_failures"], (
                f"{node.name}'s {election} peer checks failed"
            )
            assert storage_of(node, election).stats.gets == gets, (
                f"{node.name} read S3 in its {election} election though the leader was healthy"
            )

        # Fail over the cluster leader: stop n2 entirely.
        shard_terms = {n.name: n.term("shard") for n in (n1, n3)}
        cluster_term = n2.term("cluster")
        disturbed: list[str] = []

        async def watch_shards() -> None:
            # Shard leadership must hold at every instant of the cluster failover.
            while True:
                for node in (n1, n3):
                    if not node.manager.is_shard_leader():
                        disturbed.append(node.name)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_shards())
        try:
            started = time.monotonic()
            await n2.manager.stop()
            assert n2.manager.is_cluster_leader() is False
            await eventually("a new cluster leader", lambda: len(leaders([n1, n3], "cluster")) == 1)
            failover = time.monotonic() - started
            await asyncio.sleep(2 * E2E["infrequent_interval"])
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

        (new_leader,) = leaders([n1, n3], "cluster")
        assert cluster.nodes[new_leader].term("cluster") > cluster_term
        # A released record is taken within about one poll, not after a lease.
        assert failover < E2E["leader_timeout"], f"failover took {failover:.2f} s"
        assert not disturbed, f"shard leadership lapsed during the failover: {disturbed}"
        assert {n.name: n.term("shard") for n in (n1, n3)} == shard_terms
        assert leaders([n1, n3], "shard") == ["n1", "n3"]
        assert await status_of(https, cluster.nodes[new_leader].port, CLUSTER_HEALTH_PATH) == 200
    finally:
        await cluster.close()
    for node in cluster.nodes.values():
        assert not os.path.exists(shm_path(node.manager.table_name))


# --------------------------------------------------------------------------- #
# The documentation's example
# --------------------------------------------------------------------------- #


def test_the_documented_example_runs(tmp_path: Path) -> None:
    """docs/manager.md's complete example runs as printed and leaves nothing behind."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "manager.md").read_text()
    section = page.split("## A complete example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "docs/manager.md's complete example has no python block"
    script = tmp_path / "manager_example.py"
    script.write_text(code.group(1))
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, f"the example failed:\n{result.stdout}\n{result.stderr}"
    assert "elected:" in result.stdout and "cluster failover took" in result.stdout
    after = result.stdout.split("cluster failover took", 1)[1]
    assert after.count("cluster leader") == 1, result.stdout


# --------------------------------------------------------------------------- #
# Factory-built electors are visible to the health server (the mirror)
# --------------------------------------------------------------------------- #


def https_get(port: int, path: str, ca_pem: bytes) -> tuple[int, dict[str, Any]]:
    """One blocking HTTPS GET (usable while the event loop is stalled)."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, context=client_ssl_context(ca_pem), timeout=5
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_health_server_answers_for_a_factory_built_elector(
    ca: CertificateAuthority, server_cert: TLSCertificate, https: aiohttp.ClientSession
) -> None:
    cluster_id, server_id = ids()
    factory = FakeFactory()
    manager = Manager(
        ManagerConfig(cluster_id, "s1", server_id, "127.0.0.1:8443"), elector_factory=factory
    )
    try:
        port = await start_health(manager, server_cert)
        url = f"https://127.0.0.1:{port}{CLUSTER_HEALTH_PATH}"
        await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
        fake = factory.one("cluster")

        async def answer() -> tuple[int, dict[str, Any]]:
            async with https.get(url) as response:
                return response.status, await response.json()

        # Started, not leading: 404 "not leader" (it was "election not started").
        status, body = await answer()
        assert (status, body["reason"]) == (404, "not leader"), body

        fake.leader = True
        fake.term = 7
        assert manager.is_cluster_leader()
        started = time.monotonic()
        while (status := (await answer())[0]) != 200:
            assert time.monotonic() - started < WAIT, f"still {status} while the fake leads"
            await asyncio.sleep(0.005)
        status, body = await answer()
        assert body["leaderID"] == f"s1-{server_id}" and body["term"] == 7, body

        # Losing shows within a tick or two while the loop runs.
        fake.leader = False
        fake.leader_id = "s1-other"
        flipped = time.monotonic()
        while (status := (await answer())[0]) != 404:
            assert time.monotonic() - flipped < WAIT, "the endpoint kept saying leader"
            await asyncio.sleep(0.005)
        lag = time.monotonic() - flipped
        assert lag < 0.5, f"the endpoint said leader {lag:.3f} s after the fake stopped"
        with fastelect.attach(manager.table_name) as reader:
            st = reader.status("cluster")
        assert st is not None and st["leader_id"] == "s1-other", st

        # Leading again takes a term that only grows.
        fake.leader = True
        fake.term = 3
        await eventually("the mirror to lead again", lambda: https_ok(port, ca.cert_pem))
        assert https_get(port, CLUSTER_HEALTH_PATH, ca.cert_pem)[1]["term"] == 8
    finally:
        await manager.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await status_of(https, port, CLUSTER_HEALTH_PATH)


def https_ok(port: int, ca_pem: bytes) -> bool:
    return https_get(port, CLUSTER_HEALTH_PATH, ca_pem)[0] == 200


@pytest.mark.asyncio
async def test_a_stalled_mirror_stops_saying_leader_within_its_lease(
    ca: CertificateAuthority, server_cert: TLSCertificate
) -> None:
    """The mirror's lease (50 ms) bounds the endpoint even when the loop cannot run."""
    cluster_id, server_id = ids()
    factory = FakeFactory()
    manager = Manager(ManagerConfig(cluster_id, "s1", server_id), elector_factory=factory)
    try:
        port = await start_health(manager, server_cert)
        await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
        fake = factory.one("cluster")
        fake.leader = True
        await eventually(
            "the endpoint to say leader", lambda: https_ok(port, ca.cert_pem), every=0.005
        )
        answers: list[tuple[float, int]] = []

        def probe(flipped: float) -> None:
            # Ask from another thread while the loop (and with it the mirror) is frozen.
            until = flipped + 0.4
            while time.monotonic() < until:
                asked = time.monotonic() - flipped
                answers.append((asked, https_get(port, CLUSTER_HEALTH_PATH, ca.cert_pem)[0]))

        # Freeze the loop right after the fake stops leading: the mirror never sees it.
        fake.leader = False
        flipped = time.monotonic()
        prober = threading.Thread(target=probe, args=(flipped,))
        prober.start()
        time.sleep(0.5)  # the stall under test: this blocks the event loop
        prober.join()
        late = [(round(t, 3), s) for t, s in answers if t > 0.05 + 0.01 and s != 404]
        assert not late, f"leader answers after the mirror's 50 ms lease: {late}"
        assert any(t > 0.1 for t, _ in answers), f"the probe made no late request: {answers}"
    finally:
        await manager.stop()


@pytest.mark.asyncio
async def test_a_mirrored_elector_that_raises_reads_as_not_leader(
    ca: CertificateAuthority, server_cert: TLSCertificate, caplog: pytest.LogCaptureFixture
) -> None:
    cluster_id, server_id = ids()
    factory = FakeFactory()
    manager = Manager(ManagerConfig(cluster_id, "s1", server_id), elector_factory=factory)
    try:
        port = await start_health(manager, server_cert)
        await manager.start_cluster_election(ElectionConfig(MemoryStorage()))
        fake = factory.one("cluster")
        fake.leader = True
        await eventually("leader", lambda: https_ok(port, ca.cert_pem), every=0.005)

        def broken() -> bool:
            raise RuntimeError("boom")

        fake.is_leader = broken  # type: ignore[method-assign]
        await eventually(
            "not leader", lambda: not https_ok(port, ca.cert_pem), every=0.005, timeout=2
        )
        await asyncio.sleep(0.1)  # several ticks: still one log line per failure streak
        raised = [r for r in caplog.records if "is_leader() raised" in r.getMessage()]
        assert len(raised) == 1, [r.getMessage() for r in caplog.records]
    finally:
        await manager.stop()


@pytest.mark.asyncio
async def test_an_elector_that_publishes_itself_is_not_mirrored() -> None:
    cluster_id, server_id = ids()
    manager = Manager(ManagerConfig(cluster_id, "s1", server_id))
    try:
        await manager.start_cluster_election(ElectionConfig(MemoryStorage(), **FAST))
        await eventually("cluster leadership", manager.is_cluster_leader)
        # Elector claimed its slot itself; a mirror would be a second writer.
        assert manager._cluster is not None and manager._cluster.mirror is None
    finally:
        await manager.stop()


# --------------------------------------------------------------------------- #
# An s3lect-shaped storage: get and put_if_match only
# --------------------------------------------------------------------------- #


def test_election_config_takes_a_minimal_storage() -> None:
    store = MinimalStore()
    assert ElectionConfig(store).storage is store  # kept as given
    with pytest.raises(ConfigError, match="object lacks get and put_if_match") as info:
        ElectionConfig(object())  # type: ignore[arg-type]
    assert info.value.field == "storage"

    class OnlyGet:
        async def get(self, key: str) -> tuple[bytes, str]:
            raise ObjectNotFound(key)

    with pytest.raises(ConfigError, match="OnlyGet lacks put_if_match"):
        ElectionConfig(OnlyGet())  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_manager_runs_real_electors_on_minimal_storages(
    ca: CertificateAuthority, server_cert: TLSCertificate, https: aiohttp.ClientSession
) -> None:
    cluster_id, server_id = ids()
    manager = Manager(ManagerConfig(cluster_id, "s1", server_id, "127.0.0.1:1"))
    cluster_store, shard_store = MinimalStore(), MinimalStore()
    try:
        port = await start_health(manager, server_cert)
        await manager.start_cluster_election(ElectionConfig(cluster_store, **FAST))
        with pytest.raises(ConfigError, match="its own storage"):
            await manager.start_shard_election(
                ElectionConfig(cluster_store, ca_cert=ca.cert_pem, **FAST)
            )
        await manager.start_shard_election(ElectionConfig(shard_store, ca_cert=ca.cert_pem, **FAST))
        await eventually("cluster leadership", manager.is_cluster_leader)
        await eventually("shard leadership", manager.is_shard_leader)
        assert await status_of(https, port, CLUSTER_HEALTH_PATH) == 200
        assert await status_of(https, port, SHARD_HEALTH_PATH) == 200
        record = json.loads(cluster_store.objects["leader.json"][0])
        assert record["leaderID"] == f"s1-{server_id}"
    finally:
        await manager.stop()
    # Stopping released both records in the minimal stores.
    for store in (cluster_store, shard_store):
        record = json.loads(store.objects["leader.json"][0])
        assert record["lastUpdated"].startswith("0001-01-01"), record
