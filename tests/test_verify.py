"""``storage.verify()``: the probe that proves a store enforces conditional writes.

Every backend (memory, file, moto; whatever ``storage_factory`` adds) must be
found fit. A real S3 server behind a proxy that drops the condition headers
must be found unfit, naming the checks that failed. Fakes are used only for
the probe's own logic (stale reads, repeating etags, a failing delete).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from elector_helpers import PassThroughStorage
from fastelect.errors import (
    ConfigError,
    ObjectNotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)
from fastelect.storage import (
    FileStorage,
    MemoryStorage,
    S3Storage,
    Storage,
    VerifyReport,
    verify_storage,
)
from fastelect.storage.verify import CHECK_NAMES, PROBE_NAME, SupportsUnconditionalPut
from helpers import S3_BUCKET, MotoAuth, boto3_client, free_port, make_s3_storage
from verify_helpers import S3Proxy

pytestmark = pytest.mark.asyncio


def outcome(report: VerifyReport) -> dict[str, bool | None]:
    return {check.name: check.passed for check in report.checks}


def outcome_detail(report: VerifyReport, name: str) -> str:
    return next(check.detail for check in report.checks if check.name == name)


def assert_fit(report: VerifyReport) -> None:
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert report.verdict == "fit" and report.fit, report
    assert all(c.passed is True for c in report.checks), report
    assert report.error is None and report.left_behind == (), report
    assert report.cleanup.startswith("deleted "), report.cleanup


# -- every backend ------------------------------------------------------------------


async def test_every_backend_is_fit_and_cleans_up(storage: Storage) -> None:
    report = await storage.verify()  # type: ignore[attr-defined]
    assert_fit(report)
    assert report.key.startswith(PROBE_NAME) and report.probe == storage.describe(report.key)
    # The probe really talked to the store: create, create again, replace,
    # stale replace; a read after each successful write and one after the delete.
    stats = storage.stats  # type: ignore[attr-defined]
    # Stores that can write unconditionally (S3) are also asked for their guard.
    guard = 1 if isinstance(storage, SupportsUnconditionalPut) else 0
    assert (stats.puts, stats.gets) == (4 + guard, 3)
    assert (report.guard_enforced is None) == (guard == 0), report
    with pytest.raises(ObjectNotFound):
        await storage.get(report.key)
    if isinstance(storage, FileStorage):
        # Neither the object nor its lock file is left in the directory.
        assert os.listdir(storage.directory) == []
    if isinstance(storage, S3Storage):
        client = boto3_client("s3", storage._endpoint_url or "")
        try:
            listed = client.list_objects_v2(Bucket=storage.bucket, Prefix=storage.prefix)
        finally:
            client.close()
        assert listed.get("KeyCount", 0) == 0, listed


async def test_the_probe_writes_under_the_prefix(storage: Storage) -> None:
    report = await verify_storage(storage, prefix="/locks/jobs/")
    assert_fit(report)
    assert re.fullmatch(rf"locks/jobs/{re.escape(PROBE_NAME)}[0-9a-f]{{16}}", report.key)


async def test_two_probes_at_once_do_not_disturb_each_other(storage: Storage) -> None:
    first, second = await asyncio.gather(verify_storage(storage), verify_storage(storage))
    assert_fit(first)
    assert_fit(second)
    assert first.key != second.key


async def test_clock_offset_is_measured_on_s3_only(storage: Storage) -> None:
    report = await verify_storage(storage)
    if isinstance(storage, S3Storage):
        # moto runs on this host: the same clock, to within the Date header's 1 s.
        assert report.clock_offset is not None and report.clock_uncertainty is not None
        assert 0.5 <= report.clock_uncertainty < 1.0
        assert abs(report.clock_offset) <= report.clock_uncertainty + 0.05, report
        assert "Date header" in report.clock_detail
    else:
        assert report.clock_offset is None and report.clock_uncertainty is None
        assert report.clock_detail.startswith("not applicable")


@pytest.mark.parametrize("prefix", ["a/../b", "./x", "a//b", "bad\0prefix"])
async def test_a_bad_prefix_is_a_config_error(prefix: str) -> None:
    storage = MemoryStorage()
    with pytest.raises(ConfigError, match="prefix"):
        await verify_storage(storage, prefix=prefix)
    assert storage.stats.puts == 0


# -- real S3 servers that break the rules ----------------------------------------------


@pytest.mark.s3
@pytest.mark.parametrize(
    ("strip", "failed"),
    [
        (("if-match", "if-none-match"), {"create-refuses-existing", "refuse-stale"}),
        (("if-none-match",), {"create-refuses-existing"}),
        (("if-match",), {"refuse-stale"}),
    ],
    ids=["ignores-both", "ignores-if-none-match", "ignores-if-match"],
)
async def test_a_store_that_ignores_conditions_is_unfit(
    moto_server: str, s3_bucket: str, strip: tuple[str, ...], failed: set[str]
) -> None:
    with S3Proxy(moto_server, strip=strip) as proxy:
        storage = make_s3_storage(proxy.url, s3_bucket)
        try:
            report = await storage.verify()
        finally:
            await storage.close()
    # The proxy really dropped the headers the store was sent.
    assert set(proxy.stripped) == set(strip), proxy.stripped
    assert report.verdict == "unfit" and not report.fit, report
    assert {c.name for c in report.failed} == failed, report
    assert all(passed is True for name, passed in outcome(report).items() if name not in failed)
    for check in report.failed:
        assert "succeeded" in check.detail and "ignores" in check.detail, check.detail
    # Cleanup still works through the same unfit store.
    assert report.left_behind == () and report.cleanup.startswith("deleted "), report


@pytest.mark.s3
async def test_the_clock_offset_follows_the_stores_date_header(
    moto_server: str, s3_bucket: str
) -> None:
    with S3Proxy(moto_server, strip=(), date_shift=-120) as proxy:
        storage = make_s3_storage(proxy.url, s3_bucket)
        try:
            report = await storage.verify()
        finally:
            await storage.close()
    assert_fit(report)
    assert report.clock_offset is not None and report.clock_uncertainty is not None
    assert abs(report.clock_offset - -120) <= report.clock_uncertainty + 0.05, report
    assert re.search(r"is 1[12]\d\.\d\d s behind this host", report.clock_detail), report


@pytest.mark.s3
async def test_a_missing_bucket_cannot_be_checked(moto_server: str) -> None:
    storage = make_s3_storage(moto_server, "no-such-bucket-for-check")
    try:
        report = await storage.verify()
    finally:
        await storage.close()
    assert report.verdict == "unknown" and not report.fit
    assert report.error is not None and "does not exist" in report.error
    assert all(c.passed is None for c in report.checks)
    assert report.left_behind == () and "nothing to delete" in report.cleanup


@pytest.mark.s3
async def test_refused_credentials_cannot_be_checked(moto_auth_server: MotoAuth) -> None:
    key_id, secret = moto_auth_server.denied
    storage = make_s3_storage(
        moto_auth_server.url,
        moto_auth_server.bucket,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    try:
        report = await storage.verify()
    finally:
        await storage.close()
    assert report.verdict == "unknown"
    assert report.error is not None and "credentials" in report.error


async def test_an_unreachable_endpoint_cannot_be_checked() -> None:
    storage = make_s3_storage(f"http://127.0.0.1:{free_port()}", S3_BUCKET, timeout=1.0)
    try:
        report = await storage.verify()
    finally:
        await storage.close()
    assert report.verdict == "unknown" and report.error is not None
    assert "127.0.0.1" in report.error


# -- the probe's logic, on fakes ------------------------------------------------------------


class StaleReads(MemoryStorage):
    """Reads return the first version written: no read-after-write."""

    def __init__(self) -> None:
        super().__init__()
        self.first: dict[str, tuple[bytes, str]] = {}

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        new = await super().put_if_match(key, body, etag)
        self.first.setdefault(key, (bytes(body), new))
        return new

    async def get(self, key: str) -> tuple[bytes, str]:
        await super().get(key)  # raises ObjectNotFound once deleted
        return self.first[key]


class ConstantEtag(MemoryStorage):
    """Enforces conditions, but every write gets the same etag (ABA waiting to happen)."""

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        self.stats.puts += 1
        current = self._objects.get(key)
        if (etag == "") != (current is None) or (current is not None and current[1] != etag):
            raise PreconditionFailed(f"{key}: condition {etag!r} failed")
        self._objects[key] = (bytes(body), '"same"')
        return '"same"'


class DeleteDenied(MemoryStorage):
    async def delete(self, key: str) -> None:
        raise StorageAuthError("AccessDenied: s3:DeleteObject not allowed")


class NoDelete(PassThroughStorage):
    """A third-party storage with only the protocol's methods."""

    def __init__(self) -> None:
        super().__init__(MemoryStorage())

    def describe(self, key: str) -> str:
        return f"nodelete://{key}"


class FailsAfter(MemoryStorage):
    """Becomes unreachable after ``n`` writes."""

    def __init__(self, n: int, error: Callable[[], StorageError]) -> None:
        super().__init__()
        self.n = n
        self.error = error

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        if self.stats.puts >= self.n:
            self.stats.puts += 1
            raise self.error()
        return await super().put_if_match(key, body, etag)


class RefusesEverything(MemoryStorage):
    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        raise PreconditionFailed("412 for everything")


async def test_stale_reads_fail_read_after_write() -> None:
    report = await verify_storage(StaleReads())
    assert report.verdict == "unfit"
    assert {c.name for c in report.failed} == {"read-after-write"}
    assert "after the replace write" in report.failed[0].detail


async def test_repeating_etags_are_unfit() -> None:
    report = await verify_storage(ConstantEtag())
    assert report.verdict == "unfit"
    # The "stale" etag equals the current one, so the stale write lands too.
    assert {c.name for c in report.failed} == {"replace-current", "refuse-stale", "distinct-etags"}
    assert "did not change" in outcome_detail(report, "replace-current")
    assert "repeating etags" in outcome_detail(report, "distinct-etags")


async def test_a_store_that_refuses_every_create_is_unfit() -> None:
    report = await verify_storage(RefusesEverything())
    assert report.verdict == "unfit"
    assert outcome(report)["create"] is False
    assert all(c.passed is None for c in report.checks[1:])


async def test_delete_not_permitted_is_reported_with_what_was_left() -> None:
    storage = DeleteDenied()
    report = await verify_storage(storage)
    assert report.verdict == "fit"  # electors never delete: still fit
    assert report.left_behind == (storage.describe(report.key),)
    assert "delete not permitted" in report.cleanup and report.probe in report.cleanup
    await storage.get(report.key)  # really still there


async def test_a_storage_without_delete_reports_what_it_left() -> None:
    storage = NoDelete()
    report = await verify_storage(storage)  # type: ignore[arg-type]
    assert report.verdict == "fit"
    assert report.left_behind == ("nodelete://" + report.key,)
    assert "no delete()" in report.cleanup


@pytest.mark.parametrize(
    "error",
    [
        lambda: StorageUnavailable("connection reset"),
        lambda: StorageAuthError("AccessDenied"),
    ],
    ids=["unavailable", "denied"],
)
async def test_a_storage_error_midway_stops_the_probe_and_still_cleans_up(
    error: Callable[[], StorageError],
) -> None:
    storage = FailsAfter(2, error)
    report = await verify_storage(storage)
    assert report.verdict == "unknown" and report.error == str(error())
    got = outcome(report)
    assert got["create"] is True and got["create-refuses-existing"] is True
    assert got["replace-current"] is None and got["distinct-etags"] is None
    assert report.left_behind == () and report.cleanup.startswith("deleted ")
    with pytest.raises(ObjectNotFound):
        await storage.get(report.key)


async def test_as_dict_is_json_ready() -> None:
    report = await verify_storage(MemoryStorage())
    document: dict[str, Any] = orjson.loads(orjson.dumps(report.as_dict()))
    assert document["verdict"] == "fit" and document["fit"] is True
    assert [c["name"] for c in document["checks"]] == list(CHECK_NAMES)
    assert document["clock_offset_seconds"] is None and document["left_behind"] == []
