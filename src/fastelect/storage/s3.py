"""A lock store on S3 or an S3-compatible object store, via aiobotocore.

Creates use ``If-None-Match: *`` and replacements ``If-Match: <etag>``, so the
store itself arbitrates every race. botocore's own retries are off and every
request is bounded by ``timeout``: the elector decides when to retry, within
its lease budget.

S3 etags are the content's MD5 (for single-part uploads without SSE-KMS), so
identical bytes give identical etags; fastelect's records always differ, see
:mod:`fastelect.storage.base`.

Tested against moto and SeaweedFS (4.48). SeaweedFS answers like S3 (412
for a failed ``If-None-Match``/``If-Match``, also on a missing key; 404
NoSuchBucket / NoSuchKey; 403 InvalidAccessKeyId / SignatureDoesNotMatch /
AccessDenied), with two differences worth knowing: when conditional writes
to one key collide, some losers get their 412 only after 1-3 s (they queue
on a per-object lock and retry once a second), so a ``timeout`` of a few
seconds turns those into
StorageUnavailable (an unknown outcome, which the elector reads back); and
by default it creates a missing bucket on PUT for admin identities, so a
mistyped bucket only fails in :meth:`S3Storage.check`, which Elector.start
runs first (HeadBucket never creates).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
import weakref
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.handlers import add_expect_header

from ..errors import ConfigError
from ._s3_lean import LeanS3, LeanUnsupported, S3ErrorAnswer
from .base import (
    MAX_OBJECT_SIZE,
    BucketNotFound,
    ObjectNotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageStats,
    StorageUnavailable,
)
from .verify import VerifyReport, verify_storage

__all__ = ["S3Storage"]

_log = logging.getLogger(__name__)

_SESSION: AioSession | None = None
_WARMED: weakref.WeakSet[AioSession] = weakref.WeakSet()


def _shared_session() -> AioSession:
    # One session for every S3Storage that was not given its own: botocore
    # caches the parsed service model per session, so later clients cost
    # about 3 ms to create instead of about 70 ms.
    global _SESSION
    if _SESSION is None:
        _SESSION = get_session()
    return _SESSION


async def _warm(session: AioSession) -> None:
    """Parse botocore's S3 model in a worker thread, once per session.

    create_client() parses tens of MB of JSON synchronously; on the event loop
    that stalls every elector in the process for tens of milliseconds (seen
    at up to a second on a loaded host), long enough to lose a short lease.
    """
    if session in _WARMED:
        return
    loader = session.get_component("data_loader")

    def load() -> None:
        loader.load_service_model("s3", "service-2")
        loader.load_service_model("s3", "endpoint-rule-set-1")
        for name in ("endpoints", "partitions", "_retry", "sdk-default-configuration"):
            with contextlib.suppress(Exception):  # optional files; create_client decides
                loader.load_data(name)

    await asyncio.to_thread(load)
    _WARMED.add(session)


# Error codes that mean the store refused who we are or what we may do.
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "RequestTimeTooSkewed",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
# Error codes that may clear on their own.
_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "OperationAborted",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "ThrottlingException",
        "TooManyRequests",
    }
)
# Every failure a request can raise that is not a bug in our code.
_REQUEST_ERRORS = (BotoCoreError, ClientError, aiohttp.ClientError, OSError)
_AUTH_HINT = (
    "check the credentials (access key id, secret, session token and its expiry),"
    " the region, the host clock, and the bucket policy / IAM permissions"
    " (s3:GetObject, s3:PutObject, s3:ListBucket on the bucket)"
)


class S3Storage:
    """A :class:`~fastelect.storage.Storage` on an S3 bucket.

    Objects live at ``prefix + "/" + key`` (just ``key`` when ``prefix`` is
    empty). Credentials come from the arguments when given, otherwise from the
    standard AWS chain (environment, shared config, container/instance role)
    of ``session`` (an ``aiobotocore.session.AioSession``; a new one by
    default). ``endpoint_url`` points at S3-compatible stores (MinIO, R2,
    Ceph RGW, ...); ``addressing_style`` ("auto", "path" or "virtual")
    selects bucket-in-path vs bucket-in-host URLs, as most self-hosted stores
    need "path".

    ``timeout`` (seconds, default 2.0) bounds each request as a whole,
    connecting and reading the answer included; botocore's retries are off.

    One client is created on first use, reused, and closed by :meth:`close`.
    ``stats`` counts requests issued.

    ``lean`` (default True) sends the elector's two hot requests, GetObject
    and the conditional PutObject, on a lean path: the client's own endpoint
    resolution, credentials (with refresh), SigV4 signer and connection pool,
    but a hand-built request and a minimal response parser instead of
    botocore's pipeline -- about a quarter of the client CPU per request.
    Both paths send equivalent requests and raise the same errors (tested on
    moto and SeaweedFS). ``lean=False`` sends everything through aiobotocore;
    so does a client the lean path cannot mirror faithfully, logged once at
    INFO: an S3 Express directory bucket, request hooks registered on
    ``session`` for GetObject/PutObject (SSE-C keys, requested checksums,
    extra headers), credentials that refresh synchronously, an HTTP proxy,
    non-SigV4 signing (docs/configuration.md#the-lean-s3-path). :meth:`check`, :meth:`delete` and
    :meth:`server_time` always use aiobotocore.

    Below botocore, aiohttp resends a PUT once if the connection drops before
    any response (it deems PUT idempotent). A conditional PUT stays safe: if
    the first copy landed, the resend fails with PreconditionFailed, which
    callers must already treat as "outcome unknown, read back"
    (docs/safety.md#rule-4-an-unknown-outcome-is-not-a-success).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        session: AioSession | None = None,
        timeout: float = 2.0,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        addressing_style: str = "auto",
        lean: bool = True,
    ) -> None:
        if not bucket:
            raise ConfigError("bucket", "must not be empty")
        if not timeout > 0:
            raise ConfigError("timeout", f"must be > 0 seconds, got {timeout!r}")
        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise ConfigError(
                "aws_access_key_id",
                "give both aws_access_key_id and aws_secret_access_key, or neither",
            )
        if addressing_style not in ("auto", "path", "virtual"):
            raise ConfigError(
                "addressing_style", f"must be 'auto', 'path' or 'virtual', got {addressing_style!r}"
            )
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._endpoint_url = endpoint_url
        self._region_name = region_name
        self._session = session if session is not None else _shared_session()
        self._timeout = timeout
        self._credentials = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        self._config = AioConfig(
            # total_max_attempts counts the first try; botocore's "max_attempts"
            # counts retries only, so max_attempts=1 would still retry once.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=timeout,
            read_timeout=timeout,
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            # Checksums only where the API requires them: several S3-compatible
            # stores reject the CRC headers botocore >= 1.36 adds by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._lean_wanted = bool(lean)
        self._lean: LeanS3 | None = None
        self._client: Any = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self._client_lock = asyncio.Lock()
        self._closed = False
        #: Requests issued so far.
        self.stats = StorageStats()

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._bucket

    @property
    def lean(self) -> bool:
        """True while GetObject and PutObject take the lean path (see the class docs)."""
        return self._lean is not None if self._client is not None else self._lean_wanted

    @property
    def prefix(self) -> str:
        """The key prefix, without leading or trailing slashes ("" for none)."""
        return self._prefix

    async def get(self, key: str) -> tuple[bytes, str]:
        """Return the body (at most MAX_OBJECT_SIZE + 1 bytes) and etag of ``key``."""
        full_key = self._full_key(key)
        client = await self._get_client()
        self.stats.gets += 1
        lean = self._lean
        if lean is not None:
            try:
                async with asyncio.timeout(self._timeout):
                    answer = await lean.request("GET", full_key, None, {})
            except _REQUEST_ERRORS as exc:
                raise self._map_error(exc, "GetObject", full_key) from exc
            if answer.status >= 300:
                cause = S3ErrorAnswer("GetObject", answer.status, answer.code, answer.message)
                raise self._map_status(
                    answer.status, answer.code, answer.message, "GetObject", full_key
                ) from cause
            return answer.body, self._etag(answer.etag, "GetObject", full_key)
        try:
            async with asyncio.timeout(self._timeout):
                response = await client.get_object(Bucket=self._bucket, Key=full_key)
                # The context manager closes the body (and, if it was not read
                # to the end, drops the connection) on every path.  Read from
                # the body itself: before aiobotocore 3.8, ``async with`` gave
                # the raw aiohttp response, whose read() takes no size.
                body = response["Body"]
                async with body:
                    chunks: list[bytes] = []
                    size = 0
                    while size <= MAX_OBJECT_SIZE:
                        chunk = await body.read(MAX_OBJECT_SIZE + 1 - size)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        size += len(chunk)
        except _REQUEST_ERRORS as exc:
            raise self._map_error(exc, "GetObject", full_key) from exc
        return b"".join(chunks), self._etag(response.get("ETag"), "GetObject", full_key)

    async def put_if_match(self, key: str, body: bytes, etag: str) -> str:
        """Write ``body`` if the current etag is ``etag`` ("" = must not exist)."""
        full_key = self._full_key(key)
        client = await self._get_client()
        self.stats.puts += 1
        lean = self._lean
        if lean is not None:
            headers = {"Content-Type": "application/json"}
            if etag == "":
                headers["If-None-Match"] = "*"
            else:
                headers["If-Match"] = etag
            try:
                async with asyncio.timeout(self._timeout):
                    answer = await lean.request("PUT", full_key, bytes(body), headers)
            except _REQUEST_ERRORS as exc:
                raise self._map_error(exc, "PutObject", full_key) from exc
            if answer.status >= 300:
                cause = S3ErrorAnswer("PutObject", answer.status, answer.code, answer.message)
                raise self._map_status(
                    answer.status, answer.code, answer.message, "PutObject", full_key
                ) from cause
            return self._etag(answer.etag, "PutObject", full_key)
        condition = {"IfNoneMatch": "*"} if etag == "" else {"IfMatch": etag}
        try:
            async with asyncio.timeout(self._timeout):
                response = await client.put_object(
                    Bucket=self._bucket,
                    Key=full_key,
                    Body=bytes(body),
                    ContentType="application/json",
                    **condition,
                )
        except _REQUEST_ERRORS as exc:
            raise self._map_error(exc, "PutObject", full_key) from exc
        return self._etag(response.get("ETag"), "PutObject", full_key)

    async def check(self) -> None:
        """HeadBucket: fail early and clearly on a missing bucket or bad credentials."""
        client = await self._get_client()
        try:
            async with asyncio.timeout(self._timeout):
                await client.head_bucket(Bucket=self._bucket)
        except _REQUEST_ERRORS as exc:
            raise self._map_error(exc, "HeadBucket", None) from exc

    async def close(self) -> None:
        """Close the client and its connection pool; later operations raise StorageError."""
        async with self._client_lock:
            self._closed = True
            exit_stack, self._exit_stack, self._client = self._exit_stack, None, None
            self._lean = None
            if exit_stack is not None:
                await exit_stack.aclose()

    def describe(self, key: str) -> str:
        """``s3://<bucket>/<prefix>/<key>``."""
        return f"s3://{self._bucket}/{self._full_key(key)}"

    def _full_key(self, key: str) -> str:
        if not key:
            raise ConfigError("key", "must not be empty")
        if not self._prefix:
            return key
        return f"{self._prefix}/{key.lstrip('/')}"

    async def _get_client(self) -> Any:
        client = self._client
        if client is not None:
            return client
        async with self._client_lock:
            if self._closed:
                raise StorageError(f"S3Storage(s3://{self._bucket}) is closed")
            if self._client is None:
                await _warm(self._session)
                stack = contextlib.AsyncExitStack()
                try:
                    self._client = await stack.enter_async_context(
                        self._session.create_client(
                            "s3",
                            endpoint_url=self._endpoint_url,
                            region_name=self._region_name,
                            config=self._config,
                            **self._credentials,
                        )
                    )
                except ValueError as exc:
                    # botocore's answer to a malformed endpoint_url.
                    await stack.aclose()
                    raise ConfigError("endpoint_url", str(exc)) from exc
                except _REQUEST_ERRORS as exc:
                    await stack.aclose()
                    raise self._map_error(exc, "creating the S3 client", None) from exc
                # botocore asks for "Expect: 100-continue" on every PutObject,
                # which costs a round trip before the body of every renewal;
                # lock records are a few hundred bytes. (This client only.)
                self._client.meta.events.unregister("before-call.s3", add_expect_header)
                self._exit_stack = stack
                if self._lean_wanted:
                    try:
                        self._lean = await LeanS3.create(self._client, self._bucket)
                    except LeanUnsupported as exc:
                        # A supported configuration, not a fault: said once, at INFO.
                        _log.info(
                            "S3Storage(s3://%s): the lean request path is off: %s;"
                            " using aiobotocore for every request",
                            self._bucket,
                            exc,
                            extra={"bucket": self._bucket},
                        )
            return self._client

    def _where(self, key: str | None) -> str:
        where = f"s3://{self._bucket}/{key}" if key is not None else f"bucket {self._bucket!r}"
        endpoint = self._endpoint_url or "AWS S3"
        region = self._region_name or (self._client.meta.region_name if self._client else None)
        return f"{where} at {endpoint}" + (f" (region {region})" if region else "")

    def _etag(self, etag: object, operation: str, key: str) -> str:
        """The ETag of a successful answer; a store that sends none is not fit for locks."""
        if not etag:
            raise StorageError(
                f"{operation} on {self._where(key)} succeeded without an ETag header;"
                " fastelect needs ETags for conditional writes"
            )
        return str(etag)

    def _map_status(
        self, status: int, code: str, message: str, operation: str, key: str | None
    ) -> StorageError:
        """Translate an S3 error answer (status, error code, message) into a StorageError.

        Both request paths come here: aiobotocore's ClientError and the lean
        path's own parse of the same answer.
        """
        where = self._where(key)
        detail = f"{operation} on {where} failed: {code or status} {message}".rstrip()
        if code == "NoSuchBucket" or (operation == "HeadBucket" and status == 404):
            return BucketNotFound(
                f"bucket {self._bucket!r} does not exist at "
                f"{self._endpoint_url or 'AWS S3'} ({operation}: {code or status})"
            )
        if status == 412 or code == "PreconditionFailed":
            return PreconditionFailed(detail)
        # S3 answers 409 ConditionalRequestConflict when a concurrent
        # conditional write to the same key won the race.
        if code == "ConditionalRequestConflict":
            return PreconditionFailed(detail)
        if status == 404 or code == "NoSuchKey":
            if operation == "PutObject":
                # If-Match on a key that no longer exists: the condition failed.
                return PreconditionFailed(detail)
            return ObjectNotFound(detail)
        if status == 403 or code in _AUTH_CODES:
            return StorageAuthError(f"{detail}; {_AUTH_HINT}")
        if status in (301, 307) or code in ("PermanentRedirect", "TemporaryRedirect"):
            return StorageError(f"{detail}; the bucket lives in another region: set region_name")
        if status == 501 or code == "NotImplemented":
            # Permanent, not transient: retrying cannot help.
            return StorageError(
                f"{detail}; this store does not support what fastelect needs"
                " (conditional PutObject with If-None-Match / If-Match)"
            )
        if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
            return StorageUnavailable(detail)
        return StorageError(detail)

    def _map_error(self, exc: Exception, operation: str, key: str | None) -> StorageError:
        """Translate a botocore / aiohttp / asyncio failure into the storage error tree."""
        where = self._where(key)
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = str(error.get("Message", "")) or str(exc)
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return self._map_status(status, code, message, operation, key)
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StorageAuthError(f"{operation} on {where}: {exc}; {_AUTH_HINT}")
        if isinstance(exc, NoRegionError):
            return StorageError(f"{operation} on {where}: {exc}; set region_name")
        # Connection refused/reset, DNS, TLS, connect/read timeouts (botocore's,
        # aiohttp's, and our own asyncio.timeout's TimeoutError, an OSError).
        if isinstance(exc, BotoConnectionError | HTTPClientError | aiohttp.ClientError | OSError):
            reason = str(exc) or type(exc).__name__
            if type(exc) is TimeoutError:  # ours: asyncio.timeout carries no message
                reason = f"no answer within timeout={self._timeout} s"
            return StorageUnavailable(f"{operation} on {where}: {reason}")
        if isinstance(exc, BotoCoreError):
            return StorageError(f"{operation} on {where}: {exc}")
        return StorageError(f"{operation} on {where}: unexpected {type(exc).__name__}: {exc}")

    # -- added for fastelect check (kept at the end of the class) ------------

    async def delete(self, key: str) -> None:
        """DeleteObject ``key`` (S3 answers a missing key with success too).

        Never delete a lock electors are using: any node may create a missing
        record at once, while the old leader's lease still runs. Electors
        never delete; ``fastelect check`` removes its probe object with this.
        On a versioned bucket this adds a delete marker; older versions stay.
        """
        full_key = self._full_key(key)
        client = await self._get_client()
        try:
            async with asyncio.timeout(self._timeout):
                await client.delete_object(Bucket=self._bucket, Key=full_key)
        except _REQUEST_ERRORS as exc:
            raise self._map_error(exc, "DeleteObject", full_key) from exc

    async def put_unconditional(self, key: str, body: bytes) -> str:
        """PutObject ``key`` with no condition: only ``fastelect check``'s guard probe.

        Electors never write without ``If-Match`` / ``If-None-Match``; this
        asks whether the bucket's policy refuses a write that has neither.
        """
        full_key = self._full_key(key)
        client = await self._get_client()
        self.stats.puts += 1
        try:
            async with asyncio.timeout(self._timeout):
                response = await client.put_object(
                    Bucket=self._bucket,
                    Key=full_key,
                    Body=bytes(body),
                    ContentType="application/json",
                )
        except _REQUEST_ERRORS as exc:
            raise self._map_error(exc, "PutObject", full_key) from exc
        return self._etag(response.get("ETag"), "PutObject", full_key)

    async def server_time(self) -> tuple[int, int, float | None]:
        """HeadBucket, timed on this host: (ns before, ns after, the store's Date or None).

        The local times are ``time.time_ns()``; the store's time is its
        ``Date`` header in POSIX seconds (whole seconds), None if absent or
        unparsable.
        """
        client = await self._get_client()
        try:
            async with asyncio.timeout(self._timeout):
                before = time.time_ns()
                response = await client.head_bucket(Bucket=self._bucket)
                after = time.time_ns()
        except _REQUEST_ERRORS as exc:
            raise self._map_error(exc, "HeadBucket", None) from exc
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        try:
            server = email.utils.parsedate_to_datetime(headers["date"]).timestamp()
        except (KeyError, TypeError, ValueError, IndexError):
            server = None
        return before, after, server

    async def verify(self, prefix: str = "") -> VerifyReport:
        """Probe this store's conditional writes; see :func:`fastelect.storage.verify_storage`."""
        return await verify_storage(self, prefix=prefix)
