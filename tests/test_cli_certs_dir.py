"""``fastelect certs --out DIR`` on a directory that already exists: its mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "fastelect.cli"]


def certs(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "certs", "--out", str(out), "--dns", "node1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_existing_open_directory_is_tightened_to_0700(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    out.mkdir(mode=0o755)
    out.chmod(0o755)
    done = certs(out)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o700
    assert f"{out} was mode 0755; made it 0700" in done.stderr


def test_a_shared_directory_is_left_alone_with_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(0o755)
    (out / "notes.txt").write_text("someone else's")
    done = certs(out)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o755  # not ours to lock others out of
    assert "warning" in done.stderr and "notes.txt" in done.stderr
    for name in ("ca-key.pem", "server-key.pem"):
        assert (out / name).stat().st_mode & 0o777 == 0o600
