"""``fastelect status``: who holds a lock, read straight from the store.

Liveness is judged from the record alone: a record that is not released and
whose ``lastUpdated`` is younger than its lease (``leaseMs``, or
``--leader-timeout`` for records without one, as s3lect writes them) looks
live.  That compares another host's wall clock with ours, so it is a hint for
operators and scripts, not the safety rule electors follow (they time leases
on their own clock that counts suspend, and never trust wall clocks by default).
Either way the record's age and whether its lease ran out by the wall clock
are shown, so a record six hours old never reads as just "live".
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from .. import table_gc
from ..errors import ObjectNotFound, RecordError
from ..record import format_time, parse_record
from . import _util
from .stores import StoreSpec, parse_store_url

__all__ = ["add_parser", "command", "read_status"]

_NS = 1_000_000_000


def add_parser(subparsers: Any) -> None:
    """Register ``status``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="show the current leader of a lock (exit 0: live leader, 3: none)",
        description="Read the lock record and print the leader, its address, term and last "
        "update, and whether the lease looks live. Exit status: 0 if a live leader exists, "
        "3 if none, 1 on errors.",
    )
    p.add_argument("--store", metavar="URL", help="file:///dir or s3://bucket/… (required)")
    p.add_argument(
        "--lock", type=_util.lock_key, default="leader.json", metavar="KEY", help="lock object key"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument(
        "--leader-timeout",
        type=_util.positive_seconds,
        default=15.0,
        metavar="S",
        help="lease assumed for records that carry none (s3lect's), default 15",
    )
    p.add_argument(
        "--tables",
        action="store_true",
        help="instead: list this host's leadership tables in /dev/shm and whether each is"
        " stale (owner dead or closed)",
    )
    p.add_argument(
        "--remove-stale",
        action="store_true",
        help="with --tables: remove this user's stale tables (never a live one)",
    )
    _util.add_logging_args(p)
    p.set_defaults(handler=command, status_parser=p)


def command(args: argparse.Namespace) -> int:
    """Print the status; 0 for a live leader, 3 for none."""
    _util.configure_logging(args)
    if args.tables:
        return _tables(args)
    if args.store is None:
        args.status_parser.error("the following arguments are required: --store (or --tables)")
    if args.remove_stale:
        args.status_parser.error("--remove-stale goes with --tables")
    # Status only reads: a missing directory is the file store's "no such
    # bucket", most likely a typo in the URL, and is never made.
    spec = parse_store_url(args.store, create=None)
    info = _util.run_async(read_status(spec, args.lock, args.leader_timeout))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        sys.stdout.write(_render(info))
    sys.stdout.flush()
    return _util.EXIT_OK if info["live"] else _util.EXIT_NO_LEADER


async def read_status(spec: StoreSpec, lock: str, default_lease: float) -> dict[str, Any]:
    """Read ``lock`` once and describe it (the ``--json`` document)."""
    storage = spec.create()
    try:
        where = storage.describe(lock)
        try:
            body, etag = await storage.get(lock)
        except ObjectNotFound:
            return {"lock": where, "exists": False, "live": False, "state": "no record"}
    finally:
        await storage.close()
    try:
        record = parse_record(body)
    except RecordError as exc:
        raise _util.CLIError(
            f"the lock record at {where} is unreadable: {exc} (electors replace it once it has "
            "kept one etag for their own lease)"
        ) from exc
    now = time.time_ns()
    lease_s = record.lease_ms / 1000 if record.lease_ms > 0 else default_lease
    age_s = None if record.last_updated_ns is None else (now - record.last_updated_ns) / _NS
    if record.released:
        state, live = "released", False
    elif age_s is not None and age_s < lease_s:
        state, live = "live", True
    else:
        state, live = "expired", False
    # By this host's wall clock: negative once the lease ran out.
    left_s = None if age_s is None else lease_s - age_s
    return {
        "lock": where,
        "exists": True,
        "live": live,
        "state": state,
        "leader_id": record.leader_id,
        "leader_addr": record.leader_addr,
        "term": record.term,
        "last_updated": None if record.released else format_time(record.last_updated_ns),
        "age_seconds": None if age_s is None else round(age_s, 3),
        "lease_seconds": lease_s,
        "lease_left_seconds": None if left_s is None else round(left_s, 3),
        "lease_ran_out": None if left_s is None else left_s <= 0,
        "long_lease": lease_s > 10 * default_lease,
        "released": record.released,
        "etag": etag,
    }


def _tables(args: argparse.Namespace) -> int:
    """List (and with --remove-stale, sweep) the leadership tables in /dev/shm."""
    removed = {info.path for info in table_gc.remove_stale_tables()} if args.remove_stale else set()
    tables = table_gc.list_tables()
    listed = [
        {
            "name": info.name,
            "path": info.path,
            "state": info.state,
            "stale": info.stale,
            "owner_pid": info.owner_pid,
            "version": info.version,
            "created": format_time(info.created_wall_ns) if info.created_wall_ns else None,
            "uid": info.uid,
        }
        for info in tables
    ]
    if args.json:
        document = {"tables": listed, "removed": sorted(removed)}
        sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        for path in sorted(removed):
            sys.stdout.write(f"removed {path}\n")
        if not listed:
            sys.stdout.write(f"no leadership tables in {table_gc.SHM_DIR}\n")
        for row in listed:
            sys.stdout.write(
                f"{row['name']}: {row['state']}, owner pid {row['owner_pid'] or '-'},"
                f" created {row['created'] or '-'}\n"
            )
    sys.stdout.flush()
    return _util.EXIT_OK


def _render(info: dict[str, Any]) -> str:
    rows = [("lock", info["lock"])]
    if not info["exists"]:
        rows.append(("state", "no record: nobody has campaigned for this lock yet"))
    else:
        if info["released"]:
            updated = "released (the last leader handed the lock back)"
        else:
            updated = f"{info['last_updated']} ({info['age_seconds']:.1f} s ago)"
        state = {
            "live": "live: the lease looks current by this host's clock",
            "released": "no leader: released, anyone may take it at once",
            "expired": "no leader: no renewal for longer than the lease "
            f"({info['lease_seconds']:g} s)",
        }[info["state"]]
        lease = f"{info['lease_seconds']:g} s"
        left = info["lease_left_seconds"]
        if left is not None:
            # The wall-clock view: how long ago the lease ran out, or when it will.
            when = f"ran out {-left:.1f} s ago" if left <= 0 else f"runs out in {left:.1f} s"
            lease += f" ({when} by this host's clock)"
        if info["long_lease"]:
            lease += "; more than 10x --leader-timeout: a dead holder blocks the election that long"
        rows += [
            ("leader", info["leader_id"]),
            ("address", info["leader_addr"] or "-"),
            ("term", str(info["term"])),
            ("last update", updated),
            ("lease", lease),
            ("state", state),
        ]
    width = max(len(name) for name, _ in rows) + 1
    return "".join(f"{name + ':':<{width}} {value}\n" for name, value in rows)
