"""The lease clock counts suspend (docs/safety.md, "The lease clock").

A host that suspends stops CLOCK_MONOTONIC but not CLOCK_BOOTTIME; a leader
measuring its lease on the former would wake up believing in a lease others
already took.  A real suspend cannot run in CI, but a Linux *time namespace*
can give a process a CLOCK_BOOTTIME that is ahead of its CLOCK_MONOTONIC by
any amount -- exactly what a suspend of that length leaves behind -- so the
test shows which clock every lease is measured on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from fastelect import _core

SUSPENDED_S = 1000

PROBE = """
import json, time
from fastelect import LeadershipTable, _core
from fastelect._core import Campaign
lease_clock = _core.monotonic_ns()
boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
table = LeadershipTable()
slot = table.slot("default", "me")
second = 10**9
c = Campaign(slot, "me", "me:1", 60 * second, second, 5 * second, second, -1, False, boot)
c.observe_missing(boot); c.begin_write(boot); c.write_succeeded(boot, "e1")
print(json.dumps({"lease_clock": lease_clock, "boot": boot, "mono": mono,
                  "leader": slot.is_leader(), "remaining": slot.lease_remaining_ns()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CLOCK_BOOTTIME is Linux's")
def test_lease_clock_is_boottime_on_linux() -> None:
    assert _core.LEASE_CLOCK == time.CLOCK_BOOTTIME
    assert _core.LEASE_CLOCK_NAME == "CLOCK_BOOTTIME"
    assert abs(_core.monotonic_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)) < 50_000_000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="time namespaces are Linux's")
def test_leases_are_measured_on_boottime_after_a_suspend() -> None:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux unshare is not installed")
    proc = subprocess.run(
        [unshare, "--time", "--boottime", str(SUSPENDED_S), sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip(f"no permission for a time namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    # In the namespace BOOTTIME runs SUSPENDED_S ahead of MONOTONIC, as after a
    # suspend that long; the lease clock must be BOOTTIME.
    assert seen["boot"] - seen["mono"] >= (SUSPENDED_S - 1) * 10**9
    assert abs(seen["lease_clock"] - seen["boot"]) < 50_000_000, seen
    # A lease taken on that clock is live for its 60 s minus the margin.
    assert seen["leader"] and 50 * 10**9 < seen["remaining"] <= 59 * 10**9, seen
