"""fastelect.prometheus: the collector and the health server's /metrics show the same thing.

Both exporters render :func:`fastelect.metrics.families`; these tests check it
from the outside, the way a user meets them: real electors publishing into a
named table, the collector rendered by the real ``prometheus_client``
(``generate_latest``), and the real granian HTTPS health server, both parsed
with ``prometheus_client``'s own text parser.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import fastelect
from fastelect import Elector, ElectorConfig, LeadershipTable, MemoryStorage
from fastelect._core import monotonic_ns
from fastelect.errors import ConfigError
from fastelect.health import HealthServer
from fastelect.health.app import render_metrics
from fastelect.prometheus import LeadershipCollector
from fastelect.tls import CertificateAuthority, TLSCertificate
from health_helpers import client_context, fetch, lead, serving, table_name, wait_until

WAIT = 10.0  # seconds: bound on every wait for a change to show
ROUTES = {"/health/leadership/cluster": "cluster"}
# Gauges computed from "now" at read time: the two exporters read at two
# instants, so these move between the reads even when the table did not.
MOVING = {
    "fastelect_lease_remaining_seconds": -1,  # shrinks while a lease runs
    "fastelect_last_cycle_age_seconds": +1,  # grows until the next heartbeat
}

# name -> (type, help, {(sample name, labels): value})
Parsed = dict[str, tuple[str, str, dict[tuple[str, frozenset[tuple[str, str]]], float]]]


def parse(text: str) -> Parsed:
    """An exposition as prometheus_client's parser reads it."""
    out: Parsed = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in out, f"family {family.name} exposed twice"
        samples = {(s.name, frozenset(s.labels.items())): s.value for s in family.samples}
        assert len(samples) == len(family.samples), f"duplicate series in {family.name}"
        out[family.name] = (family.type, family.documentation, samples)
    return out


def scrape(collector: LeadershipCollector) -> str:
    """The collector rendered by prometheus_client, in a registry of its own."""
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def value(parsed: Parsed, family: str, **labels: str) -> float:
    """One sample's value (a counter family's sample is named ``<family>_total``)."""
    kind, _, samples = parsed[family]
    sample = f"{family}_total" if kind == "counter" else family
    return samples[(sample, frozenset(labels.items()))]


def assert_same(collected: Parsed, served: Parsed, elapsed_s: float = 0.0) -> None:
    """Same families, help, types and series; same values but for MOVING within ``elapsed_s``.

    ``collected`` was read first, ``served`` at most ``elapsed_s`` later.
    """
    assert collected.keys() == served.keys(), collected.keys() ^ served.keys()
    for name, (kind, doc, samples) in collected.items():
        s_kind, s_doc, s_samples = served[name]
        assert (kind, doc) == (s_kind, s_doc), name
        assert samples.keys() == s_samples.keys(), (name, samples.keys() ^ s_samples.keys())
        for key, first in samples.items():
            second = s_samples[key]
            direction = MOVING.get(name)
            if direction is None:
                assert first == second, f"{key}: collector {first}, health server {second}"
            else:
                moved = (second - first) * direction
                # The values are ns / 1e9, printed exactly by both; 1 µs of slack for rounding.
                assert -1e-6 <= moved <= elapsed_s + 1e-6, (key, first, second, elapsed_s)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture(scope="module")
def cert(ca: CertificateAuthority) -> TLSCertificate:
    return ca.issue(common_name="prometheus-test", ip_addresses=["127.0.0.1"])


@pytest_asyncio.fixture
async def https(ca: CertificateAuthority) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_context(ca.cert_pem))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def served(https: aiohttp.ClientSession, server: HealthServer) -> Parsed:
    reply = await fetch(https, f"https://127.0.0.1:{server.port}/metrics")
    assert reply.status == 200, reply
    return parse(reply.body.decode())


def config(lock: str, server_id: str) -> ElectorConfig:
    # Renewals every second: few writes land between the two reads, and the
    # test retries a pair of reads that a write fell between.
    return ElectorConfig(
        lock, server_id, frequent_interval=1.0, infrequent_interval=2.0, leader_timeout=5.0
    )


# --------------------------------------------------------------------------- #
# Both exporters, one table
# --------------------------------------------------------------------------- #


@pytest.mark.asyncio
async def test_collector_and_health_server_expose_the_same_families_and_values(
    cert: TLSCertificate, https: aiohttp.ClientSession
) -> None:
    """Real electors publish; the collector and /metrics over HTTPS agree on every series."""
    name = table_name("p")
    storage = MemoryStorage()
    table = LeadershipTable(name)
    ours_cluster = Elector(config("cluster.json", "n1"), storage, table=table, election="cluster")
    other_shard = Elector(config("shard.json", "n2"), storage, election="shard")
    ours_shard = Elector(config("shard.json", "n1"), storage, table=table, election="shard")
    electors = [ours_cluster, other_shard, ours_shard]
    collector = LeadershipCollector(name)
    try:
        await ours_cluster.start()
        await other_shard.start()
        await asyncio.wait_for(ours_cluster.wait_for_leadership(), WAIT)
        await asyncio.wait_for(other_shard.wait_for_leadership(), WAIT)
        await ours_shard.start()  # a follower of n2's shard leadership
        reader = table.reader()
        await wait_until(
            lambda: (reader.status("shard") or {}).get("leader_id") == "n2",
            WAIT,
            "our shard elector never observed n2's leadership",
        )
        async with serving(cert, name, ROUTES) as server:
            for _ in range(50):
                # A pair of reads counts only if no slot was written between them
                # (a renewal, a poll, a heartbeat change the seq word).
                before = [reader.seq(e) for e in ("cluster", "shard")]
                t0 = monotonic_ns()
                collected = parse(scrape(collector))
                from_server = await served(https, server)
                elapsed_s = (monotonic_ns() - t0) / 1e9
                if [reader.seq(e) for e in ("cluster", "shard")] == before and before[0] % 2 == 0:
                    break
            else:
                pytest.fail("every pair of reads had a table write between them")
        assert_same(collected, from_server, elapsed_s)

        # What both show is what the electors did.
        assert value(collected, "fastelect_build_info", version=fastelect.__version__) == 1
        assert value(collected, "fastelect_table_attached") == 1
        assert value(collected, "fastelect_is_leader", election="cluster") == 1
        assert value(collected, "fastelect_is_leader", election="shard") == 0
        assert value(collected, "fastelect_role", election="shard", role="follower") == 1
        assert value(collected, "fastelect_term", election="shard") == 1  # n2's, observed
        assert 0 < value(collected, "fastelect_lease_remaining_seconds", election="cluster") <= 5
        assert value(collected, "fastelect_lease_remaining_seconds", election="shard") == 0
        assert value(collected, "fastelect_watchdog_seconds", election="cluster") > 0
        assert value(collected, "fastelect_acquisitions", election="cluster") == 1
        assert collected["fastelect_reads"][0] == "counter"
        assert value(collected, "fastelect_reads", election="shard") >= 1
    finally:
        for elector in electors:
            await elector.stop()
        collector.close()
        table.close()
        await storage.close()


OWNER = """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from fastelect import LeadershipTable
    from health_helpers import lead
    table = LeadershipTable(sys.argv[1])
    lead(table.slot("cluster", "child"), "child")
    print("leading", flush=True)
    time.sleep(60)
"""


@pytest.mark.asyncio
async def test_missing_orphaned_and_recreated_tables_look_the_same_to_both(
    cert: TLSCertificate, https: aiohttp.ClientSession
) -> None:
    """No table, a SIGKILLed owner, a new owner, a closed table: both exporters say the same."""
    name = table_name("p")
    collector = LeadershipCollector(name)

    async def both_agree(server: HealthServer, attached: int) -> Parsed:
        # The health worker re-checks its table's owner every 0.25 s: wait for it.
        deadline = time.monotonic() + WAIT
        while value(await served(https, server), "fastelect_table_attached") != attached:
            assert time.monotonic() < deadline, f"/metrics never showed table_attached {attached}"
            await asyncio.sleep(0.02)
        t0 = monotonic_ns()
        collected = parse(scrape(collector))
        from_server = await served(https, server)
        assert_same(collected, from_server, (monotonic_ns() - t0) / 1e9)
        assert value(collected, "fastelect_table_attached") == attached
        return collected

    owner: subprocess.Popen[str] | None = None
    try:
        async with serving(cert, name, ROUTES) as server:
            missing = await both_agree(server, 0)
            per_election = {k: v for k, v in missing.items() if k.startswith("fastelect_")}
            assert per_election.pop("fastelect_build_info")[2]
            assert per_election.pop("fastelect_table_attached")[2]
            assert all(not samples for _, _, samples in per_election.values()), per_election

            owner = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(OWNER), name, os.path.dirname(__file__)],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert owner.stdout is not None
            assert await asyncio.to_thread(owner.stdout.readline) == "leading\n"
            live = await both_agree(server, 1)
            assert value(live, "fastelect_is_leader", election="cluster") == 1

            owner.send_signal(signal.SIGKILL)  # the owner dies; its segment stays behind
            await asyncio.to_thread(owner.wait, WAIT)
            orphaned = await both_agree(server, 0)
            assert not orphaned["fastelect_is_leader"][2], "an orphaned table was still read"

            # A restarted owner makes a new table of the same name: both map it.
            weird = 'we"ird\\name\n'  # label escaping, both ways
            table = LeadershipTable(name)
            try:
                lead(table.slot(weird, "n1"), "n1")
                again = await both_agree(server, 1)
                assert value(again, "fastelect_is_leader", election=weird) == 1
                assert ("fastelect_is_leader", frozenset({("election", "cluster")})) not in again[
                    "fastelect_is_leader"
                ][2], "the dead owner's election is still shown"
            finally:
                table.close()
            await both_agree(server, 0)  # closed by its owner
    finally:
        if owner is not None:
            if owner.poll() is None:
                owner.kill()
            owner.wait(WAIT)
            if owner.stdout is not None:
                owner.stdout.close()
        collector.close()
        # The killed owner's segment, if the new table above did not replace it.
        LeadershipTable(name).close()


# --------------------------------------------------------------------------- #
# The collector on its own
# --------------------------------------------------------------------------- #


@pytest.fixture
def table() -> Iterator[LeadershipTable]:
    t = LeadershipTable(table_name("p"))
    try:
        yield t
    finally:
        t.close()


def test_build_info_carries_the_package_version(table: LeadershipTable) -> None:
    assert table.name is not None
    collected = parse(scrape(LeadershipCollector(table.name)))
    info = collected["fastelect_build_info"]
    assert info[0] == "gauge"
    assert info[2] == {("fastelect_build_info", frozenset({("version", fastelect.__version__)})): 1}
    for reader in (table.reader(), None):
        text = render_metrics(reader, monotonic_ns()).decode()
        assert f'\nfastelect_build_info{{version="{fastelect.__version__}"}} 1\n' in text
        assert text.startswith("# HELP fastelect_build_info ")


def test_the_collector_describes_its_families_and_a_registry_refuses_it_twice(
    table: LeadershipTable,
) -> None:
    assert table.name is not None
    collector = LeadershipCollector(table.name)
    described = {m.name for m in collector.describe()}
    collected = {m.name for m in collector.collect()}
    assert described == collected and "fastelect_build_info" in described
    assert all(not m.samples for m in collector.describe())
    registry = CollectorRegistry()
    registry.register(collector)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(LeadershipCollector(table.name))


def test_the_collector_follows_a_renewal_at_the_next_scrape(table: LeadershipTable) -> None:
    """Each scrape reads the table at that instant (nothing cached between scrapes)."""
    assert table.name is not None
    collector = LeadershipCollector(table.name)
    slot = table.slot("cluster", "n1")
    first = parse(scrape(collector))
    assert value(first, "fastelect_is_leader", election="cluster") == 0
    lead(slot, "n1")
    second = parse(scrape(collector))
    assert value(second, "fastelect_is_leader", election="cluster") == 1
    assert value(second, "fastelect_term", election="cluster") == 1


def test_scrapes_from_many_threads_while_the_table_is_replaced() -> None:
    """prometheus_client's HTTP server scrapes from a thread per request: none may fail."""
    name = table_name("p")
    collector = LeadershipCollector(name)
    errors: list[BaseException] = []
    scrapes = [0] * 4
    done = threading.Event()

    def scrape_until_done(index: int) -> None:
        try:
            while not done.is_set():
                attached = next(m for m in collector.collect() if m.name.endswith("attached"))
                assert attached.samples[0].value in (0, 1)
                scrapes[index] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=scrape_until_done, args=(i,)) for i in range(4)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the races show within fewer rounds
    for thread in threads:
        thread.start()
    try:
        # Each new table replaces the last: every scraper's mapping goes stale under it.
        for _ in range(100):
            with LeadershipTable(name) as table:
                lead(table.slot("cluster", "n1"), "n1")
                time.sleep(0.001)
    finally:
        done.set()
        for thread in threads:
            thread.join(WAIT)
        sys.setswitchinterval(switch)
        collector.close()
    assert not errors, errors
    assert min(scrapes) > 0, scrapes


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 25, 7])
def test_a_bad_table_name_is_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError, match="table_name"):
        LeadershipCollector(bad)


# --------------------------------------------------------------------------- #
# Imports
# --------------------------------------------------------------------------- #


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_fastelect_and_the_health_worker_never_import_prometheus_client() -> None:
    out = run(
        """
        import sys
        from fastelect import *
        import fastelect.metrics, fastelect.health.app
        print(sorted(m for m in sys.modules if m.startswith("prometheus_client")))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_without_prometheus_client_the_import_error_names_the_extra() -> None:
    out = run(
        """
        import sys
        sys.modules["prometheus_client"] = None  # as if it were not installed
        try:
            import fastelect.prometheus
        except ImportError as exc:
            print(exc.name)
            print(exc)
        else:
            raise SystemExit("imported without prometheus_client")
        """
    )
    assert out.returncode == 0, out.stderr
    name, message = out.stdout.splitlines()
    assert name == "prometheus_client"
    assert "pip install 'fastelect[prometheus]'" in message
