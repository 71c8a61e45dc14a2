"""The lean S3 request path: GetObject and conditional PutObject without botocore's pipeline.

botocore spends 1-2 ms of CPU per request in its event-driven pipeline
(parameter validation, endpoint rules, serialisation, hooks, response
parsing). An elector sends only two request shapes, so this module builds
them by hand and keeps from aiobotocore what it does well:

* the URL: resolved once per key by the client itself (its endpoint rules,
  region, addressing style and key encoding), via a presigned GetObject URL
  with the query stripped; the signing region and service come from the same
  URL's credential scope;
* the credentials object, with its refresh (frozen per request: a cheap
  expiry check unless a refresh is due);
* botocore's own ``S3SigV4Auth`` signer on a minimal ``AWSRequest``;
* the client's aiohttp session (its keep-alive pool, TLS trust, proxies and
  socket timeouts); aiohttp sets TCP_NODELAY on every connection.

Responses are parsed for what the elector needs: the status, the ``ETag``
header and the body; on errors the ``<Code>`` and ``<Message>`` of S3's XML
error body, read like botocore reads them (an empty or non-XML body gives
the status as the code and its reason phrase as the message).
"""

from __future__ import annotations

import http.client
import inspect
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import aiohttp
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import NoCredentialsError
from yarl import URL

from .base import MAX_OBJECT_SIZE

__all__ = ["LeanResponse", "LeanS3", "LeanUnsupported", "S3ErrorAnswer", "parse_error_body"]

#: Bytes of an error body read for its code (S3's are a few hundred).
_ERROR_BODY_LIMIT = 16 * 1024
#: At most this many keys' URLs are cached (an elector uses one or two).
_URL_CACHE_SIZE = 1024


#: S3 Express One Zone directory buckets are named ``<base>--<zone id>--x-s3``.
DIRECTORY_BUCKET_SUFFIX = "--x-s3"
#: The events whose handlers shape a GetObject or PutObject request on the wire.
_REQUEST_EVENTS = (
    "provide-client-params",
    "before-parameter-build",
    "before-call",
    "request-created",
    "before-sign",
    "before-send",
)
#: Where the handlers botocore and aiobotocore register themselves come from.
_LIBRARY_MODULES = ("botocore", "aiobotocore", "fastelect")


def foreign_request_hooks(client: Any) -> list[str]:
    """Handlers not from botocore/aiobotocore on the events of GetObject/PutObject.

    The lean path builds those two requests itself, so it would skip them.
    """
    emitter = getattr(client.meta.events, "_emitter", client.meta.events)
    found: list[str] = []
    for operation in ("GetObject", "PutObject"):
        for event in _REQUEST_EVENTS:
            for handler in emitter._handlers.prefix_search(f"{event}.s3.{operation}"):
                target = getattr(handler, "func", handler)  # functools.partial
                module = getattr(target, "__module__", None) or type(target).__module__
                if module.split(".")[0] in _LIBRARY_MODULES:
                    continue
                name = f"{event}: {module}.{getattr(target, '__qualname__', type(target).__name__)}"
                if name not in found:
                    found.append(name)
    return found


class LeanUnsupported(Exception):
    """The client's configuration needs botocore's full pipeline (proxies, non-SigV4 auth...)."""


class S3ErrorAnswer(Exception):
    """An S3 error answer on the lean path: the cause a StorageError is raised from."""

    def __init__(self, operation: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{operation}: HTTP {status} {code}: {message}")
        #: HTTP status, S3 error code and message, as parsed.
        self.status, self.code, self.message = status, code, message


class LeanResponse:
    """What the lean path reads from an answer."""

    __slots__ = ("body", "code", "etag", "message", "status")

    def __init__(self, status: int, etag: str | None, body: bytes, code: str, message: str) -> None:
        #: HTTP status.
        self.status = status
        #: The ``ETag`` header as sent (quotes included), None if absent.
        self.etag = etag
        #: The body (at most MAX_OBJECT_SIZE + 1 bytes) of a success, b"" otherwise.
        self.body = body
        #: S3's error code ("" on success; the status as text when the body has none).
        self.code = code
        #: S3's error message ("" on success).
        self.message = message


def _tag(element: ElementTree.Element) -> str:
    return element.tag.rpartition("}")[2]  # without a namespace, as botocore reads it


def _text(parent: ElementTree.Element, name: str) -> str:
    for child in parent:
        if _tag(child) == name:
            return child.text or ""
    return ""


def _is_200_error(body: bytes) -> bool:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return True
    return root.tag == "Error"


def parse_error_body(status: int, body: bytes) -> tuple[str, str]:
    """(code, message) of an S3 error answer, as botocore's parser reads them.

    ``<Error><Code>..</Code><Message>..</Message></Error>`` (S3's form) or
    ``<ErrorResponse><Error>..</Error></ErrorResponse>``; an empty body or one
    that is not XML gives the status as the code and its reason phrase as the
    message. Error answers are rare, so a real XML parser costs nothing that
    matters here, and it refuses exactly what botocore's refuses.
    """
    if body:
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            pass  # like botocore: fall back to the status
        else:
            if _tag(root) != "Error":
                for child in root:
                    if _tag(child) == "Error":
                        root = child
                        break
                else:
                    return "", ""
            return _text(root, "Code"), _text(root, "Message")
    return str(status), http.client.responses.get(status, "")


class LeanS3:
    """GET and conditional PUT for one bucket, through one aiobotocore client's parts.

    Build with :meth:`create` after the client is open; it borrows the client's
    HTTP session, so it needs no closing of its own (closing the client closes
    the pool).
    """

    def __init__(self, client: Any, bucket: str, http_session: aiohttp.ClientSession) -> None:
        self._client = client
        self._bucket = bucket
        self._http = http_session
        self._credentials: Any = client._request_signer._credentials
        # Static credentials never change: freeze them once. Refreshable ones
        # are frozen per request, which refreshes them when they near expiry.
        self._static: Any = None
        if self._credentials is not None and not hasattr(self._credentials, "refresh_needed"):
            self._static = self._credentials
        # full key -> (URL as sent, signing region, signing service)
        self._urls: dict[str, tuple[str, str, str]] = {}
        self._user_agent = "fastelect-lean " + str(
            getattr(client.meta.config, "user_agent", "") or "botocore"
        )

    @classmethod
    async def create(cls, client: Any, bucket: str) -> LeanS3:
        """The lean path over ``client``, or :class:`LeanUnsupported` if it cannot be faithful.

        Refused (the caller then sends everything through aiobotocore): S3
        Express directory buckets, which sign with CreateSession tokens;
        request hooks registered on the session for GetObject or PutObject
        (how SSE-C keys, requested checksums or extra headers are added); a
        credentials object the lean path cannot refresh; an HTTP proxy;
        non-SigV4 signing (found at the first request).
        """
        if bucket.endswith(DIRECTORY_BUCKET_SUFFIX):
            raise LeanUnsupported(
                "an S3 Express directory bucket (its requests are signed with"
                " CreateSession tokens, which only aiobotocore obtains)"
            )
        hooks = foreign_request_hooks(client)
        if hooks:
            raise LeanUnsupported(
                "request hooks are registered on the session for GetObject/PutObject"
                f" ({', '.join(hooks)}); they may add headers such as SSE-C keys or checksums"
            )
        credentials = client._request_signer._credentials
        if credentials is not None and hasattr(credentials, "refresh_needed"):
            frozen = getattr(credentials, "get_frozen_credentials", None)
            if not inspect.iscoroutinefunction(frozen):
                raise LeanUnsupported(
                    f"credentials of type {type(credentials).__name__} refresh synchronously;"
                    " the lean path refreshes only aiobotocore's"
                )
        try:
            http_session = client._endpoint.http_session
            proxy_config = http_session._proxy_config
            get_session = http_session._get_session
        except AttributeError as exc:  # another aiobotocore layout than the one we know
            raise LeanUnsupported(f"aiobotocore internals changed: {exc}") from exc
        endpoint = str(client.meta.endpoint_url)
        if proxy_config.proxy_url_for(endpoint):
            raise LeanUnsupported("an HTTP(S) proxy is configured")
        session = await get_session(None)
        if not isinstance(session, aiohttp.ClientSession):
            raise LeanUnsupported("the client's HTTP session is not aiohttp's")
        return cls(client, bucket, session)

    async def _target(self, full_key: str) -> tuple[str, str, str]:
        target = self._urls.get(full_key)
        if target is not None:
            return target
        # The client resolves endpoint rules, addressing style, region and the
        # key's encoding exactly as for its own GetObject (same URL as PutObject).
        presigned = await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": full_key}, ExpiresIn=60
        )
        parts = urlsplit(presigned)
        query = parse_qs(parts.query)
        if query.get("X-Amz-Algorithm") != ["AWS4-HMAC-SHA256"]:
            raise LeanUnsupported(f"signing is not SigV4: {query.get('X-Amz-Algorithm')}")
        # X-Amz-Credential = <key id>/<date>/<region>/<service>/aws4_request
        scope = query["X-Amz-Credential"][0].split("/")
        if len(scope) < 5:
            raise LeanUnsupported(f"unexpected credential scope {scope!r}")
        url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        target = (url, scope[-3], scope[-2])
        if len(self._urls) >= _URL_CACHE_SIZE:
            self._urls.clear()
        self._urls[full_key] = target
        return target

    async def request(
        self, method: str, full_key: str, body: bytes | None, headers: dict[str, str]
    ) -> LeanResponse:
        """Sign and send one request; read status, ETag and (bounded) body."""
        url, region, service = await self._target(full_key)
        credentials = self._static
        if credentials is None:
            if self._credentials is None:
                raise NoCredentialsError()
            credentials = await self._credentials.get_frozen_credentials()
        aws_request = AWSRequest(method=method, url=url, headers=headers, data=body)
        S3SigV4Auth(credentials, service, region).add_auth(aws_request)
        send_headers = dict(aws_request.headers.items())
        send_headers["User-Agent"] = self._user_agent
        # Like botocore: never ask for compressed bodies (ETags are of the stored bytes).
        send_headers["Accept-Encoding"] = "identity"
        async with self._http.request(
            method,
            URL(url, encoded=True),  # already encoded by botocore, and signed as such
            data=body,
            headers=send_headers,
            allow_redirects=False,
        ) as response:
            status = response.status
            if status >= 300:
                raw = await response.content.read(_ERROR_BODY_LIMIT)
                code, message = parse_error_body(status, raw)
                return LeanResponse(status, None, b"", code, message)
            etag = response.headers.get("ETag")
            if method != "GET":
                # botocore's "200 error" rule: an S3 answer whose body is an
                # <Error>, or not XML at all (cut short), failed after all and
                # counts as a 500. A PutObject success has an empty body.
                raw = await response.content.read(_ERROR_BODY_LIMIT)
                if raw and _is_200_error(raw):
                    code, message = parse_error_body(500, raw)
                    return LeanResponse(500, None, b"", code, message)
                return LeanResponse(status, etag, b"", "", "")
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_OBJECT_SIZE:
                chunk = await response.content.read(MAX_OBJECT_SIZE + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return LeanResponse(status, etag, b"".join(chunks), "", "")
