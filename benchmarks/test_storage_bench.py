"""Client-process CPU per S3 request: fastelect's renew and poll vs raw aiobotocore.

Against a real moto server on loopback, in its own process, so
``time.process_time()`` here counts the client's CPU only: building,
signing and sending the request, parsing the answer, and our own work around
it.  The baseline is the same request issued with aiobotocore directly
(``put_object`` with ``IfMatch`` / ``get_object`` and reading the body), on
a client with S3Storage's own configuration, in interleaved rounds.

Why it matters -- this bounds how many elections one process can carry.
Nearly all of an election's CPU is botocore's per-request pipeline (the
core's part is microseconds, see test_core_bench), so with c_put and c_get
the CPU of one renewal and one poll:

* a leader costs c_put per frequent_interval F (default 5 s): one core can
  keep about ``F / c_put`` leaderships renewed;
* a stable follower in S3 mode costs c_get per infrequent_interval I
  (default 30 s): about ``I / c_get`` per core; during transitions it polls
  every F, like a leader's cost.

Botocore's pipeline was measured at about 3 ms of CPU per PutObject on this
machine with its default configuration; S3Storage turns off retries and the
optional request/response checksums, and the report shows both figures.
"""

from __future__ import annotations

import asyncio
import contextlib
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
N = rounds(full=100, gate=40)
ROUNDS = rounds(full=10, gate=3)
#: Our renew/poll may cost at most 1.25x the raw aiobotocore call.
TARGET = 0.8

_NS_PER_MS = 1_000_000


@dataclass
class S3Bench:
    storage: S3Storage
    #: A raw aiobotocore client with S3Storage's configuration.
    raw: Any
    #: A raw aiobotocore client with botocore's defaults, for reference.
    defaults: Any
    prefix: str


@pytest.fixture
def s3(loop: asyncio.AbstractEventLoop, moto_endpoint: str) -> Iterator[S3Bench]:
    prefix = f"bench-{uuid.uuid4().hex}"
    storage = S3Storage(
        S3_BUCKET, prefix, endpoint_url=moto_endpoint, region_name=S3_REGION, timeout=5.0
    )
    stack = contextlib.AsyncExitStack()
    session = get_session()

    async def open_clients() -> tuple[Any, Any]:
        # The baseline must pay for exactly the pipeline S3Storage configures
        # (retries off, checksums only when required, timeouts), so it reuses
        # S3Storage's own AioConfig rather than a copy that could drift.
        raw = await stack.enter_async_context(
            session.create_client(
                "s3", endpoint_url=moto_endpoint, region_name=S3_REGION, config=storage._config
            )
        )
        defaults = await stack.enter_async_context(
            session.create_client("s3", endpoint_url=moto_endpoint, region_name=S3_REGION)
        )
        return raw, defaults

    raw, defaults = loop.run_until_complete(open_clients())
    try:
        yield S3Bench(storage, raw, defaults, prefix)
    finally:
        loop.run_until_complete(stack.aclose())
        loop.run_until_complete(storage.close())


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
    steps.close()
    # For reference: the same PutObject through botocore's default pipeline.
    default_put = _raw_put(s3.defaults, f"{s3.prefix}/defaults.json", loop)
    defaults = statistics.median(cpu_ns_per_op(loop, default_put, N) for _ in range(3))
    record(
        benchmark,
        Result(
            "S3 renew (PUT If-Match)",
            "ms CPU/op",
            ours / _NS_PER_MS,
            base / _NS_PER_MS,
            "raw aiobotocore put_object",
            target=TARGET,
            samples=samples,
            extra={
                "botocore_defaults_ms": round(defaults / _NS_PER_MS, 3),
                "leaders_per_core_at_5s": round(5.0 / (ours / 1e9)),
                "note": (
                    f"{ours / _NS_PER_MS:.2f} ms CPU per renewal (botocore with its default "
                    f"config: {defaults / _NS_PER_MS:.2f} ms; ~3 ms measured earlier): one core "
                    f"keeps ~{_per_core(5.0, ours)} leaderships renewed at F = 5 s"
                ),
            },
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
    steps.close()
    record(
        benchmark,
        Result(
            "S3 poll (GET)",
            "ms CPU/op",
            ours / _NS_PER_MS,
            base / _NS_PER_MS,
            "raw aiobotocore get_object",
            target=TARGET,
            samples=samples,
            extra={
                "followers_per_core_at_30s": round(30.0 / (ours / 1e9)),
                "note": (
                    f"{ours / _NS_PER_MS:.2f} ms CPU per poll: one core serves "
                    f"~{_per_core(30.0, ours)} stable followers at I = 30 s, "
                    f"~{_per_core(5.0, ours)} polling every F = 5 s"
                ),
            },
        ),
    )
