"""``fastelect check``: prove a store enforces conditional writes, before trusting it.

Runs :func:`fastelect.storage.verify_storage` against the store named by
``--store`` with this host's credentials: one throw-away object under
``<prefix>/.fastelect-check-<random>``, written, conditionally rewritten,
read back and deleted.  Exit status: 0 the store is fit, 1 it is not (a
check failed: it ignores ``If-None-Match`` / ``If-Match``, reads stale data or
repeats etags), 2 it could not be checked (bad input, unreachable endpoint,
refused credentials, missing bucket or directory).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from ..errors import ConfigError, FastelectError
from ..storage.verify import VerifyReport, verify_storage
from . import _util
from .stores import StoreSpec, add_create_store_arg, parse_store_url

__all__ = ["EXIT_CANNOT_CHECK", "EXIT_FIT", "EXIT_UNFIT", "add_parser", "command", "run_check"]

#: Every check passed: fastelect's guarantees hold on this store.
EXIT_FIT = 0
#: A check failed: the store does not enforce what fastelect relies on.
EXIT_UNFIT = 1
#: The store could not be checked (bad input, unreachable, refused, missing).
EXIT_CANNOT_CHECK = 2

_MARK = {True: "pass", False: "FAIL", None: "----"}


def add_parser(subparsers: Any) -> None:
    """Register ``check``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "check",
        help="prove a store enforces conditional writes (exit 0 fit, 1 unfit, 2 could not check)",
        description="Write, conditionally rewrite, read back and delete one throw-away object "
        "(<prefix>/.fastelect-check-<random>) to prove that the store refuses a create over an "
        "existing object and a stale If-Match, accepts a current If-Match with a new etag, "
        "returns what was just written and never repeats an etag; also estimates the store's "
        "clock offset. Exit status: 0 fit, 1 not fit, 2 could not check.",
    )
    p.add_argument("--store", required=True, metavar="URL", help="file:///dir or s3://bucket/…")
    p.add_argument(
        "--prefix",
        default="",
        metavar="P",
        help="write the probe object under this key prefix inside the store (e.g. where your "
        "locks live, if permissions differ by prefix); default: the store's root",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    add_create_store_arg(p)
    _util.add_logging_args(p)
    p.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """Probe the store; 0 fit, 1 unfit, 2 could not check."""
    _util.configure_logging(args)
    try:
        # A missing directory is most likely a typo: the probe makes it only
        # with --create-store.
        spec = parse_store_url(args.store, create=args.create_store)
        report = _util.run_async(run_check(spec, args.prefix))
    except (FastelectError, OSError) as exc:
        # Here even bad input means "could not check" (2), not "unfit" (1).
        sys.stderr.write(f"fastelect: error: {_util.one_line(exc)}\n")
        return EXIT_CANNOT_CHECK
    if args.json:
        document = {"store": spec.url, **report.as_dict()}
        sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        sys.stdout.write(render(spec.url, report))
    sys.stdout.flush()
    if report.verdict == "unknown":
        sys.stderr.write(f"fastelect: error: could not check {spec.url}: {report.error}\n")
        return EXIT_CANNOT_CHECK
    return EXIT_FIT if report.fit else EXIT_UNFIT


async def run_check(spec: StoreSpec, prefix: str) -> VerifyReport:
    """Create the store on this loop, probe it, close it."""
    storage = spec.create()
    try:
        return await verify_storage(storage, prefix=prefix)
    except ConfigError as exc:
        if exc.field != "prefix":
            raise
        raise ConfigError("--prefix", str(exc).removeprefix("prefix: ")) from exc
    finally:
        await storage.close()


def render(url: str, report: VerifyReport) -> str:
    """The human-readable report (what ``fastelect check`` prints without ``--json``)."""
    width = max(len(check.name) for check in report.checks)
    lines = [f"store:   {url}", f"probe:   {report.probe}", "checks:"]
    ran = [check for check in report.checks if check.passed is not None]
    lines += [f"  {_MARK[check.passed]}  {check.name:<{width}}  {check.detail}" for check in ran]
    skipped = [check for check in report.checks if check.passed is None]
    if skipped:
        # One line for what did not run, not one per check: the cause is said once.
        names = ", ".join(check.name for check in skipped)
        why = skipped[0].detail.removeprefix("not run: ")
        lines.append(f"  {_MARK[None]}  not run ({why}): {names}")
    lines.append(f"clock:   {report.clock_detail}")
    lines.append(f"guard:   {report.guard_detail}")
    lines.append(f"cleanup: {report.cleanup}")
    if report.verdict == "fit":
        result = (
            "fit: this store enforces conditional writes; fastelect's guarantees hold on it"
            f" ({report.duration:.2f} s)"
        )
    elif report.verdict == "unfit":
        names = ", ".join(check.name for check in report.failed)
        result = (
            f"NOT FIT: {len(report.failed)} check(s) failed ({names}); do not run fastelect on"
            " this store: two nodes could both believe they lead"
        )
    else:
        # The cause is printed once, on stderr, by command().
        result = "could not check (the cause is on stderr)"
    lines.append(f"result:  {result}")
    return "".join(line + "\n" for line in lines)
