"""``is_leader()`` for a worker process, answered by the host's elector.

One elector per host (``fastelect run --shm NAME``, a sidecar, or an
:class:`~fastelect.Elector` given a named :class:`~fastelect.LeadershipTable`)
publishes its leadership into shared memory; every worker on the host (a
gunicorn or uvicorn worker, a ``multiprocessing`` pool) asks a
:class:`HostLeadership` instead of campaigning itself.  See
docs/sync-apps.md#multi-process-servers-one-elector-per-host-workers-attach.
"""

from __future__ import annotations

import logging
import time

from ._core import TableReader, attach
from .errors import FastelectError, UntrustedTableError

__all__ = ["HostLeadership"]

_log = logging.getLogger(__name__)

#: How often, at most, a False answer looks for a (new) table: attaching maps
#: a segment, so a hot path that asks a million times a second must not.
RECHECK_SECONDS = 1.0


class HostLeadership:
    """``is_leader()`` for a worker process, answered by the host's elector.

    Attaches lazily (the elector may start after the worker) and again when
    the table it mapped was closed or its owner died (the elector restarted),
    looking for that at most once per :data:`RECHECK_SECONDS`.  True only
    while the host's elector holds an unexpired lease for ``election``; the
    lease is checked at every call, in C, like :meth:`fastelect.Elector.is_leader`.

    An ``election`` the table does not hold is reported once at WARNING, with
    the names it does hold, and answers False.

    The table is trusted as :func:`fastelect.attach` trusts it: owned by this
    process's user or by ``owner`` (a uid or user name: the elector runs as
    another user) or of group ``group`` (a gid or group name), and writable
    by no one else.  A table that fails the test
    is refused: ``is_leader()`` answers False, :attr:`refused` holds the
    :class:`~fastelect.UntrustedTableError` (its owner and mode), and it is
    logged at ERROR once per owner and mode.  Liveness is the elector's lock
    on the table, so the elector may be in another PID namespace.
    """

    __slots__ = (
        "_checked",
        "_election",
        "_group",
        "_missing_reported",
        "_name",
        "_owner",
        "_reader",
        "_refused",
    )

    def __init__(
        self,
        table_name: str,
        election: str = "default",
        *,
        owner: int | str | None = None,
        group: int | str | None = None,
    ) -> None:
        if not isinstance(table_name, str) or not table_name:
            raise TypeError("table_name must be a non-empty str")
        if not isinstance(election, str) or not election:
            raise TypeError("election must be a non-empty str")
        if owner is not None and (isinstance(owner, bool) or not isinstance(owner, int | str)):
            raise TypeError(f"owner must be a uid (int), a user name (str) or None, not {owner!r}")
        if group is not None and (isinstance(group, bool) or not isinstance(group, int | str)):
            raise TypeError(f"group must be a gid (int), a group name (str) or None, not {group!r}")
        self._name = table_name
        self._election = election
        self._owner = owner
        self._group = group
        self._reader: TableReader | None = None
        self._checked = float("-inf")
        self._missing_reported = False
        self._refused: UntrustedTableError | None = None

    @property
    def table_name(self) -> str:
        """The leadership table this object reads."""
        return self._name

    @property
    def election(self) -> str:
        """The election whose leadership it reports."""
        return self._election

    @property
    def refused(self) -> UntrustedTableError | None:
        """Why the table last found under the name was refused (None: it was not)."""
        return self._refused

    def is_leader(self) -> bool:
        """True while the host's elector leads ``election`` (see the class docs)."""
        reader = self._reader
        if reader is not None and reader.is_leader(self._election):
            return True  # the hot path: one read of shared memory
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return False
        self._checked = now
        if reader is None or reader.closed or reader.stale:
            if reader is not None:
                reader.close()
            self._reader = reader = self._attach()
            if reader is None:
                return False
        if self._election not in reader.elections():
            self._report_missing(reader)
            return False
        return reader.is_leader(self._election)

    def close(self) -> None:
        """Unmap the table (the next ``is_leader()`` maps it again)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _attach(self) -> TableReader | None:
        try:
            reader = attach(self._name, self._owner, group=self._group)
        except UntrustedTableError as exc:
            if self._refused is None or (self._refused.owner_uid, self._refused.mode) != (
                exc.owner_uid,
                exc.mode,
            ):
                _log.error("%s; is_leader() answers False", exc, extra={"table": self._name})
            self._refused = exc
            return None
        except (FastelectError, OSError) as exc:
            _log.debug(
                "leadership table %r not attached: %s", self._name, exc, extra={"table": self._name}
            )
            return None  # the host's elector is not running (yet)
        self._refused = None
        return reader

    def _report_missing(self, reader: TableReader) -> None:
        if self._missing_reported:
            return
        held = reader.elections()
        if not held:
            return  # an elector that has not claimed its slot yet: not news
        self._missing_reported = True
        _log.warning(
            "leadership table %r holds no election %r (it holds %s): is_leader() answers False"
            " until one appears; check the election name",
            self._name,
            self._election,
            ", ".join(repr(name) for name in held),
            extra={"table": self._name, "election": self._election},
        )
