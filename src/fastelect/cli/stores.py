"""Store URLs: how the command line names a lock store.

==========================================  ===========================================
``file:///var/lib/fastelect``               :class:`~fastelect.FileStorage` in that
                                            directory (one host, any number of processes)
``memory://``                               :class:`~fastelect.MemoryStorage`; one process
                                            only, so ``fastelect demo`` alone accepts it
``s3://bucket/prefix?endpoint_url=URL&      :class:`~fastelect.S3Storage`; the prefix and
region=R&addressing_style=path&timeout=S``  every query parameter are optional
==========================================  ===========================================

Credentials never go in the URL (it ends up in shell history, ``ps`` output
and logs): S3 credentials come from the standard AWS chain (environment
variables, shared config files, container or instance role).

Parsing is separate from construction because an ``S3Storage`` holds an
aiobotocore client, which is bound to the event loop it was first used on:
:meth:`StoreSpec.create` is meant to run on the loop that will use the store.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import ConfigError
from ..storage import FileStorage, MemoryStorage, S3Storage, Storage
from ..storage.file import require_directory, resolve_directory

__all__ = ["CREATE_FLAG", "StoreSpec", "add_create_store_arg", "parse_store_url"]

#: The flag that lets a command make a missing ``file://`` storage directory.
CREATE_FLAG = "--create-store"

_S3_PARAMS = frozenset({"endpoint_url", "region", "addressing_style", "timeout"})
_EXAMPLES = "file:///path/to/dir, s3://bucket/prefix?endpoint_url=...&region=... or memory://"


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """A parsed store URL; :meth:`create` builds the storage it names."""

    #: Which backend: ``"file"``, ``"memory"`` or ``"s3"``.
    kind: Literal["file", "memory", "s3"]
    #: The URL as given (it never holds secrets).
    url: str
    #: The storage directory (file stores), resolved as the kernel resolves it
    #: (symlinks followed, ``..`` taken after them), so every spelling of one
    #: directory is one store.
    path: str = ""
    #: The bucket (S3 stores).
    bucket: str = ""
    #: The key prefix inside the bucket, without surrounding slashes (S3 stores).
    prefix: str = ""
    #: S3-compatible endpoint, e.g. ``http://127.0.0.1:9000``; None for AWS S3.
    endpoint_url: str | None = None
    #: AWS region; None to take it from the environment / AWS config.
    region: str | None = None
    #: ``"auto"``, ``"path"`` (most self-hosted stores) or ``"virtual"``.
    addressing_style: str = "auto"
    #: Bound on each S3 request in seconds; None for the storage's default (2 s).
    timeout: float | None = None
    #: Whether a missing storage directory may be made (file stores; ``--create-store``).
    create_directory: bool = False

    def create(self) -> Storage:
        """Construct the storage.  Call it on the event loop that will use it."""
        if self.kind == "file":
            return FileStorage(self.path, create=self.create_directory)
        if self.kind == "memory":
            return MemoryStorage()
        extra: dict[str, Any] = {} if self.timeout is None else {"timeout": self.timeout}
        return S3Storage(
            self.bucket,
            self.prefix,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            addressing_style=self.addressing_style,
            **extra,
        )


def _fail(url: str, problem: str) -> ConfigError:
    return ConfigError("--store", f"{problem} in {url!r}; expected {_EXAMPLES}")


def add_create_store_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--create-store`` (sets ``create_store``) to a command that writes to its store."""
    parser.add_argument(
        CREATE_FLAG,
        dest="create_store",
        action="store_true",
        help="make a file:// store's directory (mode 0700) if it is missing; without it a "
        "missing directory is an error, so a typo cannot make a second, separate lock",
    )


def parse_store_url(
    url: str, *, allow_memory: bool = False, create: bool | None = False
) -> StoreSpec:
    """Parse a store URL, raising :class:`~fastelect.ConfigError` naming ``--store``.

    ``memory://`` is refused unless ``allow_memory``: a memory store cannot be
    shared between processes, so two ``fastelect run`` sidecars on it would
    each see only themselves.

    A ``file://`` directory must exist unless ``create`` (the command's
    ``--create-store``): a missing one is an error here, before anything is
    written. ``create=None`` is for commands that only read (``status``):
    the directory must exist and the error offers no flag.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # e.g. an unbalanced '[' in the host part
        raise _fail(url, f"unparsable URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme == "file":
        spec = _parse_file(url, parts.netloc, parts.path, parts.query, parts.fragment)
        if create:
            return dataclasses.replace(spec, create_directory=True)
        hint = f"pass {CREATE_FLAG} to have it made" if create is not None else "fix the URL"
        require_directory(spec.path, spec.path, hint=hint, field="--store")
        return spec
    if scheme == "memory":
        if parts.netloc or parts.path.strip("/") or parts.query:
            raise _fail(url, "memory:// takes no host, path or parameters")
        if not allow_memory:
            raise ConfigError(
                "--store",
                "memory:// lives inside one process, so only 'fastelect demo' can use it; "
                "use file:///path to share a lock between processes on one host",
            )
        return StoreSpec(kind="memory", url=url)
    if scheme == "s3":
        return _parse_s3(url, parts.netloc, parts.path, parts.query, parts.fragment)
    if not scheme:
        raise _fail(url, "missing scheme")
    raise _fail(url, f"unsupported scheme {scheme!r}")


def _parse_file(url: str, netloc: str, path: str, query: str, fragment: str) -> StoreSpec:
    if netloc not in ("", "localhost"):
        # file://relative/dir parses "relative" as a host: say what was meant.
        raise _fail(url, f"file URLs take an absolute path (file:///{netloc}{path}?), not a host")
    if query or fragment:
        raise _fail(url, "file URLs take no '?' parameters or '#' fragment")
    directory = unquote(path)
    if not directory or directory == "/":
        raise _fail(url, "a file store needs a directory path")
    if "\0" in directory:
        raise _fail(url, "the path contains a NUL byte")
    try:
        # Not os.path.normpath: it crosses out "link/.." as text, which names
        # another directory than the kernel reaches, and so another lock.
        resolved = resolve_directory(directory)
    except ConfigError as exc:
        raise _fail(url, str(exc).removeprefix("directory: ")) from exc
    return StoreSpec(kind="file", url=url, path=resolved)


def _parse_s3(url: str, netloc: str, path: str, query: str, fragment: str) -> StoreSpec:
    bucket = unquote(netloc)
    if not bucket:
        raise _fail(url, "missing bucket name (s3://bucket/prefix)")
    if "@" in bucket or ":" in bucket:
        raise _fail(
            url,
            "the bucket name cannot hold credentials or a port (credentials come from the "
            "AWS environment; an endpoint goes in ?endpoint_url=)",
        )
    if fragment:
        raise _fail(url, "s3 URLs take no '#' fragment")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise _fail(url, f"malformed query string ({exc})") from exc
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in _S3_PARAMS:
            known = ", ".join(sorted(_S3_PARAMS))
            raise _fail(url, f"unknown parameter {name!r} (known: {known})")
        if name in params:
            raise _fail(url, f"parameter {name!r} given twice")
        params[name] = value
    endpoint = params.get("endpoint_url") or None
    if endpoint is not None:
        ep = urlsplit(endpoint)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise _fail(url, f"endpoint_url must be http(s)://host[:port], not {endpoint!r}")
        try:
            ep.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise _fail(url, f"endpoint_url has a bad port ({exc})") from exc
    style = params.get("addressing_style", "auto") or "auto"
    if style not in ("auto", "path", "virtual"):
        raise _fail(url, f"addressing_style must be auto, path or virtual, not {style!r}")
    timeout: float | None = None
    if "timeout" in params:
        try:
            timeout = float(params["timeout"])
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout > 0):
            raise _fail(url, f"timeout must be positive seconds, not {params['timeout']!r}")
    return StoreSpec(
        kind="s3",
        url=url,
        bucket=bucket,
        prefix=unquote(path).strip("/"),
        endpoint_url=endpoint,
        region=params.get("region") or None,
        addressing_style=style,
        timeout=timeout,
    )
