"""``fastelect status`` shows a record's age and whether its lease ran out (issue 19).

Real ``python -m fastelect.cli status`` subprocesses on a file store.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from fastelect.record import encode_record

CLI = [sys.executable, "-m", "fastelect.cli"]
HOURS_6 = 6 * 3600 * 10**9


def status(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "status", "--store", f"file://{store}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_record_six_hours_old_shows_its_age_and_that_its_lease_ran_out(tmp_path: Path) -> None:
    (tmp_path / "leader.json").write_bytes(
        encode_record("gone", "10.0.0.9:8443", time.time_ns() - HOURS_6, 4, 15000, 9)
    )
    done = status(tmp_path, "--json")
    assert done.returncode == 3, done.stderr
    info = json.loads(done.stdout)
    assert info["state"] == "expired" and info["lease_ran_out"] is True
    assert 21_500 < info["age_seconds"] < 21_700
    assert info["lease_left_seconds"] < -21_000
    text = status(tmp_path).stdout
    assert "ran out 2158" in text and "by this host's clock" in text, text


def test_a_day_long_lease_six_hours_old_is_live_but_says_how_long_it_blocks(
    tmp_path: Path,
) -> None:
    (tmp_path / "leader.json").write_bytes(
        encode_record("slow", "10.0.0.9:8443", time.time_ns() - HOURS_6, 4, 86_400_000, 9)
    )
    info = json.loads(status(tmp_path, "--json").stdout)
    assert (info["state"], info["lease_ran_out"], info["long_lease"]) == ("live", False, True)
    assert 64_700 < info["lease_left_seconds"] < 64_900
    text = status(tmp_path).stdout
    assert "runs out in 64" in text and "more than 10x --leader-timeout" in text, text


def test_an_out_of_bounds_record_is_one_line_naming_the_bound(tmp_path: Path) -> None:
    body = json.loads(encode_record("x", "", time.time_ns(), 4, 15000, 9))
    body["leaseMs"] = 10**12
    (tmp_path / "leader.json").write_bytes(json.dumps(body).encode())
    done = status(tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "leaseMs is out of range" in done.stderr and "their own lease" in done.stderr
