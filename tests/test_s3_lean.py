"""The lean S3 request path against the plain aiobotocore path: same requests, same results.

Every scenario runs once with ``lean=True`` and once with ``lean=False`` and
the outcomes (result or exception type, and the etags) must be equal *and*
as expected, on real servers (moto and SeaweedFS) for what they answer on
demand, and on a loopback fake for what they do not (304, 409, 5xx, resets,
timeouts). A loopback tap records the requests both paths send.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from fastelect.storage import S3Storage
from fastelect.storage._s3_lean import parse_error_body
from fastelect.storage.base import (
    BucketNotFound,
    ObjectNotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)
from helpers import S3_REGION, S3Auth
from lean_helpers import Captured, Fake, S3Tap, header_subset

#: Keys whose encoding differs between naive and correct URL quoting.
KEYS = ("plain.json", "a dir/sub dir/lock é ☃.json", "x+y=z&a;b,c@d!$'()*~.json")

Outcome = tuple[str, str | None]


async def outcome(call: Awaitable[Any]) -> Outcome:
    """("ok", etag-or-body) or (exception type name, None)."""
    try:
        result = await call
    except StorageError as exc:
        return type(exc).__name__, None
    if isinstance(result, tuple):
        body, etag = result
        return "ok", f"{body!r} {etag}"
    return "ok", str(result)


def both(endpoint: str, bucket: str, prefix: str, **kwargs: Any) -> tuple[S3Storage, S3Storage]:
    """A lean and a plain S3Storage on the same bucket and prefix."""
    kwargs.setdefault("region_name", S3_REGION)
    kwargs.setdefault("timeout", 5.0)
    return (
        S3Storage(bucket, prefix, endpoint_url=endpoint, lean=True, **kwargs),
        S3Storage(bucket, prefix, endpoint_url=endpoint, lean=False, **kwargs),
    )


@pytest_asyncio.fixture
async def tapped(s3_server: tuple[str, str]) -> AsyncIterator[tuple[S3Tap, str]]:
    """A tap in front of each real server in turn (moto, SeaweedFS), and the bucket."""
    endpoint, bucket = s3_server
    with S3Tap(endpoint) as tap:
        yield tap, bucket


# -- real servers --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_lean_is_on_by_default_and_selectable(s3_server: tuple[str, str]) -> None:
    endpoint, bucket = s3_server
    lean, plain = both(endpoint, bucket, f"sel-{uuid.uuid4().hex}")
    try:
        await lean.put_if_match("k", b"{}", "")
        await plain.get("k")
        assert lean.lean and lean._lean is not None
        assert not plain.lean and plain._lean is None
        default = S3Storage(bucket, endpoint_url=endpoint)
        assert default.lean
    finally:
        await lean.close()
        await plain.close()


async def _scenario(storage: S3Storage, other: S3Storage, key: str) -> list[Outcome]:
    """Every answer a real server gives on demand, for GET and conditional PUT.

    ``other`` (the other path, same bucket and prefix) writes in between, so
    each path must address the very object the other one does.
    """
    results = [await outcome(storage.get(key))]  # 404 NoSuchKey
    results.append(
        await outcome(storage.put_if_match(key, b'{"n": 1}', '"0123"'))
    )  # If-Match, none
    created = await storage.put_if_match(key, b'{"n": 1}', "")  # 200, If-None-Match
    results.append(("ok", created))
    results.append(await outcome(storage.put_if_match(key, b'{"n": 2}', "")))  # 412 exists
    results.append(await outcome(storage.get(key)))  # 200
    results.append(await outcome(other.get(key)))  # the other path reads the same object
    replaced = await other.put_if_match(key, b'{"n": 3}', created)  # the other path's CAS
    results.append(("ok", replaced))
    results.append(await outcome(storage.put_if_match(key, b'{"n": 4}', created)))  # 412 stale
    results.append(await outcome(storage.put_if_match(key, b'{"n": 5}', replaced)))  # 200 CAS
    results.append(await outcome(storage.get(key)))
    return results


@pytest.mark.asyncio
@pytest.mark.parametrize("key", KEYS, ids=["plain", "slashes-spaces-unicode", "reserved"])
async def test_same_outcomes_on_real_servers(tapped: tuple[S3Tap, str], key: str) -> None:
    tap, bucket = tapped
    runs: dict[str, list[Outcome]] = {}
    requests: dict[str, list[Captured]] = {}
    for first in ("lean", "plain"):
        lean, plain = both(tap.url, bucket, f"diff-{uuid.uuid4().hex}")
        try:
            this, other = (lean, plain) if first == "lean" else (plain, lean)
            tap.take()
            runs[first] = await _scenario(this, other, key)
            # Only this path's requests, in order, for the request comparison.
            requests[first] = tap.take()
        finally:
            await lean.close()
            await plain.close()
    expected_kinds = [
        "ObjectNotFound",
        "PreconditionFailed",
        "ok",
        "PreconditionFailed",
        "ok",
        "ok",
        "ok",
        "PreconditionFailed",
        "ok",
        "ok",
    ]
    assert [kind for kind, _ in runs["lean"]] == expected_kinds, runs["lean"]
    # Same bodies give the same (MD5) etags, so even the values must match.
    assert runs["lean"] == runs["plain"]
    _same_requests(requests["lean"], requests["plain"])


_MEANINGFUL = (
    "if-match",
    "if-none-match",
    "content-type",
    "content-length",
    "content-md5",
    "x-amz-content-sha256",
    "x-amz-checksum-crc32",
    "x-amz-checksum-crc64nvme",
    "x-amz-sdk-checksum-algorithm",
    "expect",
)


def _shape(captured: Captured) -> tuple[Any, ...]:
    """What a request means: method, bucket, key (prefix cut), query, headers, body."""
    _, bucket, _prefix, key = captured.path.split("/", 3)
    return (
        captured.method,
        bucket,
        key,
        captured.query,
        header_subset(captured, _MEANINGFUL),
        captured.body,
    )


def _same_requests(lean: list[Captured], plain: list[Captured]) -> None:
    """Both runs issued the same calls in the same order: the requests must mean the same.

    Equal bodies give equal etags, so even the If-Match values agree.
    """
    assert len(lean) == len(plain), (len(lean), len(plain))
    for ours, theirs in zip(lean, plain, strict=True):
        assert ours.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 "), ours
        assert "x-amz-date" in ours.headers, ours
        assert _shape(ours) == _shape(theirs), (ours, theirs)


@pytest.mark.asyncio
async def test_missing_bucket(s3_server: tuple[str, str]) -> None:
    endpoint, _ = s3_server
    missing = f"no-such-bucket-{uuid.uuid4().hex[:12]}"
    results = {}
    for name, storage in zip(("lean", "plain"), both(endpoint, missing, "p"), strict=True):
        try:
            results[name] = [
                await outcome(storage.get("k")),
                await outcome(storage.put_if_match("k", b"{}", '"abc"')),
            ]
        finally:
            await storage.close()
    assert results["lean"][0] == ("BucketNotFound", None)
    # moto answers NoSuchBucket; SeaweedFS answers a failed If-Match with 412 first.
    assert results["lean"][1] in (("BucketNotFound", None), ("PreconditionFailed", None))
    assert results["lean"] == results["plain"]


@pytest.mark.asyncio
async def test_auth_errors(s3_auth: S3Auth) -> None:
    secret_wrong = (s3_auth.allowed[0], s3_auth.allowed[1] + "x")
    unknown_key = ("AKIANOSUCHKEY0000000", "secret")
    results: dict[str, list[Outcome]] = {}
    for name, lean in (("lean", True), ("plain", False)):
        out = []
        prefix = f"auth-{uuid.uuid4().hex}"
        for keys in (s3_auth.denied, secret_wrong, unknown_key, s3_auth.allowed):
            storage = S3Storage(
                s3_auth.bucket,
                prefix,
                endpoint_url=s3_auth.url,
                region_name=S3_REGION,
                timeout=5.0,
                aws_access_key_id=keys[0],
                aws_secret_access_key=keys[1],
                lean=lean,
            )
            try:
                out.append(await outcome(storage.put_if_match("k", b"{}", "")))
                out.append(await outcome(storage.get("k")))
            finally:
                await storage.close()
        results[name] = [(kind, None) for kind, _ in out]
    assert results["lean"] == [("StorageAuthError", None)] * 6 + [("ok", None)] * 2
    assert results["lean"] == results["plain"]


# -- a fake server for what real ones do not answer on demand ----------------------

_XML = "<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{}</Code><Message>{}</Message></Error>"

FAKES: list[tuple[str, Fake, type[StorageError] | None, type[StorageError] | None]] = [
    # id, answer, expected for GET, expected for PUT (None: success)
    ("304", Fake(304), StorageError, StorageError),
    (
        "409-conflict",
        Fake(409, _XML.format("ConditionalRequestConflict", "a &amp; b").encode()),
        PreconditionFailed,
        PreconditionFailed,
    ),
    (
        "409-other",
        Fake(409, _XML.format("BucketNotEmpty", "x").encode()),
        StorageError,
        StorageError,
    ),
    (
        "404-key",
        Fake(404, _XML.format("NoSuchKey", "gone").encode()),
        ObjectNotFound,
        PreconditionFailed,
    ),
    ("404-empty", Fake(404), ObjectNotFound, PreconditionFailed),
    (
        "404-bucket",
        Fake(404, _XML.format("NoSuchBucket", "b").encode()),
        BucketNotFound,
        BucketNotFound,
    ),
    (
        "412",
        Fake(412, _XML.format("PreconditionFailed", "p").encode()),
        PreconditionFailed,
        PreconditionFailed,
    ),
    (
        "403",
        Fake(403, _XML.format("AccessDenied", "no").encode()),
        StorageAuthError,
        StorageAuthError,
    ),
    (
        "400-skew",
        Fake(400, _XML.format("RequestTimeTooSkewed", "t").encode()),
        StorageAuthError,
        StorageAuthError,
    ),
    ("400-garbage", Fake(400, b"<html>not xml"), StorageError, StorageError),
    ("409-bad-xml", Fake(409, b"<Error><Code>a & b</Code></Error>"), StorageError, StorageError),
    ("429", Fake(429), StorageUnavailable, StorageUnavailable),
    (
        "500-xml",
        Fake(500, _XML.format("InternalError", "oops").encode()),
        StorageUnavailable,
        StorageUnavailable,
    ),
    ("500-empty", Fake(500), StorageUnavailable, StorageUnavailable),
    ("501", Fake(501, _XML.format("NotImplemented", "n").encode()), StorageError, StorageError),
    (
        "503-slowdown",
        Fake(503, _XML.format("SlowDown", "s").encode()),
        StorageUnavailable,
        StorageUnavailable,
    ),
    ("503-empty", Fake(503), StorageUnavailable, StorageUnavailable),
    ("200-no-etag", Fake(200), StorageError, StorageError),
    ("200", Fake(200, headers={"ETag": '"e1"'}), None, None),
    # botocore's "200 error": a PutObject answer with a body that is an
    # <Error> or not XML is a 500; a GetObject body is the object.
    ("200-body", Fake(200, b'{"a": 1}', {"ETag": '"e1"'}), None, StorageUnavailable),
    (
        "200-error-body",
        Fake(200, _XML.format("InternalError", "late").encode(), {"ETag": '"e1"'}),
        None,
        StorageUnavailable,
    ),
    ("reset", Fake("reset"), StorageUnavailable, StorageUnavailable),
    ("timeout", Fake("hang"), StorageUnavailable, StorageUnavailable),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("answer", "get_error", "put_error"), [f[1:] for f in FAKES], ids=[f[0] for f in FAKES]
)
async def test_same_errors_on_fake_answers(
    answer: Fake, get_error: type[StorageError] | None, put_error: type[StorageError] | None
) -> None:
    timeout = 0.3 if answer.status == "hang" else 5.0
    with S3Tap() as tap:
        tap.fake = answer
        seen: dict[str, list[tuple[type[BaseException] | None, str]]] = {}
        for name, storage in zip(
            ("lean", "plain"), both(tap.url, "bucket", "p", timeout=timeout), strict=True
        ):
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda s=storage: s.get("k"),
                lambda s=storage: s.put_if_match("k", b"{}", '"e0"'),
            ]
            got: list[tuple[type[BaseException] | None, str]] = []
            try:
                for call in calls:
                    try:
                        result = await call()
                    except StorageError as exc:
                        got.append((type(exc), str(exc)))
                    else:
                        got.append((None, repr(result)))
            finally:
                await storage.close()
            seen[name] = got
        assert [kind for kind, _ in seen["lean"]] == [get_error, put_error], seen["lean"]
        if isinstance(answer.status, int):
            assert seen["lean"] == seen["plain"], "the two paths explain the failure differently"
        else:  # transport errors: the same type; the reason is each library's own text
            assert [k for k, _ in seen["lean"]] == [k for k, _ in seen["plain"]]


def test_parse_error_body_like_botocore() -> None:
    assert parse_error_body(412, _XML.format("PreconditionFailed", "a &amp; b").encode()) == (
        "PreconditionFailed",
        "a & b",
    )
    assert parse_error_body(503, b"") == ("503", "Service Unavailable")
    assert parse_error_body(409, b"<Error><Code>a & b</Code></Error>") == ("409", "Conflict")
    assert parse_error_body(599, b"junk") == ("599", "")
    nested = (
        b"<ErrorResponse xmlns='x'><Error><Code>C</Code><Message>M</Message></Error>"
        b"</ErrorResponse>"
    )
    assert parse_error_body(400, nested) == ("C", "M")


@pytest.mark.asyncio
async def test_cancelled_lean_request_leaves_the_pool_usable() -> None:
    """An outer asyncio.timeout (as the elector's) cancels a lean request cleanly."""
    with S3Tap() as tap:
        tap.fake = Fake(200, b"{}", {"ETag": '"e1"'})
        storage = S3Storage("bucket", "p", endpoint_url=tap.url, region_name=S3_REGION, timeout=5.0)
        try:
            # First a request that sets the lean path up, so that the timeout
            # below cancels a lean request and not the (slower) setup.
            assert await storage.get("k") == (b"{}", '"e1"')
            assert storage._lean is not None
            tap.fake = Fake("hang")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await storage.get("k")
            assert storage._lean is not None
            tap.fake = Fake(200, b"{}", {"ETag": '"e2"'})
            assert await storage.get("k") == (b"{}", '"e2"')
        finally:
            await storage.close()
