"""Real interpreter exits keep rule 9's promises (issue 19, item 7).

A process leads with a ``BackgroundElector`` and falls off the end of its
script without calling ``stop()``: the ``atexit`` release must hand the
record back on every storage, and a sync ``on_lose`` must run there, although
``concurrent.futures`` (the loop's default executor) refuses new work by then.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tests.helpers import S3_REGION, boto3_client

from fastelect.record import parse_record

_NODE = """
import sys, time
from fastelect import BackgroundElector, ElectorConfig, FileStorage, S3Storage

kind, where, marker = sys.argv[1:4]

def on_lose():
    # Sync: it runs on a thread of the elector's own, or inline at shutdown.
    with open(marker, "a") as out:
        out.write("lost\\n")

def storage():
    if kind == "file":
        return FileStorage(where)
    endpoint, bucket, prefix, region = where.split("|")
    return S3Storage(bucket, prefix, endpoint_url=endpoint, region_name=region)

config = ElectorConfig(
    "leader.json", "exit-node", "127.0.0.1:9",
    frequent_interval=0.05, infrequent_interval=0.05, leader_timeout=30.0,
    storage_timeout=1.0, on_lose=on_lose,
)
elector = BackgroundElector(config, storage)
elector.start()
deadline = time.monotonic() + 10
while not elector.is_leader():
    if time.monotonic() > deadline:
        sys.exit("never led")
    time.sleep(0.01)
print("leading", flush=True)
# Falls off the end: no stop(); only the atexit handler can release and run on_lose.
"""


def _exit_while_leading(kind: str, where: str, marker: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _NODE, kind, where, str(marker)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leading", done.stdout
    assert "cannot schedule new futures" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # on_lose ran exactly once, at the exit.
    assert marker.read_text() == "lost\n", done.stderr


def test_a_file_store_is_released_and_on_lose_runs_at_interpreter_exit(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    _exit_while_leading("file", str(store), tmp_path / "marker")
    raw = (store / "leader.json").read_bytes()
    record = parse_record(raw.split(b"\n", 1)[1])
    # Released: anyone may take it now instead of waiting out the 30 s lease.
    assert record.leader_id == "exit-node"
    assert record.released, raw


@pytest.mark.s3
def test_an_s3_store_is_released_and_on_lose_runs_at_interpreter_exit(
    tmp_path: Path, moto_server: str, s3_bucket: str
) -> None:
    prefix = f"exit-{uuid.uuid4().hex}"
    _exit_while_leading(
        "s3", f"{moto_server}|{s3_bucket}|{prefix}|{S3_REGION}", tmp_path / "marker"
    )
    client = boto3_client("s3", moto_server)
    try:
        body = client.get_object(Bucket=s3_bucket, Key=f"{prefix}/leader.json")["Body"].read()
    finally:
        client.close()
    record = parse_record(body)
    assert record.leader_id == "exit-node"
    assert record.released, body
