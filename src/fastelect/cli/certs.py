"""``fastelect certs``: a development CA and a server certificate for the health server.

Writes into ``--out`` (created 0700; an existing one tightened to 0700 when it
holds nothing but these files, else a warning), every file mode 0600:

``ca-cert.pem`` / ``ca-key.pem``
    a new self-signed CA (skipped when ``--ca-cert``/``--ca-key`` name an
    existing one, so one CA can sign every node's certificate);
``server-cert.pem`` / ``server-key.pem``
    a server certificate for the given ``--ip`` and ``--dns`` names (EC
    P-256, serverAuth), for ``fastelect run --tls-cert/--tls-key``.

Peers trust ``ca-cert.pem`` (``ElectorConfig.peer_ca_cert``).  For
development and tests: no revocation, no name constraints.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import stat
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TLSError
from ..tls import CertificateAuthority, TLSCertificate
from . import _util

__all__ = ["add_parser", "command"]

# A century; far beyond any CA's own life, which caps the certificate anyway.
_MAX_DAYS = 36500
# The library's parameter names, as its messages begin, to the flags that set them.
_FLAG_OF_PARAM = {
    "common_name": "--cn",
    "valid_days": "--days",
    "dns_names": "--dns",
    "ip_addresses": "--ip",
}


def add_parser(subparsers: Any) -> None:
    """Register ``certs``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "certs",
        help="make a development CA and a server certificate (files 0600)",
        description=_util.paragraph(
            "Create a development CA and a server certificate/key for the health "
            "server and peer checks. Files are written with mode 0600."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  fastelect certs --out ./tls --ip 10.0.0.5 --dns node1\n"
        "  fastelect certs --out ./node2 --dns node2 \\\n"
        "      --ca-cert ./tls/ca-cert.pem --ca-key ./tls/ca-key.pem",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (made 0700)")
    p.add_argument(
        "--ip", action="append", default=[], metavar="ADDR", help="IP address SAN (repeatable)"
    )
    p.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="DNS name SAN (repeatable)"
    )
    p.add_argument(
        "--cn", default=None, metavar="NAME", help="common name (default: first DNS name or IP)"
    )
    p.add_argument(
        "--days",
        type=_days,
        default=90,
        metavar="N",
        help="server certificate validity in days, 1-36500 (default 90; never past the CA's)",
    )
    p.add_argument("--ca-cert", metavar="FILE", help="sign with this existing CA certificate…")
    p.add_argument("--ca-key", metavar="FILE", help="…and its private key")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    _util.add_logging_args(p)
    p.set_defaults(handler=command, parser=p)


def command(args: argparse.Namespace) -> int:
    """Create the files and list them."""
    parser: argparse.ArgumentParser = args.parser
    if not args.ip and not args.dns:
        parser.error("give at least one --ip or --dns: TLS clients check these, not the CN")
    if bool(args.ca_cert) != bool(args.ca_key):
        parser.error("--ca-cert and --ca-key go together")
    for ip in args.ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            parser.error(f"--ip {ip!r} is not an IP address (use --dns for names)")
    _util.configure_logging(args)
    out = Path(args.out)
    names = ["server"] if args.ca_cert else ["ca", "server"]
    targets = [out / f"{name}-{part}.pem" for name in names for part in ("cert", "key")]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not args.force:
        raise _util.CLIError(f"{', '.join(existing)} already exist; pass --force to replace")
    if args.ca_cert:
        try:
            ca = CertificateAuthority(_read(args.ca_cert), _read(args.ca_key))
        except TLSError as exc:
            raise ConfigError("--ca-cert/--ca-key", str(exc)) from exc
    else:
        ca = CertificateAuthority.create()
    common_name = args.cn or (args.dns[0] if args.dns else args.ip[0])
    try:
        server = ca.issue(
            common_name=common_name,
            dns_names=args.dns,
            ip_addresses=args.ip,
            valid_days=args.days,
        )
    except TLSError as exc:
        # The library names its parameter; the user needs the flag that set it.
        message = str(exc)
        flag = next((f for p, f in _FLAG_OF_PARAM.items() if message.startswith(p)), "--dns/--ip")
        raise ConfigError(flag, message) from exc
    _tighten(out, {path.name for path in targets} | {"ca-cert.pem", "ca-key.pem"})
    written: list[Path] = []
    if not args.ca_cert:
        # The CA pair is a valid TLSCertificate too, which writes 0600 files.
        written += TLSCertificate(ca.cert_pem, ca.key_pem).write_private(out, name="ca")
    written += server.write_private(out, name="server")
    for path in written:
        sys.stdout.write(f"{path}\n")
    sans = ", ".join(server.subject_alt_names)
    sys.stdout.write(
        f"server certificate for {sans}, valid until {server.not_valid_after:%Y-%m-%d}; "
        "peers verify it with ca-cert.pem\n"
    )
    return _util.EXIT_OK


def _tighten(out: Path, ours: set[str]) -> None:
    """Make an existing ``out`` 0700, as a new one is made; warn where that is not ours to do.

    Only a directory that holds nothing but certificate files is changed:
    ``--out .`` or ``--out /tmp`` must not lock other users (or programs) out
    of a shared directory. The keys are 0600 either way.
    """
    try:
        info = out.stat()
    except FileNotFoundError:
        return  # made 0700 by write_private
    except OSError as exc:
        raise _util.CLIError(f"cannot use --out {out}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise _util.CLIError(f"--out {out} is not a directory")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 == 0:
        return
    others = sorted(name for name in os.listdir(out) if name not in ours)
    if others:
        sys.stderr.write(
            f"fastelect: warning: {out} is mode {mode:04o} and holds other files"
            f" ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}), so it is left"
            " as it is; the keys are 0600, but a directory of their own (0700) is safer\n"
        )
        return
    try:
        os.chmod(out, 0o700)
    except OSError as exc:
        raise _util.CLIError(
            f"--out {out} is mode {mode:04o} and could not be made 0700"
            f" ({exc.strerror or exc}); chmod 700 it or pick another directory"
        ) from exc
    sys.stderr.write(f"fastelect: {out} was mode {mode:04o}; made it 0700\n")


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        problem = f"cannot read {path}: {exc.strerror or exc}"
        raise ConfigError("--ca-cert/--ca-key", problem) from exc


def _days(text: str) -> int:
    """argparse type: a whole number of days, 1-36500."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if not 1 <= value <= _MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {_MAX_DAYS}, not {value}")
    return value
