"""The Prometheus metric families of a leadership table, defined once for every exporter.

:func:`families` reads a :class:`~fastelect.TableReader` (or ``None`` for a
missing table) and returns plain, structured families: name, type, help
text, label names and samples.  Two exporters render them:

* the health server's ``/metrics`` (:func:`fastelect.health.app.render_metrics`),
  as text exposition format 0.0.4 through :func:`exposition`;
* :class:`fastelect.prometheus.LeadershipCollector`, as ``prometheus_client``
  metric families for an app that serves its own ``/metrics``.

So both show the same families with the same values, and a new gauge or
counter is added here only.  This module imports nothing beyond the core:
granian's health workers load it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any, NamedTuple

from . import __version__
from ._core import COUNTER_NAMES, ROLE_NAMES, TableReader
from .errors import FastelectError

__all__ = ["COUNTER_HELP", "Family", "Sample", "TableBusy", "exposition", "families", "snapshot"]

_log = logging.getLogger(__name__)

# A snapshot fails when the writer stayed inside its seqlock section (e.g. the
# OS descheduled it mid-write); yield the CPU and try again this many times.
_BUSY_RETRIES = 8
_NS = 1e9

#: What each table counter means, for the counters' help text.
COUNTER_HELP = {
    "renewals": "Successful lease renewals by this node.",
    "failed_writes": "Writes whose outcome was unknown (timeouts, transport errors, 5xx).",
    "transitions": "Leadership transitions of this node (acquired or lost).",
    "peer_checks": "Peer health checks made instead of storage reads.",
    "peer_failures": "Peer health checks that failed and sent this node back to storage.",
    "reads": "Lock record reads that returned an answer.",
    "record_errors": "Lock records that could not be parsed.",
    "acquisitions": "Leaderships won by this node.",
    "losses": "Leaderships of this node that ended.",
    "writes": "Conditional writes started.",
    "storage_errors": "Failed storage reads.",
    "conflicts": "Conditional writes that lost (HTTP 412/409).",
    "duplicate_ids": "Other live processes seen writing under this node's server id.",
    "shed_steps": "Polls and campaigns an overloaded scheduler put back.",
    "overload_stepdowns": "Leaderships an overloaded scheduler gave up so the rest stay renewed.",
}


class Sample(NamedTuple):
    """One series of a family: its label values (in the family's label order) and value."""

    label_values: tuple[str, ...]
    value: int | float


class Family(NamedTuple):
    """One metric family, as the text exposition names it.

    ``name`` is the full exposed name (a counter's ends in ``_total``);
    ``type`` is ``"gauge"`` or ``"counter"``; every sample carries one value
    per name in ``label_names``.
    """

    name: str
    type: str
    help: str
    label_names: tuple[str, ...]
    samples: list[Sample]


class TableBusy(FastelectError):
    """A slot stayed mid-write for every snapshot attempt."""


def snapshot(reader: TableReader, election: str) -> dict[str, Any] | None:
    """``reader.status(election)``, retried while a writer holds the slot's seqlock.

    Raises :class:`TableBusy` when every attempt found the slot mid-write.
    """
    for _ in range(_BUSY_RETRIES):
        try:
            return reader.status(election)
        except FastelectError:
            # Let a descheduled writer on this CPU finish its section.
            os.sched_yield()
    # In a health worker granian sends stderr to its log: this lands there.
    _log.warning("leadership slot of %r stayed busy over %d tries", election, _BUSY_RETRIES)
    raise TableBusy(f"the slot of election {election!r} stayed busy")


def families(reader: TableReader | None, now_ns: int) -> list[Family]:
    """The table's metric families, read now.

    ``reader`` is ``None`` when the table is missing or its owner is gone:
    then ``fastelect_table_attached`` is 0 and the per-election families
    have no samples.  ``now_ns`` is the lease clock
    (:func:`fastelect._core.monotonic_ns`, CLOCK_BOOTTIME on Linux); the
    gauges derived from deadlines and heartbeats use it.  A slot that stays
    mid-write through every snapshot attempt is left out of this read rather
    than failing it.
    """
    statuses: list[tuple[str, dict[str, Any]]] = []
    if reader is not None:
        for election in reader.elections():
            try:
                status = snapshot(reader, election)
            except TableBusy:
                continue
            if status is not None:
                statuses.append((election, status))
    election_only = ("election",)
    lease_left = [(e, max(0, st["lease_until_ns"] - now_ns)) for e, st in statuses]
    out = [
        Family(
            "fastelect_build_info",
            "gauge",
            "The fastelect version exporting these metrics, as the label version; always 1.",
            ("version",),
            [Sample((__version__,), 1)],
        ),
        Family(
            "fastelect_table_attached",
            "gauge",
            "Whether the leadership table is mapped (1) or missing (0).",
            (),
            [Sample((), int(reader is not None))],
        ),
        Family(
            "fastelect_is_leader",
            "gauge",
            "1 while this node holds a live lease for the election, else 0.",
            election_only,
            [Sample((e,), int(left > 0)) for e, left in lease_left],
        ),
        Family(
            "fastelect_role",
            "gauge",
            "The node's role in the election: one series per role, 1 for the current one.",
            ("election", "role"),
            [Sample((e, r), int(st["role"] == r)) for e, st in statuses for r in ROLE_NAMES],
        ),
        Family(
            "fastelect_term",
            "gauge",
            "Fencing term of the current leadership (ours when leading, else the observed one).",
            election_only,
            [Sample((e,), st["term"]) for e, st in statuses],
        ),
        Family(
            "fastelect_lease_remaining_seconds",
            "gauge",
            "Seconds left on this node's lease (0 unless leader).",
            election_only,
            [Sample((e,), left / _NS) for e, left in lease_left],
        ),
        Family(
            "fastelect_last_cycle_age_seconds",
            "gauge",
            "Seconds since the election loop last completed a cycle.",
            election_only,
            [Sample((e,), max(0, now_ns - st["last_cycle_mono_ns"]) / _NS) for e, st in statuses],
        ),
        Family(
            "fastelect_watchdog_seconds",
            "gauge",
            "Heartbeat age beyond which /healthz reports the election's loop as stuck.",
            election_only,
            [Sample((e,), st["watchdog_ns"] / _NS) for e, st in statuses],
        ),
    ]
    # In the table's order; a counter this module has no help text for still appears.
    names = list(COUNTER_NAMES)
    names += [c for _, st in statuses for c in st["counters"] if c not in COUNTER_HELP]
    out.extend(
        Family(
            f"fastelect_{counter}_total",
            "counter",
            COUNTER_HELP.get(counter, f"Table counter {counter}."),
            election_only,
            [Sample((e,), st["counters"].get(counter, 0)) for e, st in statuses],
        )
        for counter in dict.fromkeys(names)
    )
    return out


def _label(value: str) -> str:
    """Escape a Prometheus label value."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(metric_families: Iterable[Family]) -> bytes:
    """The families as Prometheus text exposition format 0.0.4 (a trailing newline included)."""
    out: list[str] = []
    # The same label sets recur in every per-election family: escape each once.
    label_text: dict[tuple[str, ...], dict[tuple[str, ...], str]] = {}
    for name, kind, help_text, keys, samples in metric_families:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        if not keys:
            out.extend(f"{name} {value}" for _, value in samples)
            continue
        known = label_text.setdefault(keys, {})
        for values, value in samples:
            labels = known.get(values)
            if labels is None:
                labels = ",".join(f'{k}="{_label(v)}"' for k, v in zip(keys, values, strict=True))
                known[values] = labels
            out.append(f"{name}{{{labels}}} {value}")
    out.append("")
    return "\n".join(out).encode()
