"""Client-process CPU per S3 request: fastelect's renew and poll vs raw aiobotocore.

Against real S3 servers on loopback (moto, and SeaweedFS: a keep-alive Go
server), each in its own process, so ``time.process_time()`` here counts the
client's CPU only: building, signing and sending the request, parsing the
answer, and our own work around it.  The baseline is the same request issued
with aiobotocore directly (``put_object`` with ``IfMatch`` / ``get_object``
and reading the body), on a client with S3Storage's own configuration, in
interleaved rounds.

"Ours" is S3Storage's default, the lean request path (issue 9 §3: at most
0.5 ms of client CPU per renew and per poll, reported as the absolute
limit); the same step through S3Storage(lean=False), i.e. aiobotocore's full
pipeline, is reported beside it, with the machine's load average.

Why it matters -- this bounds how many elections one process can carry.
Nearly all of an election's CPU is the per-request HTTP/S3 work (the core's
part is microseconds, see test_core_bench), so with c_put and c_get the CPU
of one renewal and one poll:

* a leader costs c_put per frequent_interval F (default 5 s): one core can
  keep about ``F / c_put`` leaderships renewed;
* a stable follower in S3 mode costs c_get per infrequent_interval I
  (default 30 s): about ``I / c_get`` per core; during transitions it polls
  every F, like a leader's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiobotocore.session import get_session

from benchkit import (
    S3_BUCKET,
    S3_REGION,
    Result,
    Steps,
    bare_record,
    cpu_ns_per_op,
    paired,
    record,
    rounds,
)
from fastelect import S3Storage

#: Requests per measured round.
N = rounds(full=100, gate=60)
ROUNDS = rounds(full=10, gate=7)
#: Our renew/poll may cost at most 1.25x the raw aiobotocore call.
TARGET = 0.8
#: Issue 9 §3: client CPU per renew and per poll, in ms (reported, never asserted).
LIMIT_MS = 0.5

_NS_PER_MS = 1_000_000


@dataclass
class S3Bench:
    #: Which server: "moto" or "seaweedfs".
    server: str
    #: S3Storage's default: the lean request path.
    storage: S3Storage
    #: S3Storage(lean=False): aiobotocore's full pipeline, for reference.
    plain: S3Storage
    #: A raw aiobotocore client with S3Storage's configuration.
    raw: Any
    #: A raw aiobotocore client with botocore's defaults, for reference.
    defaults: Any
    prefix: str


@pytest.fixture(params=["moto", "seaweedfs"])
def s3(loop: asyncio.AbstractEventLoop, request: pytest.FixtureRequest) -> Iterator[S3Bench]:
    server = request.param
    endpoint: str = request.getfixturevalue(f"{server}_endpoint")
    prefix = f"bench-{uuid.uuid4().hex}"
    storage = S3Storage(
        S3_BUCKET, prefix, endpoint_url=endpoint, region_name=S3_REGION, timeout=5.0
    )
    plain = S3Storage(
        S3_BUCKET, prefix, endpoint_url=endpoint, region_name=S3_REGION, timeout=5.0, lean=False
    )
    stack = contextlib.AsyncExitStack()
    session = get_session()

    async def open_clients() -> tuple[Any, Any]:
        # The baseline must pay for exactly the pipeline S3Storage configures
        # (retries off, checksums only when required, timeouts), so it reuses
        # S3Storage's own AioConfig rather than a copy that could drift.
        raw = await stack.enter_async_context(
            session.create_client(
                "s3", endpoint_url=endpoint, region_name=S3_REGION, config=storage._config
            )
        )
        defaults = await stack.enter_async_context(
            session.create_client("s3", endpoint_url=endpoint, region_name=S3_REGION)
        )
        return raw, defaults

    raw, defaults = loop.run_until_complete(open_clients())
    try:
        yield S3Bench(server, storage, plain, raw, defaults, prefix)
    finally:
        loop.run_until_complete(stack.aclose())
        loop.run_until_complete(storage.close())
        loop.run_until_complete(plain.close())


def _raw_put(client: Any, key: str, loop: asyncio.AbstractEventLoop) -> Any:
    """An ``await op(i)`` doing a conditional raw PutObject on ``key``, chaining etags."""
    etag = [loop.run_until_complete(client.put_object(Bucket=S3_BUCKET, Key=key, Body=b"{}"))]
    etag[0] = etag[0]["ETag"]

    async def put(i: int) -> None:
        response = await client.put_object(
            Bucket=S3_BUCKET, Key=key, Body=bare_record(i), IfMatch=etag[0]
        )
        etag[0] = response["ETag"]

    return put


def _raw_get(client: Any, key: str) -> Any:
    """An ``await op(i)`` doing a raw GetObject of ``key`` and reading the body."""

    async def get(_i: int) -> None:
        response = await client.get_object(Bucket=S3_BUCKET, Key=key)
        async with response["Body"] as stream:
            await stream.read()

    return get


def _per_core(interval_s: float, cpu_ns: float) -> str:
    return f"{interval_s / (cpu_ns / 1e9):,.0f}"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min) on {os.cpu_count()} cores"


def _profile(loop: asyncio.AbstractEventLoop, op: Any, n: int, top: int = 12) -> str:
    """cProfile's top entries (by own time) over ``n`` runs of ``op``: where the CPU goes."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        cpu_ns_per_op(loop, op, n)
    finally:
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _step_cpu(loop: asyncio.AbstractEventLoop, op: Any) -> float:
    """Median CPU ns per op over three rounds of N (for the reference figures)."""
    return statistics.median(cpu_ns_per_op(loop, op, N) for _ in range(3))


def test_s3_renew_cpu(benchmark: Any, loop: asyncio.AbstractEventLoop, s3: S3Bench) -> None:
    """A leader's renewal on S3 (conditional PUT): client CPU per renewal."""
    steps = Steps(s3.storage)
    loop.run_until_complete(steps.acquire())
    raw_put = _raw_put(s3.raw, f"{s3.prefix}/raw.json", loop)

    async def renew(_i: int) -> None:
        await steps.renew()

    ours, base, samples = paired(
        benchmark,
        lambda: cpu_ns_per_op(loop, renew, N),
        lambda: cpu_ns_per_op(loop, raw_put, N),
        rounds=ROUNDS,
    )
    assert steps.leader.is_leader(), "the leader lost its lease during the benchmark"
    profile = _profile(loop, renew, N) if ours / _NS_PER_MS > LIMIT_MS else ""
    steps.close()
    # For reference: the same renewal through S3Storage(lean=False), and the
    # same PutObject through botocore's default pipeline.
    plain_steps = Steps(s3.plain, key="bench/plain-leader.json")
    loop.run_until_complete(plain_steps.acquire())

    async def plain_renew(_i: int) -> None:
        await plain_steps.renew()

    plain = _step_cpu(loop, plain_renew)
    assert plain_steps.leader.is_leader(), "the plain leader lost its lease"
    plain_steps.close()
    default_put = _raw_put(s3.defaults, f"{s3.prefix}/defaults.json", loop)
    defaults = _step_cpu(loop, default_put)
    extra = {
        "lean_us": round(ours / 1000),
        "raw_aiobotocore_us": round(base / 1000),
        "plain_s3storage_us": round(plain / 1000),
        "botocore_defaults_us": round(defaults / 1000),
        "leaders_per_core_at_5s": round(5.0 / (ours / 1e9)),
        "load": _load(),
        "note": (
            f"[{s3.server}] {ours / 1000:.0f} µs CPU per lean renewal (lean=False: "
            f"{plain / 1000:.0f} µs; raw aiobotocore put_object {base / 1000:.0f} µs; "
            f"botocore defaults {defaults / 1000:.0f} µs): one core keeps "
            f"~{_per_core(5.0, ours)} leaderships renewed at F = 5 s; {_load()}"
        ),
    }
    if profile:
        extra["profile"] = profile
    record(
        benchmark,
        Result(
            f"S3 renew (PUT If-Match) [{s3.server}]",
            "ms CPU/op",
            ours / _NS_PER_MS,
            base / _NS_PER_MS,
            "raw aiobotocore put_object",
            target=TARGET,
            limit=LIMIT_MS,
            samples=samples,
            extra=extra,
        ),
    )


def test_s3_poll_cpu(benchmark: Any, loop: asyncio.AbstractEventLoop, s3: S3Bench) -> None:
    """A follower's poll on S3 (GET + parse + observe): client CPU per poll."""
    steps = Steps(s3.storage)
    loop.run_until_complete(steps.acquire())
    raw_get = _raw_get(s3.raw, f"{s3.prefix}/{steps.key}")

    async def poll(_i: int) -> None:
        await steps.poll()

    ours, base, samples = paired(
        benchmark,
        lambda: cpu_ns_per_op(loop, poll, N),
        lambda: cpu_ns_per_op(loop, raw_get, N),
        rounds=ROUNDS,
    )
    assert steps.follower.leader_id == "bench-leader"
    profile = _profile(loop, poll, N) if ours / _NS_PER_MS > LIMIT_MS else ""
    steps.close()
    # For reference: the same poll through S3Storage(lean=False).
    plain_steps = Steps(s3.plain, key="bench/plain-leader.json")
    loop.run_until_complete(plain_steps.acquire())

    async def plain_poll(_i: int) -> None:
        await plain_steps.poll()

    plain = _step_cpu(loop, plain_poll)
    plain_steps.close()
    extra = {
        "lean_us": round(ours / 1000),
        "raw_aiobotocore_us": round(base / 1000),
        "plain_s3storage_us": round(plain / 1000),
        "followers_per_core_at_30s": round(30.0 / (ours / 1e9)),
        "load": _load(),
        "note": (
            f"[{s3.server}] {ours / 1000:.0f} µs CPU per lean poll (lean=False: "
            f"{plain / 1000:.0f} µs; raw aiobotocore get_object {base / 1000:.0f} µs): one "
            f"core serves ~{_per_core(30.0, ours)} stable followers at I = 30 s, "
            f"~{_per_core(5.0, ours)} polling every F = 5 s; {_load()}"
        ),
    }
    if profile:
        extra["profile"] = profile
    record(
        benchmark,
        Result(
            f"S3 poll (GET) [{s3.server}]",
            "ms CPU/op",
            ours / _NS_PER_MS,
            base / _NS_PER_MS,
            "raw aiobotocore get_object",
            target=TARGET,
            limit=LIMIT_MS,
            samples=samples,
            extra=extra,
        ),
    )
