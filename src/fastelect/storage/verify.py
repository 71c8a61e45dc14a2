"""Prove that a store enforces the conditional writes fastelect relies on.

Some S3-compatible stores and older gateways accept ``If-None-Match`` and
``If-Match`` and then ignore them: every write succeeds, two nodes can both
"win", and nothing warns. :func:`verify_storage` finds out on the user's real
store, with the user's real credentials, by writing one throw-away object
(``<prefix>/.fastelect-check-<random>``) and checking, in order:

``create``
    ``If-None-Match: *`` creates a missing object.
``create-refuses-existing``
    ``If-None-Match: *`` on an existing object is refused (412 or 409).
``replace-current``
    ``If-Match`` with the current etag succeeds and yields a new etag.
``refuse-stale``
    ``If-Match`` with an etag the object no longer has is refused.
``read-after-write``
    A read right after each successful write returns that write's body and etag.
``distinct-etags``
    Every successful write returned a non-empty etag no other write returned.

Then, as information that does not change the verdict, it reports the
bucket's own guard: whether an *unconditional* overwrite of the probe object
is refused (an S3 bucket policy can require ``s3:if-match`` /
``s3:if-none-match`` on PutObject, so no script or foreign client can clobber
a lock by accident; docs/operations.md#require-conditional-writes). Only
stores that can send an unconditional write (S3) are asked.

It also estimates the store's clock offset from this host (S3: the ``Date``
header of a HeadBucket; not applicable to local stores), then deletes the
object and says what was left behind if it could not. Electors never depend
on that offset (leases are timed on the local clock); it is reported because
``max_clock_skew`` and ``fastelect status`` compare wall clocks.

A failed check is proof that the store is unfit. A storage error that stops
the probe (unreachable endpoint, refused credentials, missing bucket) leaves
the verdict ``"unknown"``: the store could not be checked.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import (
    BucketNotFound,
    ConfigError,
    ObjectNotFound,
    PreconditionFailed,
    StorageAuthError,
    StorageError,
    StorageUnavailable,
)
from .base import Storage

__all__ = [
    "CHECK_NAMES",
    "CheckResult",
    "SupportsDelete",
    "SupportsServerTime",
    "SupportsUnconditionalPut",
    "VerifyReport",
    "verify_storage",
]

#: The checks every report lists, in the order they run.
CHECK_NAMES = (
    "create",
    "create-refuses-existing",
    "replace-current",
    "refuse-stale",
    "read-after-write",
    "distinct-etags",
)

#: What the probe's object names start with (after the prefix).
PROBE_NAME = ".fastelect-check-"

_NS = 1_000_000_000
# Failures that stop the probe: the store could not be checked, which proves
# nothing about its conditional writes either way.
_CANNOT_CHECK = (StorageUnavailable, StorageAuthError, BucketNotFound)


@runtime_checkable
class SupportsDelete(Protocol):
    """A store that can remove an object (what the probe cleans up with)."""

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...


@runtime_checkable
class SupportsServerTime(Protocol):
    """A store that can tell its own wall-clock time (S3: the ``Date`` header)."""

    async def server_time(self) -> tuple[int, int, float | None]:
        """(local ns before the request, local ns after the answer, server time or None).

        Local times are ``time.time_ns()``; the server time is POSIX seconds
        (the HTTP ``Date`` header: whole seconds), None if the store sent none.
        """
        ...


@runtime_checkable
class SupportsUnconditionalPut(Protocol):
    """A store that can write without a condition (only the guard probe does)."""

    async def put_unconditional(self, key: str, body: bytes) -> str:
        """Write ``body`` at ``key`` whatever is there; return the new etag."""
        ...


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check."""

    #: One of :data:`CHECK_NAMES`.
    name: str
    #: True passed, False failed (the store is unfit), None not run (an earlier
    #: step failed or the probe was stopped by a storage error).
    passed: bool | None
    #: What was done and what happened, for humans.
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Everything :func:`verify_storage` found out about one store."""

    #: The probe object's key (relative to the store, like a lock's key).
    key: str
    #: Where the probe object was written (``storage.describe(key)``).
    probe: str
    #: One result per name in :data:`CHECK_NAMES`, in that order.
    checks: tuple[CheckResult, ...]
    #: Store clock minus this host's clock, in seconds; None when not applicable
    #: (local stores) or not measured.
    clock_offset: float | None = None
    #: Half-width of the interval ``clock_offset`` is known to within (seconds).
    clock_uncertainty: float | None = None
    #: How the offset was measured, or why it was not.
    clock_detail: str = ""
    #: Objects the probe wrote and could not remove (``describe`` form).
    left_behind: tuple[str, ...] = ()
    #: What cleanup did.
    cleanup: str = ""
    #: The storage error that stopped the probe, if any (then the verdict is
    #: "unknown" unless a check had already failed).
    error: str | None = None
    #: Seconds the probe took.
    duration: float = 0.0
    #: Whether the store refused an unconditional overwrite of the probe: True
    #: refused (a policy requires conditional writes), False allowed, None not
    #: asked (local store, or the probe stopped) or not measured.  Information
    #: only: it never changes the verdict.
    guard_enforced: bool | None = None
    #: What the guard probe did, for humans.
    guard_detail: str = ""

    @property
    def verdict(self) -> Literal["fit", "unfit", "unknown"]:
        """ "unfit" if any check failed, "unknown" if the probe was stopped, else "fit"."""
        if any(check.passed is False for check in self.checks):
            return "unfit"
        if self.error is not None or any(check.passed is None for check in self.checks):
            return "unknown"
        return "fit"

    @property
    def fit(self) -> bool:
        """True only if every check ran and passed."""
        return self.verdict == "fit"

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        """The checks that failed."""
        return tuple(check for check in self.checks if check.passed is False)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready description (what ``fastelect check --json`` prints)."""
        return {
            "verdict": self.verdict,
            "fit": self.fit,
            "key": self.key,
            "probe": self.probe,
            "checks": [
                {"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.checks
            ],
            "clock_offset_seconds": _rounded(self.clock_offset),
            "clock_uncertainty_seconds": _rounded(self.clock_uncertainty),
            "clock_detail": self.clock_detail,
            "left_behind": list(self.left_behind),
            "cleanup": self.cleanup,
            "error": self.error,
            "duration_seconds": round(self.duration, 3),
            "guard_enforced": self.guard_enforced,
            "guard_detail": self.guard_detail,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def probe_key(prefix: str = "") -> str:
    """A fresh probe key under ``prefix`` (validated; raises ConfigError naming ``prefix``)."""
    if "\0" in prefix:
        raise ConfigError("prefix", f"{prefix!r} contains a NUL byte")
    parts = prefix.strip("/").split("/") if prefix.strip("/") else []
    if any(part in ("", ".", "..") for part in parts):
        raise ConfigError("prefix", f"{prefix!r} has an empty, '.' or '..' path component")
    return "/".join([*parts, PROBE_NAME + secrets.token_hex(8)])


class _Probe:
    """One run of the probe: the writes it made and what it learned."""

    def __init__(self, storage: Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.where = storage.describe(key)
        self.results: dict[str, CheckResult] = {}
        # Every successful write, in order: (label, body, etag).
        self.writes: list[tuple[str, bytes, str]] = []
        # True once a write may have landed (sent, outcome unknown counts).
        self.maybe_written = False
        self._token = secrets.token_hex(8)

    def body(self, label: str) -> bytes:
        # Every write's bytes differ, so content-hash etags (S3's MD5) differ too.
        return f'{{"fastelect-check": "{self._token}", "write": "{label}"}}'.encode()

    def record(self, name: str, passed: bool | None, detail: str) -> None:
        self.results[name] = CheckResult(name, passed, detail)

    async def put(self, label: str, etag: str) -> str:
        """One conditional write; records it if it succeeds."""
        body = self.body(label)
        self.maybe_written = True
        new_etag = await self.storage.put_if_match(self.key, body, etag)
        self.writes.append((label, body, new_etag))
        return new_etag

    async def read_back(self, label: str, problems: list[str]) -> None:
        """Read right after a write; note a mismatch in ``problems``."""
        _, body, etag = self.writes[-1]
        try:
            got_body, got_etag = await self.storage.get(self.key)
        except ObjectNotFound:
            problems.append(f"after the {label} write (etag {etag}) a read found no object")
            return
        if got_body != body or got_etag != etag:
            problems.append(
                f"after the {label} write (etag {etag}) a read returned"
                f" {'the written body' if got_body == body else 'another body'}"
                f" with etag {got_etag}"
            )

    async def run(self) -> None:
        """The checks, in order; a storage error that is not an answer propagates."""
        read_problems: list[str] = []
        reads = 0

        # 1. Create a missing object.
        try:
            current = await self.put("create", "")
        except PreconditionFailed as exc:
            self.record(
                "create",
                False,
                f"If-None-Match: * on a missing object was refused ({exc}); the store"
                " refuses creates it should accept",
            )
            return
        except StorageError as exc:
            if isinstance(exc, _CANNOT_CHECK):
                raise
            self.record("create", False, f"If-None-Match: * on a missing object failed: {exc}")
            return
        self.record("create", True, f"If-None-Match: * created the object (etag {current})")
        await self.read_back("create", read_problems)
        reads += 1

        # 2. Create again: must be refused.
        try:
            overwrote = await self.put("create-again", "")
        except PreconditionFailed as exc:
            self.record(
                "create-refuses-existing",
                True,
                f"If-None-Match: * on the existing object was refused ({_short(exc)})",
            )
        except StorageError as exc:
            if isinstance(exc, _CANNOT_CHECK):
                raise
            self.record(
                "create-refuses-existing",
                False,
                f"If-None-Match: * on the existing object failed with an error that is not"
                f" 412/409: {exc}",
            )
        else:
            current = overwrote
            self.record(
                "create-refuses-existing",
                False,
                "If-None-Match: * on an existing object succeeded and replaced it (new etag"
                f" {overwrote}): the store ignores If-None-Match, so two nodes could both"
                " create the lock",
            )

        # 3. Replace with the current etag: must succeed with a new etag.
        stale = current
        try:
            replaced = await self.put("replace", current)
        except PreconditionFailed as exc:
            self.record(
                "replace-current",
                False,
                f"If-Match: {current} (the current etag) was refused ({_short(exc)}); a"
                " leader could never renew",
            )
            self.record("refuse-stale", None, "not run: no replace succeeded to make an etag stale")
        except StorageError as exc:
            if isinstance(exc, _CANNOT_CHECK):
                raise
            self.record("replace-current", False, f"If-Match: {current} failed: {exc}")
            self.record("refuse-stale", None, "not run: no replace succeeded to make an etag stale")
        else:
            if replaced == current:
                self.record(
                    "replace-current",
                    False,
                    f"If-Match: {current} succeeded but the etag did not change",
                )
            else:
                self.record(
                    "replace-current",
                    True,
                    f"If-Match: {current} succeeded with a new etag {replaced}",
                )
            current = replaced
            await self.read_back("replace", read_problems)
            reads += 1

            # 4. Replace with the now stale etag: must be refused.
            try:
                landed = await self.put("stale", stale)
            except PreconditionFailed as exc:
                self.record(
                    "refuse-stale",
                    True,
                    f"If-Match: {stale} (stale; current {current}) was refused ({_short(exc)})",
                )
            except StorageError as exc:
                if isinstance(exc, _CANNOT_CHECK):
                    raise
                self.record(
                    "refuse-stale",
                    False,
                    f"If-Match: {stale} (stale) failed with an error that is not 412/409: {exc}",
                )
            else:
                self.record(
                    "refuse-stale",
                    False,
                    f"If-Match: {stale} (stale; current {current}) succeeded (new etag"
                    f" {landed}): the store ignores If-Match, so a node could take over a"
                    " lock that was renewed under it",
                )

        # 5. Read-after-write, over every read made above.
        if read_problems:
            self.record("read-after-write", False, "; ".join(read_problems))
        else:
            self.record(
                "read-after-write",
                True,
                f"{reads} read(s) right after a write returned that write's body and etag",
            )

        # 6. Distinct etags over every successful write.
        etags = [etag for _, _, etag in self.writes]
        if any(not etag.strip('"') for etag in etags):
            self.record("distinct-etags", False, f"the store returned an empty etag: {etags}")
        elif len(set(etags)) != len(etags):
            self.record(
                "distinct-etags",
                False,
                f"{len(etags)} writes of different bytes returned repeating etags {etags}:"
                " a stale If-Match could match a newer object (ABA)",
            )
        else:
            self.record("distinct-etags", True, f"{len(etags)} writes, {len(etags)} distinct etags")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


async def _clock(storage: Storage) -> tuple[float | None, float | None, str]:
    """(offset, uncertainty, detail) of the store's clock relative to this host's."""
    if not isinstance(storage, SupportsServerTime):
        return None, None, "not applicable: the store keeps no clock of its own (local store)"
    try:
        before, after, server = await storage.server_time()
    except StorageError as exc:
        # Informational only: a failure here says nothing about conditional writes.
        return None, None, f"not measured: {_short(exc)}"
    if server is None:
        return None, None, "not measured: the store's answer carried no Date header"
    # The Date header truncates to whole seconds, so the store's clock read
    # somewhere in [server, server + 1) at some instant in [before, after].
    low = server - after / _NS
    high = server + 1 - before / _NS
    offset = (low + high) / 2
    uncertainty = (high - low) / 2
    direction = "ahead of" if offset >= 0 else "behind"
    return (
        offset,
        uncertainty,
        f"the store's clock is {abs(offset):.2f} s {direction} this host's (± {uncertainty:.2f}"
        " s: the Date header has whole-second resolution)",
    )


GUARD_DOC = "docs/operations.md#require-conditional-writes"


async def _guard(probe: _Probe) -> tuple[bool | None, str]:
    """(enforced, detail): is an unconditional overwrite of the probe refused?"""
    storage = probe.storage
    if not isinstance(storage, SupportsUnconditionalPut):
        return None, "not applicable: only S3 stores take bucket policies"
    try:
        await storage.put_unconditional(probe.key, b'{"fastelect-check": "guard"}')
    except StorageAuthError:
        return True, (
            "an unconditional overwrite under the prefix was refused (403): the bucket"
            " requires conditional writes there"
        )
    except StorageError as exc:
        return None, f"not measured: {_short(exc)}"
    return False, (
        "an unconditional overwrite under the prefix was allowed: any client with write"
        f" access can clobber a lock; a bucket policy can forbid that ({GUARD_DOC})"
    )


async def _cleanup(probe: _Probe) -> tuple[tuple[str, ...], str]:
    """Delete the probe object; (left behind, what happened)."""
    storage = probe.storage
    if not probe.maybe_written:
        return (), "nothing to delete: the probe wrote nothing"
    if not isinstance(storage, SupportsDelete):
        return (probe.where,), f"left {probe.where}: this storage has no delete(); remove it"
    try:
        await storage.delete(probe.key)
    except StorageAuthError as exc:
        return (probe.where,), (
            f"delete not permitted, left {probe.where} (remove it by hand or allow"
            f" s3:DeleteObject on the prefix): {_short(exc)}"
        )
    except StorageError as exc:
        return (probe.where,), f"delete failed, left {probe.where}: {_short(exc)}"
    # Prove it is gone: a store may answer a delete it did not carry out.
    try:
        await storage.get(probe.key)
    except ObjectNotFound:
        return (), f"deleted {probe.where}"
    except StorageError as exc:
        return (probe.where,), f"deleted {probe.where} but could not confirm it: {_short(exc)}"
    return (probe.where,), f"the store accepted the delete but {probe.where} is still there"


async def verify_storage(storage: Storage, *, prefix: str = "") -> VerifyReport:
    """Probe ``storage`` and report whether it enforces conditional writes.

    Writes one object under ``prefix`` (``<prefix>/.fastelect-check-<random>``),
    deletes it afterwards, and never raises for what the store does: storage
    errors end up in :attr:`VerifyReport.error`. Raises ConfigError for a bad
    ``prefix``. The storage is left open.
    """
    key = probe_key(prefix)
    probe = _Probe(storage, key)
    started = time.monotonic()
    error: str | None = None
    offset: float | None = None
    uncertainty: float | None = None
    clock_detail = "not measured: the probe stopped before it"
    guard: bool | None = None
    guard_detail = "not asked: the probe stopped before it"
    try:
        await storage.check()
        await probe.run()
        offset, uncertainty, clock_detail = await _clock(storage)
        if probe.maybe_written:
            guard, guard_detail = await _guard(probe)
    except StorageError as exc:
        error = " ".join(str(exc).split()) or type(exc).__name__
    finally:
        left_behind, cleanup = await _cleanup(probe)
    for name in CHECK_NAMES:
        if name not in probe.results:
            why = "the probe was stopped by a storage error" if error else "an earlier step failed"
            probe.record(name, None, f"not run: {why}")
    return VerifyReport(
        key=key,
        probe=probe.where,
        checks=tuple(probe.results[name] for name in CHECK_NAMES),
        clock_offset=offset,
        clock_uncertainty=uncertainty,
        clock_detail=clock_detail,
        left_behind=left_behind,
        cleanup=cleanup,
        error=error,
        duration=time.monotonic() - started,
        guard_enforced=guard,
        guard_detail=guard_detail,
    )
