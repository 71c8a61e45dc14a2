"""Bad command-line input, run for real: every command, one line naming the flag, exit 2.

Each case is a real ``python -m fastelect.cli`` subprocess.  Whether argparse
finds the problem (an unknown flag, a value that is not a number) or the
command does (a timing invariant, a store URL, a certificate file), the
answer is the same: exit status 2, nothing on stdout, one line on stderr of
the form ``fastelect: error: --flag: problem (see 'fastelect CMD --help')``,
and nothing written or started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastelect.tls import CertificateAuthority

CLI = [sys.executable, "-m", "fastelect.cli"]

# (id, argv with {tmp} for a scratch directory, the flag the line must name)
CASES: list[tuple[str, list[str], str]] = [
    # -- fastelect ---------------------------------------------------------------
    ("no-command", [], "required"),
    ("unknown-command", ["bogus"], "invalid choice: 'bogus'"),
    # -- demo --------------------------------------------------------------------
    ("demo-nodes-range", ["demo", "--nodes", "1"], "--nodes"),
    ("demo-nodes-text", ["demo", "--nodes", "three"], "--nodes"),
    ("demo-duration", ["demo", "--duration", "-1"], "--duration"),
    ("demo-store", ["demo", "--store", "ftp://x"], "--store"),
    ("demo-frequent", ["demo", "--frequent-interval", "3"], "--frequent-interval"),
    ("demo-margin", ["demo", "--safety-margin", "1.9"], "--safety-margin"),
    ("demo-lock", ["demo", "--lock", "/abs/leader.json"], "--lock"),
    ("demo-unknown-flag", ["demo", "--bogus"], "--bogus"),
    # -- run ---------------------------------------------------------------------
    ("run-no-store", ["run", "--id", "a", "--", "true"], "--store"),
    ("run-store", ["run", "--store", "gopher://x", "--id", "a", "--", "true"], "--store"),
    ("run-memory", ["run", "--store", "memory://", "--id", "a", "--", "true"], "--store"),
    ("run-id", ["run", "--store", "file://{tmp}", "--id", " ", "--", "true"], "--id"),
    # A byte that is not UTF-8 ($'\x80bad'): Python's argv holds a lone surrogate.
    (
        "run-id-not-utf8",
        ["run", "--store", "file://{tmp}", "--id", os.fsdecode(b"\x80bad"), "--", "true"],
        "--id",
    ),
    (
        "run-addr-no-port",
        ["run", "--store", "file://{tmp}", "--id", "a", "--addr", "no-port", "--", "true"],
        "--addr",
    ),
    (
        "run-lease-absurd",
        ["run", "--store", "file://{tmp}", "--id", "a", "--leader-timeout", "9223370000",
         "--", "true"],
        "--leader-timeout",
    ),
    (
        "run-lease-tiny",
        ["run", "--store", "file://{tmp}", "--id", "a", "--leader-timeout", "0.001",
         "--frequent-interval", "0.0005", "--", "true"],
        "--leader-timeout",
    ),
    ("run-lock", ["run", "--store", "file://{tmp}", "--id", "a", "--lock", "../x"], "--lock"),
    (
        "run-lease-text",
        ["run", "--store", "file://{tmp}", "--id", "a", "--leader-timeout", "x", "--", "true"],
        "--leader-timeout",
    ),
    (
        # The issue's case: with the default margin, the interval is what is wrong.
        "run-frequent",
        ["run", "--store", "file://{tmp}", "--id", "a", "--frequent-interval", "14", "--", "true"],
        "--frequent-interval",
    ),
    (
        "run-frequent-above-lease",
        ["run", "--store", "file://{tmp}", "--id", "a", "--frequent-interval", "20", "--", "true"],
        "--frequent-interval",
    ),
    (
        "run-margin",
        [
            "run", "--store", "file://{tmp}", "--id", "a",
            "--frequent-interval", "12", "--safety-margin", "4", "--", "true",
        ],
        "--safety-margin",
    ),
    (
        "run-infrequent",
        ["run", "--store", "file://{tmp}", "--id", "a", "--infrequent-interval", "1", "--", "true"],
        "--infrequent-interval",
    ),
    ("run-grace", ["run", "--store", "file://{tmp}", "--id", "a", "--grace", "0"], "--grace"),
    ("run-shm", ["run", "--store", "file://{tmp}", "--id", "a", "--shm", "a/b"], "--shm"),
    ("run-no-command", ["run", "--store", "file://{tmp}", "--id", "a"], "'--'"),
    (
        "run-bind-without-cert",
        ["run", "--store", "file://{tmp}", "--id", "a", "--health-bind", ":0"],
        "--health-bind",
    ),
    (
        "run-bad-cert-files",
        [
            "run", "--store", "file://{tmp}", "--id", "a", "--health-bind", "127.0.0.1:0",
            "--tls-cert", "{tmp}/junk.pem", "--tls-key", "{tmp}/junk.pem",
        ],
        "--tls-cert",
    ),
    (
        "run-missing-cert-files",
        [
            "run", "--store", "file://{tmp}", "--id", "a", "--health-bind", "127.0.0.1:0",
            "--tls-cert", "{tmp}/nope.pem", "--tls-key", "{tmp}/nope.pem",
        ],
        "--tls-cert",
    ),
    (
        "run-bad-bind",
        [
            "run", "--store", "file://{tmp}", "--id", "a", "--health-bind", "bad host:1",
            "--tls-cert", "{tmp}/cert.pem", "--tls-key", "{tmp}/key.pem",
        ],
        "--health-bind",
    ),
    (
        "run-bad-bind-port",
        [
            "run", "--store", "file://{tmp}", "--id", "a", "--health-bind", "127.0.0.1:99999",
            "--tls-cert", "{tmp}/cert.pem", "--tls-key", "{tmp}/key.pem",
        ],
        "--health-bind",
    ),
    # -- status ------------------------------------------------------------------
    ("status-no-store", ["status"], "--store"),
    ("status-store", ["status", "--store", "s3://"], "--store"),
    ("status-lock", ["status", "--store", "file://{tmp}", "--lock", "/etc/passwd"], "--lock"),
    (
        "status-lease",
        ["status", "--store", "file://{tmp}", "--leader-timeout", "0"],
        "--leader-timeout",
    ),
    # -- certs -------------------------------------------------------------------
    ("certs-no-out", ["certs", "--dns", "a"], "--out"),
    ("certs-no-names", ["certs", "--out", "{tmp}/out"], "--dns"),
    ("certs-ip", ["certs", "--out", "{tmp}/out", "--ip", "node1"], "--ip"),
    ("certs-dns", ["certs", "--out", "{tmp}/out", "--dns", "bad name"], "--dns"),
    ("certs-dns-ip", ["certs", "--out", "{tmp}/out", "--dns", "10.0.0.1"], "--dns"),
    ("certs-cn", ["certs", "--out", "{tmp}/out", "--dns", "a", "--cn", "x" * 65], "--cn"),
    ("certs-days-zero", ["certs", "--out", "{tmp}/out", "--dns", "a", "--days", "0"], "--days"),
    ("certs-days-huge", ["certs", "--out", "{tmp}/out", "--dns", "a", "--days", "9" * 9], "--days"),
    ("certs-days-text", ["certs", "--out", "{tmp}/out", "--dns", "a", "--days", "x"], "--days"),
    (
        "certs-ca-alone",
        ["certs", "--out", "{tmp}/out", "--dns", "a", "--ca-cert", "{tmp}/cert.pem"],
        "--ca-key",
    ),
    (
        "certs-ca-missing",
        [
            "certs", "--out", "{tmp}/out", "--dns", "a",
            "--ca-cert", "{tmp}/nope.pem", "--ca-key", "{tmp}/nope.pem",
        ],
        "--ca-cert",
    ),
    (
        "certs-ca-junk",
        [
            "certs", "--out", "{tmp}/out", "--dns", "a",
            "--ca-cert", "{tmp}/junk.pem", "--ca-key", "{tmp}/junk.pem",
        ],
        "--ca-cert",
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a valid certificate pair and a junk PEM file."""
    directory = tmp_path_factory.mktemp("cli-input")
    cert = CertificateAuthority.create().issue(common_name="n", ip_addresses=["127.0.0.1"])
    (directory / "cert.pem").write_bytes(cert.cert_pem)
    (directory / "key.pem").write_bytes(cert.key_pem)
    (directory / "junk.pem").write_text("not a certificate\n")
    return directory


@pytest.mark.parametrize(("argv", "flag"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_flag_and_exit_2(
    scratch: Path, argv: list[str], flag: str
) -> None:
    before = sorted(p.name for p in scratch.iterdir())
    args = [a.replace("{tmp}", str(scratch)) for a in argv]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, f"exit {done.returncode} for {args}: {done.stderr}"
    assert len(lines) == 1, f"not one line for {args}:\n{done.stderr}"
    line = lines[0]
    assert line.startswith("fastelect: error: "), line
    assert flag in line, f"{flag!r} not named: {line}"
    assert "--help'" in line and "usage:" not in line, line
    assert done.stdout == "", done.stdout
    # Bad input starts nothing and writes nothing (no store, no certificates).
    assert sorted(p.name for p in scratch.iterdir()) == before


def test_the_line_points_at_the_commands_help(scratch: Path) -> None:
    done = subprocess.run(
        [*CLI, "status", "--store", f"file://{scratch}", "--leader-timeout", "soon"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr == (
        "fastelect: error: --leader-timeout: not a number of seconds: 'soon' "
        "(see 'fastelect status --help')\n"
    )
