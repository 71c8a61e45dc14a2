"""The ``fastelect`` command: demo, sidecar, status and certificates.

::

    fastelect demo                               # watch a failover, no S3 needed
    fastelect run --store URL --id ID -- CMD …   # run CMD only while leader
    fastelect status --store URL                 # who leads? (exit 0 yes, 3 no)
    fastelect check --store URL                  # does the store enforce conditions?
    fastelect certs --out DIR --ip … --dns …     # development CA + server cert

Store URLs are described in :mod:`fastelect.cli.stores`.  Every failure the
user can cause or fix (a bad URL, an unreachable endpoint, refused
credentials, a missing bucket, a bad certificate) ends in one line on stderr
and a non-zero exit, never a traceback.  Exit codes: 0 success, 1 error,
2 bad input (a bad flag or flag value: the line names the flag), 3
``status`` found no live leader; ``run`` exits with its child's status;
``check`` exits 0 fit, 1 not fit, 2 could not check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import ConfigError, FastelectError
from . import _util, certs, check, demo, run, status

__all__ = ["build_parser", "main"]

_COMMANDS = "{demo,run,status,check,certs}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = _util.Parser(
        prog="fastelect",
        description="Leader election on S3 and S3-compatible stores through conditional writes.",
        epilog="Run 'fastelect COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"fastelect {__version__}")
    # The explicit metavar keeps the internal _demo-node command out of the help.
    subparsers = parser.add_subparsers(dest="command_name", metavar=_COMMANDS, required=True)
    demo.add_parser(subparsers)
    run.add_parser(subparsers)
    status.add_parser(subparsers)
    check.add_parser(subparsers)
    certs.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fastelect`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        sys.stderr.write("fastelect: interrupted\n")
        return 130
    except ConfigError as exc:
        # Bad input found after parsing; the commands name the flag as the field.
        sys.stderr.write(_util.usage_line(str(exc), f"fastelect {args.command_name}"))
        return _util.EXIT_USAGE
    except (FastelectError, OSError) as exc:
        # Expected failures (including ConfigError, a ValueError) as one line;
        # anything else is a bug and keeps its traceback.
        sys.stderr.write(f"fastelect: error: {_util.one_line(exc)}\n")
        return _util.EXIT_ERROR
    sys.stdout.flush()
    return code
