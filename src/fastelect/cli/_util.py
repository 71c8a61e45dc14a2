"""Helpers the commands share: exit codes, the parser, the event loop, timing flags, logging.

Bad input, whichever layer finds it, ends the same way: one line on stderr
that names the flag, ``fastelect: error: --flag: problem (see '... --help')``,
and exit status 2.  argparse's own errors go through :meth:`Parser.error`;
the commands raise :class:`~fastelect.ConfigError` with the flag as its
field, which :func:`fastelect.cli.main` reports the same way.  Failures of
the world rather than of the input (an unreachable store, refused
credentials, files that exist already) exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import textwrap
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

from ..config import ElectorConfig
from ..errors import ConfigError, FastelectError

__all__ = [
    "EXIT_ERROR",
    "EXIT_NO_LEADER",
    "EXIT_OK",
    "EXIT_USAGE",
    "CLIError",
    "Parser",
    "add_logging_args",
    "add_timing_args",
    "configure_logging",
    "elector_config",
    "exit_status",
    "lock_key",
    "one_line",
    "paragraph",
    "run_async",
    "table_name",
    "usage_line",
]

T = TypeVar("T")

#: Success.
EXIT_OK = 0
#: A runtime failure, reported as one line on stderr.
EXIT_ERROR = 1
#: Bad command-line usage (argparse's own code).
EXIT_USAGE = 2
#: ``fastelect status``: the lock has no live leader.
EXIT_NO_LEADER = 3

# The leadership table's own rule for names (they become /dev/shm/fastelect.<name>).
_TABLE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,24}$")

# Config fields named by the flags that set them, so errors name what to change.
_FLAG_OF_FIELD = {
    "leader_timeout": "--leader-timeout",
    "frequent_interval": "--frequent-interval",
    "infrequent_interval": "--infrequent-interval",
    "safety_margin": "--safety-margin",
    "lockfile_path": "--lock",
    "server_id": "--id",
    "server_addr": "--addr",
    "storage_timeout": "--storage-timeout",
}


class CLIError(FastelectError):
    """A failure the command reports as one line on stderr before exiting non-zero."""


def usage_line(problem: str, prog: str) -> str:
    """The one stderr line that reports bad input (``problem`` names the flag)."""
    return f"fastelect: error: {' '.join(problem.split())} (see '{prog} --help')\n"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line naming the flag, exit 2.

    ``add_subparsers`` builds the commands' parsers with this class too.
    """

    def error(self, message: str) -> NoReturn:
        """Report ``message`` on one line and exit with :data:`EXIT_USAGE`."""
        # argparse writes "argument --flag: problem"; the flag is the subject.
        problem = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        self.exit(EXIT_USAGE, usage_line(problem, self.prog))


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (storage errors can quote multi-line bodies)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh uvloop loop (asyncio's where uvloop is absent)."""
    try:
        import uvloop
    except ImportError:  # PyPy / Windows: the dependency marker leaves uvloop out
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


def paragraph(text: str) -> str:
    """``text`` wrapped for --help (RawDescriptionHelpFormatter keeps it, and epilogs, as is)."""
    return textwrap.fill(text, width=78)


def positive_seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def lock_key(text: str) -> str:
    """argparse type: a lock object key, as ``ElectorConfig.lockfile_path`` takes it."""
    try:
        ElectorConfig(text, "flag-check")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{exc.field}: ")) from None
    return text


def table_name(text: str) -> str:
    """argparse type: a leadership-table name (1-24 of ``A-Za-z0-9_.-``)."""
    if not _TABLE_NAME_RE.match(text):
        raise argparse.ArgumentTypeError(
            f"must be 1-24 characters of letters, digits, '_', '.', '-', not {text!r}"
        )
    return text


def non_negative_seconds(text: str) -> float:
    """argparse type: zero or a positive, finite number of seconds."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return positive_seconds(text)


def add_timing_args(
    parser: argparse.ArgumentParser,
    *,
    lease: float,
    frequent: float,
    infrequent: float | None,
) -> None:
    """The election timing flags, with the defaults the command wants."""
    group = parser.add_argument_group("election timing (seconds)")
    group.add_argument(
        "--leader-timeout",
        type=positive_seconds,
        default=lease,
        metavar="S",
        help=f"the lease: how long a leader is trusted without a renewal (default {lease:g})",
    )
    group.add_argument(
        "--frequent-interval",
        type=positive_seconds,
        default=frequent,
        metavar="S",
        help="how often a leader renews and a follower polls during transitions "
        f"(default {frequent:g})",
    )
    if infrequent is not None:
        group.add_argument(
            "--infrequent-interval",
            type=positive_seconds,
            default=infrequent,
            metavar="S",
            help="how often a follower polls a stable leader; it still reads the lock by the "
            f"time a takeover would become legal (default {infrequent:g})",
        )
    group.add_argument(
        "--safety-margin",
        type=non_negative_seconds,
        default=None,
        metavar="S",
        help="cut from the leader's own view of its lease to absorb clock-rate drift "
        "(default: leader timeout / 10)",
    )
    group.add_argument(
        "--storage-timeout",
        type=positive_seconds,
        default=None,
        metavar="S",
        help="bound on each storage call; a leader's writes are further bounded by what is "
        "left of its lease (default: min(2, leader timeout / 3))",
    )


def elector_config(args: argparse.Namespace, **fields: Any) -> ElectorConfig:
    """An ElectorConfig from the timing flags plus ``fields``; errors name the flag."""
    infrequent = getattr(args, "infrequent_interval", None)
    try:
        return ElectorConfig(
            leader_timeout=args.leader_timeout,
            frequent_interval=args.frequent_interval,
            infrequent_interval=args.frequent_interval if infrequent is None else infrequent,
            safety_margin=args.safety_margin,
            storage_timeout=getattr(args, "storage_timeout", None),
            **fields,
        )
    except ConfigError as exc:
        flag = _FLAG_OF_FIELD.get(exc.field, exc.field)
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise ConfigError(flag, message) from exc


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    """``-v`` (repeatable) and ``-q``."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v transitions (INFO), -vv everything (DEBUG)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log errors only")


def configure_logging(args: argparse.Namespace, *, default: int = logging.WARNING) -> None:
    """One concise stderr handler at the level the flags ask for (``default`` without any)."""
    verbose = int(getattr(args, "verbose", 0) or 0)
    if getattr(args, "quiet", False):
        level = logging.ERROR
    elif verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = min(default, logging.INFO)
    else:
        level = default
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s fastelect[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    if level > logging.DEBUG:
        # botocore narrates every request at INFO/DEBUG; keep it for -vv only.
        for name in ("botocore", "aiobotocore", "urllib3"):
            logging.getLogger(name).setLevel(max(level, logging.WARNING))


def exit_status(returncode: int) -> int:
    """A child's wait status as a shell would report it (128 + N when killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode
