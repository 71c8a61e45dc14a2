"""A ``prometheus_client`` collector for apps that serve their own ``/metrics``.

:class:`LeadershipCollector` reads a named leadership table at every scrape
and yields the families the health server's ``/metrics`` shows (both come
from :func:`fastelect.metrics.families`)::

    from prometheus_client import REGISTRY
    from fastelect.prometheus import LeadershipCollector

    REGISTRY.register(LeadershipCollector("myapp"))

Needs the optional extra: ``pip install 'fastelect[prometheus]'``.  Importing
:mod:`fastelect` alone never imports ``prometheus_client``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

try:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
except ModuleNotFoundError as exc:
    if exc.name is None or exc.name.partition(".")[0] != "prometheus_client":
        raise  # prometheus_client is there but a module it needs is not: its own message
    raise ModuleNotFoundError(
        "fastelect.prometheus needs prometheus_client: "
        "install it with pip install 'fastelect[prometheus]'",
        name="prometheus_client",
    ) from exc

from ._core import TableReader, attach, monotonic_ns, shm_path
from .errors import ConfigError, FastelectError, UntrustedTableError
from .metrics import Family, families

__all__ = ["LeadershipCollector"]

_log = logging.getLogger(__name__)


class LeadershipCollector:
    """Yield the leadership table ``table_name``'s metrics to ``prometheus_client``.

    Register it in a registry (``REGISTRY.register(LeadershipCollector(name))``);
    each scrape reads the table at that instant.  Like the health server, it
    maps the table read-only and maps it again by name when its owner closed
    it or died (a restarted elector makes a new table of the same name); while
    there is no live table it yields ``fastelect_table_attached 0``,
    ``fastelect_build_info`` and the other families without samples, exactly
    what the health server's ``/metrics`` shows then.

    ``describe()`` names the fixed families, so a registry refuses a second
    collector for the same names (two tables' series would collide: register
    them in separate registries).  Safe to scrape from several threads.

    The table is trusted as :func:`fastelect.attach` trusts it: owned by this
    process's user or by ``owner`` (a uid or a user name, when the elector
    runs as another user) or of group ``group``, and writable by no one else.  A table that fails
    is never read: scrapes show ``fastelect_table_attached 0``,
    :attr:`refused` holds the :class:`~fastelect.UntrustedTableError` (its
    owner and mode), and it is logged at ERROR once per owner and mode.
    """

    def __init__(
        self,
        table_name: str,
        *,
        owner: int | str | None = None,
        group: int | str | None = None,
    ) -> None:
        if not isinstance(table_name, str):
            raise ConfigError("table_name", f"must be a string, not {table_name!r}")
        try:
            shm_path(table_name)  # the core's own name rule
        except ValueError as exc:
            raise ConfigError("table_name", str(exc)) from exc
        if owner is not None and (isinstance(owner, bool) or not isinstance(owner, int | str)):
            raise ConfigError("owner", f"must be a uid, a user name or None, not {owner!r}")
        if isinstance(owner, int) and owner < 0:
            raise ConfigError("owner", f"must not be negative, not {owner}")
        if isinstance(owner, str):
            import pwd

            try:
                owner = pwd.getpwnam(owner).pw_uid  # once, not at every scrape
            except KeyError:
                raise ConfigError("owner", f"no such user {owner!r}") from None
        if group is not None and (
            isinstance(group, bool) or not isinstance(group, int | str) or group == ""
        ):
            raise ConfigError("group", f"must be a gid, a group name or None, not {group!r}")
        if isinstance(group, int) and group < 0:
            raise ConfigError("group", f"must not be negative, not {group}")
        if isinstance(group, str):
            import grp

            try:
                group = grp.getgrnam(group).gr_gid
            except KeyError:
                raise ConfigError("group", f"no such group {group!r}") from None
        self.table_name = table_name
        #: Whose tables are trusted besides this process's user (see the class docs).
        self.owner = owner
        #: A group whose tables are trusted too (its gid), or None.
        self.group = group
        #: Why the table under the name was last refused, or None.
        self.refused: UntrustedTableError | None = None
        self._reader: TableReader | None = None
        # prometheus_client's HTTP server scrapes from a thread per request.
        self._lock = threading.Lock()

    def _live_reader(self) -> TableReader | None:
        """The mapped table, mapped again when closed or orphaned; None while missing."""
        reader = self._reader
        if reader is not None and not reader.closed and not reader.stale:
            return reader
        self._reader = None
        if reader is not None:
            reader.close()
        try:
            fresh = attach(self.table_name, self.owner, group=self.group)
        except UntrustedTableError as exc:
            last = self.refused
            if last is None or (last.owner_uid, last.mode) != (exc.owner_uid, exc.mode):
                _log.error("%s; not exporting it", exc, extra={"table": self.table_name})
            self.refused = exc
            return None
        except (FastelectError, OSError):
            self.refused = None
            return None
        self.refused = None
        if fresh.closed or fresh.stale:
            fresh.close()
            return None
        self._reader = fresh
        return fresh

    def collect(self) -> Iterator[Metric]:
        """The table's metric families, read now."""
        with self._lock:
            read = families(self._live_reader(), monotonic_ns())
        for family in read:
            yield _to_prometheus(family)

    def describe(self) -> Iterator[Metric]:
        """The families every scrape yields, without samples (for the registry's name check)."""
        for family in families(None, 0):
            yield _to_prometheus(family._replace(samples=[]))

    def close(self) -> None:
        """Unmap the table (a later scrape maps it again)."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


def _to_prometheus(family: Family) -> Metric:
    kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
    # CounterMetricFamily takes the name without ``_total`` and strips it itself.
    metric = kind(family.name, family.help, labels=family.label_names)
    for values, value in family.samples:
        metric.add_metric(values, value)
    return metric
