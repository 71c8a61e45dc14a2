"""Every code block in README.md and docs/*.md is executed, checked or exempted by rule.

The rules, by the block's info string:

* ``python``: run as a script in a fresh interpreter (a subprocess, cwd a
  temporary directory) and must exit 0. ``sh``: run with ``bash -e`` with the
  venv's ``bin`` first on ``PATH``, and must exit 0. Both see the session's
  dummy AWS credentials and ``AWS_ENDPOINT_URL`` set to the session's moto
  server, where the bucket ``my-bucket`` exists and is emptied before each
  block: so ``S3Storage("my-bucket", ...)`` and ``s3://my-bucket/...`` in a
  sample run unchanged against a real S3 server, and read exactly as a user
  copies them.
* A block preceded by ``<!-- docs-test: NAME -->`` is run by ``HANDLERS[NAME]``
  instead: a prelude and epilogue around the sample (stand-ins for the
  user's own functions, then checks of what the sample did), literal
  substitutions (each must match, so a changed sample fails loudly), a
  server stopped by a signal, output compared with the page.
* ``<!-- docs-test: exempt: REASON -->`` before a ``python`` or ``sh`` block:
  not run, for the reason given; a python block is still compiled and an sh
  block parsed with ``bash -n``.
* ``json``: must parse. ``console`` (a transcript: the CLI tests check the
  commands' output), ``text``, ``ini`` and ``yaml`` are shown for reading and
  skipped by rule, unless a marker names a handler for them.
* Any other info string, a python/sh block neither run nor exempted, or a
  marker naming no handler fails ``test_every_block_is_accounted_for``.

Links between the pages, and the ``docs/*.md#anchor`` references in ``src/``
comments, must name files and sections that exist (GitHub's anchors).
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import MotoServer, boto3_client, free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
RUN = frozenset({"python", "sh"})
SKIP_BY_RULE = frozenset({"console", "text", "ini", "yaml"})
DOC_BUCKET = "my-bucket"
RELEASED = "0001-01-01T00:00:00Z"  # lastUpdated of a released record (s3lect's zero time)

_MARKER = re.compile(r"^<!-- docs-test: (.+?) -->$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str  # what follows "docs-test:" in the marker before it, or ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def exempt_reason(self) -> str | None:
        if self.marker.startswith("exempt:"):
            return self.marker.removeprefix("exempt:").strip()
        return None


def parse_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, with the ``docs-test`` marker before it, if any."""
    blocks: list[Block] = []
    lines = page.read_text().split("\n")
    i = 0
    while i < len(lines):
        fence = re.match(r"^(`{3,})(.*)$", lines[i])
        if not fence:
            i += 1
            continue
        ticks, lang = fence.group(1), fence.group(2).strip()
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        assert end < len(lines), f"{page.name}:{i + 1}: unterminated code block"
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        found = _MARKER.match(lines[before].strip()) if before >= 0 else None
        code = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(page, i + 1, lang, code, found.group(1).strip() if found else ""))
        i = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in parse_blocks(page)]


# -- running samples --------------------------------------------------------------------


@dataclass
class Ctx:
    """What a handler gets: a scratch directory and the environment samples run in."""

    tmp: Path
    env: dict[str, str]
    request: pytest.FixtureRequest

    def s3(self) -> str:
        """Point samples at the session's moto server, with ``my-bucket`` present and empty."""
        url: str = self.request.getfixturevalue("moto_server")
        client = boto3_client("s3", url)
        try:
            if DOC_BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                client.create_bucket(Bucket=DOC_BUCKET)
            for item in client.list_objects_v2(Bucket=DOC_BUCKET).get("Contents", []):
                client.delete_object(Bucket=DOC_BUCKET, Key=item["Key"])
        finally:
            client.close()
        self.env["AWS_ENDPOINT_URL"] = url
        return url

    def record(self, key: str) -> dict[str, object]:
        """The lock record ``key`` in ``my-bucket`` on the moto server, decoded."""
        client = boto3_client("s3", self.env["AWS_ENDPOINT_URL"])
        try:
            body = client.get_object(Bucket=DOC_BUCKET, Key=key)["Body"].read()
        finally:
            client.close()
        record: dict[str, object] = json.loads(body)
        return record


def substitute(code: str, replacements: dict[str, str]) -> str:
    """Replace literals in a sample; each must occur, so a changed sample fails loudly."""
    for old, new in replacements.items():
        assert old in code, f"the sample no longer contains {old!r}; update the test's handler"
        code = code.replace(old, new)
    return code


def run_python(
    ctx: Ctx, code: str, *, prelude: str = "", epilogue: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run prelude + sample + epilogue as one script in a fresh interpreter; it must exit 0."""
    script = ctx.tmp / "sample.py"
    parts = [textwrap.dedent(prelude), code, textwrap.dedent(epilogue)]
    script.write_text("\n".join(p for p in parts if p))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=ctx.tmp,
        env=ctx.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"exit {done.returncode}\n--- script\n{script.read_text()}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    return done


def run_sh(ctx: Ctx, code: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a shell sample with ``bash -e``; it must exit 0."""
    script = ctx.tmp / "sample.sh"
    script.write_text(code)
    done = subprocess.run(
        ["bash", "-e", str(script)],
        cwd=ctx.tmp,
        env=ctx.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"exit {done.returncode}\n--- script\n{code}\n--- stdout\n{done.stdout}\n"
        f"--- stderr\n{done.stderr}"
    )
    return done


def split_files(code: str) -> dict[str, str]:
    """A sample showing several files, each introduced by a ``# path`` comment line."""
    files: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in code.split("\n"):
        head = re.match(r"^# ([\w./-]+\.py|anywhere\b.*)$", line)
        if head:
            name = head.group(1).split(",")[0] if head.group(1).endswith(".py") else "anywhere"
            current = files.setdefault(name, [])
            continue
        assert current is not None, f"the sample starts before its first '# file.py' line: {line}"
        current.append(line)
    return {name: "\n".join(lines).strip() + "\n" for name, lines in files.items()}


def shm_name() -> str:
    """A table name no other test or engineer uses."""
    return f"docs-{uuid.uuid4().hex[:10]}"


# -- handlers ---------------------------------------------------------------------------


def default_python(block: Block, ctx: Ctx) -> None:
    ctx.s3()
    run_python(ctx, block.code)


def default_sh(block: Block, ctx: Ctx) -> None:
    ctx.s3()
    run_sh(ctx, block.code)


def quickstart(block: Block, ctx: Ctx) -> None:
    """It leads, does its work with term 1, and leaves the lock released."""
    ctx.s3()
    done = run_python(ctx, block.code)
    assert done.stdout == "leading with term 1\n", done.stdout
    record = ctx.record("locks/leader.json")
    assert record["leaderID"] == "web-1" and record["lastUpdated"] == RELEASED, record


def health_server(block: Block, ctx: Ctx) -> None:
    """The server answers 200 with the CA the certs command wrote; SIGTERM stops it cleanly."""
    ctx.s3()
    port, name = free_port(), shm_name()
    certs = subprocess.run(
        [str(BIN / "fastelect"), "certs", "--out", "tls", "--ip", "127.0.0.1"],
        cwd=ctx.tmp,
        env=ctx.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert certs.returncode == 0, certs
    code = substitute(
        block.code,
        {
            '":8443"': f'"127.0.0.1:{port}"',
            '"10.0.1.42:8443"': f'"127.0.0.1:{port}"',
            '"myapp"': f'"{name}"',
        },
    )
    script = ctx.tmp / "sample.py"
    script.write_text(code)
    tls = ssl.create_default_context(cafile=str(ctx.tmp / "tls" / "ca-cert.pem"))
    url = f"https://127.0.0.1:{port}/health/leadership"
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ctx.tmp,
        env=ctx.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def leading() -> dict[str, object] | None:
            assert proc.poll() is None, f"the sample exited early: {proc.communicate()}"
            try:
                with urllib.request.urlopen(url, context=tls, timeout=2) as response:
                    answer: dict[str, object] = json.load(response)
                    return answer
            except (urllib.error.URLError, OSError):
                return None

        answer = wait_for(leading, 30, f"{url} never answered 200")
        assert answer["leaderID"] == "web-1" and answer["term"] == 1, answer
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert ctx.record("locks/leader.json")["lastUpdated"] == RELEASED
    assert not Path(f"/dev/shm/fastelect.{name}").exists()


def manager_example(block: Block, ctx: Ctx) -> None:
    """The complete example elects one cluster leader and two shard leaders, then fails over."""
    done = run_python(ctx, block.code)
    assert "elected:" in done.stdout and "cluster failover took" in done.stdout, done.stdout
    after = done.stdout.split("cluster failover took", 1)[1]
    assert after.count("cluster leader") == 1, done.stdout


MANAGER_HOST = """
import asyncio, sys
from fastelect import FileStorage
from fastelect.election import ElectionConfig, Manager, ManagerConfig

async def main() -> None:
    storage = FileStorage(sys.argv[1])
    manager = Manager(ManagerConfig("docs", "shard-a", "node-1"))
    await manager.start_cluster_election(
        ElectionConfig(storage, frequent_interval=0.2, infrequent_interval=1, leader_timeout=2)
    )
    while not manager.is_cluster_leader():
        await asyncio.sleep(0.02)
    print(manager.table_name, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await manager.stop()
    await storage.close()

asyncio.run(main())
"""


def manager_attach(block: Block, ctx: Ctx) -> None:
    """Another process attaches to a running manager's table and sees the cluster leadership."""
    (ctx.tmp / "store").mkdir()
    host = subprocess.Popen(
        [sys.executable, "-c", MANAGER_HOST, str(ctx.tmp / "store")],
        env=ctx.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None
        table_name = host.stdout.readline().strip()
        assert table_name, f"the manager process failed: {host.communicate(timeout=30)}"
        done = run_python(
            ctx,
            block.code,
            prelude=f"table_name = {table_name!r}  # the manager's, from the other process",
            epilogue="""
                assert reader.is_leader("cluster")
                assert not reader.is_leader("shard")  # never started here
                print("attached")
            """,
        )
        assert done.stdout == "attached\n"
    finally:
        out, err = host.communicate(input="", timeout=30)
    assert host.returncode == 0, f"the manager process failed: {out}\n{err}"
    assert not Path(f"/dev/shm/fastelect.{table_name}").exists()


def background_threads(block: Block, ctx: Ctx) -> None:
    """The background elector leads while 'serving', then releases the lock on leaving."""
    ctx.s3()
    done = run_python(
        ctx,
        block.code,
        prelude="""
            import time

            def send_reports(fencing_token: int) -> None:  # the user's work
                print("reports", fencing_token)

            def serve_forever() -> None:  # the user's server: here, until this node leads
                assert elector.wait_for_leadership(timeout=20), "never became leader"
                print("serving as leader, term", elector.term)
        """,
        epilogue="""
            assert not elector.is_leader()
            print("stopped")
        """,
    )
    assert done.stdout == "serving as leader, term 1\nstopped\n", done.stdout
    record = ctx.record("locks/reports.json")
    assert record["leaderID"] == "worker-1" and record["lastUpdated"] == RELEASED, record


def host_leadership(block: Block, ctx: Ctx) -> None:
    """Workers see the host elector's leadership, and follow a restarted elector's new table."""
    name = shm_name()
    (ctx.tmp / "store").mkdir()
    run_python(
        ctx,
        substitute(block.code, {'HostLeadership("myapp")': f'HostLeadership("{name}")'}),
        epilogue=f"""
            import asyncio
            from fastelect import Elector, ElectorConfig, FileStorage, LeadershipTable

            TIMING = dict(frequent_interval=0.2, infrequent_interval=0.2, leader_timeout=1.0)

            async def host_elector() -> None:
                storage = FileStorage({str(ctx.tmp / "store")!r})
                with LeadershipTable({name!r}) as table:
                    config = ElectorConfig("l.json", "host-a", **TIMING)
                    async with Elector(config, storage, table=table) as elector:
                        async with elector.leadership():
                            for _ in range(200):  # the worker re-checks at most once a second
                                if leadership.is_leader():
                                    break
                                await asyncio.sleep(0.025)
                            assert leadership.is_leader(), "the worker never saw the leadership"
                await storage.close()
                assert not leadership.is_leader(), "the closed table still says leader"

            assert not leadership.is_leader()  # no elector on the host yet
            asyncio.run(host_elector())
            asyncio.run(host_elector())  # a restarted elector: a new table, attached again
        """,
    )
    assert not Path(f"/dev/shm/fastelect.{name}").exists()


GUNICORN_DRIVER = """
import runpy, time

conf = runpy.run_path("gunicorn.conf.py")
assert conf["workers"] == 4
conf["post_fork"](None, None)  # what gunicorn calls in each worker after the fork
from myapp import leadership

deadline = time.monotonic() + 20
while not leadership.is_leader():
    assert time.monotonic() < deadline, "the worker never became leader"
    time.sleep(0.02)
conf["worker_exit"](None, None)
assert not leadership.is_leader()
print("ok")
"""


def gunicorn(block: Block, ctx: Ctx) -> None:
    """gunicorn's hooks, called as gunicorn calls them: a worker leads, and releases on exit.

    The hooks and the module run here; tests/test_asgi.py runs the same
    recipe under a real gunicorn master (sync workers release, UvicornWorker
    does not, as docs/asgi.md says).
    """
    ctx.s3()
    files = split_files(block.code)
    assert set(files) == {"myapp/leadership.py", "gunicorn.conf.py"}, set(files)
    (ctx.tmp / "myapp").mkdir()
    (ctx.tmp / "myapp" / "__init__.py").write_text("")
    for name, text in files.items():
        (ctx.tmp / name).write_text(text)
    ctx.env["PYTHONPATH"] = str(ctx.tmp)
    done = run_python(ctx, GUNICORN_DRIVER)
    assert done.stdout == "ok\n"
    assert ctx.record("locks/reports.json")["lastUpdated"] == RELEASED


ASGI_DRIVER = """
import asyncio
from types import SimpleNamespace

import asgi_app

async def main() -> None:
    app = asgi_app.app
    async with asgi_app.lifespan(app):  # what a worker runs at startup and shutdown
        elector = app.state.elector
        async with asyncio.timeout(20):
            await elector.wait_for_leadership()
            while app.state.job_term != elector.term:  # the leader-only job started
                await asyncio.sleep(0.01)
        answer = await asgi_app.leader(SimpleNamespace(app=app))
        assert answer["is_leader"] and answer["leader_id"] == answer["id"], answer
        print("led with term", answer["job_term"])
    assert not elector.is_leader() and app.state.job_term is None

asyncio.run(main())
"""


def asgi_app(block: Block, ctx: Ctx) -> None:
    """The page shows examples/asgi_app.py itself; one worker's lifespan runs it on S3 here.

    The worker leads, its leader-only job runs, and leaving the lifespan
    releases the lock. tests/test_asgi.py runs the same file under real
    uvicorn and gunicorn servers.
    """
    example = (ROOT / "examples" / "asgi_app.py").read_text()
    assert block.code == example, "docs/asgi.md's app is not examples/asgi_app.py; copy it over"
    ctx.s3()
    (ctx.tmp / "asgi_app.py").write_text(block.code)
    ctx.env.update(PYTHONPATH=str(ctx.tmp), LOCK_BUCKET=DOC_BUCKET)
    done = run_python(ctx, ASGI_DRIVER)
    assert done.stdout == "led with term 1\n", done.stdout
    assert ctx.record("locks/myapp-leader.json")["lastUpdated"] == RELEASED


def asgi_host(block: Block, ctx: Ctx) -> None:
    """The page shows examples/asgi_host_app.py; its route answers the host elector's leadership.

    tests/test_asgi.py runs the same file under uvicorn beside a sidecar.
    """
    example = (ROOT / "examples" / "asgi_host_app.py").read_text()
    assert block.code == example, "docs/asgi.md's host app is not examples/asgi_host_app.py"
    name = shm_name()
    (ctx.tmp / "store").mkdir()
    ctx.env["LOCK_SHM"] = name
    run_python(
        ctx,
        block.code,
        epilogue=f"""
            import asyncio
            from fastelect import Elector, ElectorConfig, FileStorage, LeadershipTable

            async def host_elector() -> None:  # what `fastelect run --shm NAME` does
                storage = FileStorage({str(ctx.tmp / "store")!r})
                config = ElectorConfig("l.json", "host-a")
                with LeadershipTable({name!r}) as table:
                    async with Elector(config, storage, table=table) as elector:
                        await elector.wait_for_leadership()
                        async with asyncio.timeout(10):  # a worker re-checks once a second
                            while not (await leader())["is_leader"]:
                                await asyncio.sleep(0.025)
                await storage.close()
                assert not (await leader())["is_leader"], "the stopped elector still leads"

            assert not asyncio.run(leader())["is_leader"]  # no elector on the host yet
            asyncio.run(host_elector())
        """,
    )
    assert not Path(f"/dev/shm/fastelect.{name}").exists()


DJANGO_DRIVER = """
from mysite.leadership import elector

ran = []
def run_cron(fencing_token: int) -> None:  # the user's job
    ran.append(fencing_token)

exec(open("anywhere.py").read())  # the view / periodic task of the sample
elector.start()
assert elector.wait_for_leadership(timeout=20), "never became leader"
maybe_run_cron()
assert ran == [elector.term], ran
elector.stop()
maybe_run_cron()
assert len(ran) == 1, ran
print("ok")
"""


def django(block: Block, ctx: Ctx) -> None:
    """The leadership module and the cron guard run for real; wsgi.py is only compiled.

    Django is not installed in the test environment, so ``mysite/wsgi.py``
    (two lines around Django's ``get_wsgi_application``) is compiled, not run.
    """
    ctx.s3()
    files = split_files(block.code)
    assert set(files) == {"mysite/leadership.py", "mysite/wsgi.py", "anywhere"}, set(files)
    (ctx.tmp / "mysite").mkdir()
    (ctx.tmp / "mysite" / "__init__.py").write_text("")
    for name, text in files.items():
        path = ctx.tmp / (name if name.endswith(".py") else f"{name}.py")
        path.write_text(text)
        compile(text, str(path), "exec")
    ctx.env.update(PYTHONPATH=str(ctx.tmp), LOCK_BUCKET=DOC_BUCKET)
    done = run_python(ctx, DJANGO_DRIVER)
    assert done.stdout == "ok\n"
    assert ctx.record("mysite/mysite-cron.json")["lastUpdated"] == RELEASED


def status_sh(block: Block, ctx: Ctx) -> None:
    """Silent without a leader; names the leader while a sidecar leads."""
    store = ctx.tmp / "store"
    store.mkdir()
    ctx.env["STORE"] = f"file://{store}"
    assert run_sh(ctx, block.code).stdout == ""
    command = ["run", "--store", f"file://{store}", "--id", "node-a", "-q", "--", "sleep", "60"]
    sidecar = subprocess.Popen(
        [str(BIN / "fastelect"), *command],
        env=ctx.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status = [str(BIN / "fastelect"), "status", "--store", f"file://{store}"]
        wait_for(
            lambda: subprocess.run(status, env=ctx.env, capture_output=True).returncode == 0,
            30,
            "the sidecar never led",
            every=0.05,
        )
        assert run_sh(ctx, block.code).stdout == "leader: node-a\n"
    finally:
        sidecar.send_signal(signal.SIGTERM)
        _, err = sidecar.communicate(timeout=30)
    assert sidecar.returncode == 0, err


def tradeoffs(block: Block, ctx: Ctx) -> None:
    """The calculation prints exactly the rows of the table above it."""
    printed = run_python(ctx, block.code).stdout.splitlines()
    text = block.page.read_text()
    table = [line for line in text[: text.index(block.code)].splitlines() if line.startswith("| ")]
    assert printed and all(row in table for row in printed), (printed, table)


def iam_policy(block: Block, ctx: Ctx) -> None:
    """With only this policy, a node leads and `fastelect check` finds the store fit.

    A moto server of its own enforces signatures and IAM policies.
    """
    policy = json.loads(block.code)
    # moto authorises HeadBucket as the action "s3:HeadBucket"; AWS requires
    # s3:ListBucket for it (the page's policy). Grant moto's name too, so the
    # rest of the page's policy is what is tested.
    policy["Statement"].append(
        {"Effect": "Allow", "Action": "s3:HeadBucket", "Resource": f"arn:aws:s3:::{DOC_BUCKET}"}
    )
    with MotoServer(ctx.tmp / "moto.log") as server:
        s3 = boto3_client("s3", server.url)
        iam = boto3_client("iam", server.url)
        try:
            s3.create_bucket(Bucket=DOC_BUCKET)
            iam.create_user(UserName="node")
            key = iam.create_access_key(UserName="node")["AccessKey"]
            iam.put_user_policy(
                UserName="node", PolicyName="fastelect", PolicyDocument=json.dumps(policy)
            )
        finally:
            s3.close()
            iam.close()
        server.enforce_auth()
        ctx.env.update(
            AWS_ENDPOINT_URL=server.url,
            AWS_ACCESS_KEY_ID=key["AccessKeyId"],
            AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
        )
        done = run_python(
            ctx,
            """
import asyncio
from fastelect import Elector, ElectorConfig, S3Storage

async def main() -> None:
    storage = S3Storage("my-bucket", prefix="locks")
    async with Elector(ElectorConfig("leader.json", "node-1"), storage) as elector:
        async with elector.leadership() as term:
            print("led with term", term)
    await storage.close()

asyncio.run(main())
""",
        )
        assert done.stdout == "led with term 1\n"
        check = subprocess.run(
            [str(BIN / "fastelect"), "check", "--store", "s3://my-bucket/locks", "--json"],
            env=ctx.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check
        report = json.loads(check.stdout)
        assert report["verdict"] == "fit" and "delete not permitted" in report["cleanup"], report
        # Outside the policy's prefix the same credentials are refused.
        outside = subprocess.run(
            [str(BIN / "fastelect"), "check", "--store", "s3://my-bucket/elsewhere"],
            env=ctx.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert outside.returncode == 2, outside


METRICS_NAMES = """
import asyncio
from fastelect import Elector, ElectorConfig, LeadershipTable, MemoryStorage, _core, attach
from fastelect.health.app import render_metrics

async def main() -> None:
    with LeadershipTable(NAME) as table:
        async with Elector(ElectorConfig("l.json", "n"), MemoryStorage(), table=table) as el:
            await el.wait_for_leadership()
            reader = attach(NAME)
            print(render_metrics(reader, _core.monotonic_ns()).decode())

asyncio.run(main())
"""


def alert_rules(block: Block, ctx: Ctx) -> None:
    """Every metric the rules use is one a real /metrics answer carries."""
    name = shm_name()
    exposition = run_python(ctx, METRICS_NAMES.replace("NAME", repr(name))).stdout
    exported = set(re.findall(r"^(fastelect_\w+)[{ ]", exposition, re.M))
    used = set(re.findall(r"\bfastelect_\w+", block.code))
    assert used, "the rules use no fastelect metric"
    assert used <= exported, f"not exported: {sorted(used - exported)}; exported: {exported}"
    assert "fastelect_duplicate_ids_total" in exported


def prometheus_collector(block: Block, ctx: Ctx) -> None:
    """The collector, in prometheus_client's default registry, shows the sample's leadership."""
    import fastelect

    ctx.s3()
    done = run_python(ctx, substitute(block.code, {'"myapp"': f'"{shm_name()}"'}))
    assert f'fastelect_build_info{{version="{fastelect.__version__}"}} 1.0' in done.stdout
    assert "fastelect_table_attached 1.0" in done.stdout
    assert 'fastelect_is_leader{election="default"} 1.0' in done.stdout, done.stdout
    assert 'fastelect_acquisitions_total{election="default"} 1.0' in done.stdout


HANDLERS: dict[str, Callable[[Block, Ctx], None]] = {
    "quickstart": quickstart,
    "health-server": health_server,
    "manager-example": manager_example,
    "manager-attach": manager_attach,
    "background-threads": background_threads,
    "host-leadership": host_leadership,
    "gunicorn": gunicorn,
    "asgi-app": asgi_app,
    "asgi-host": asgi_host,
    "django": django,
    "status-sh": status_sh,
    "tradeoffs": tradeoffs,
    "iam-policy": iam_policy,
    "alert-rules": alert_rules,
    "prometheus-collector": prometheus_collector,
}


def handler_for(block: Block) -> Callable[[Block, Ctx], None] | None:
    """The handler that runs ``block``, or None if it is exempt or skipped by rule."""
    if block.marker and block.exempt_reason is None:
        return HANDLERS[block.marker]
    if block.marker or block.lang not in RUN:
        return None
    return default_python if block.lang == "python" else default_sh


# -- the tests --------------------------------------------------------------------------


def test_every_block_is_accounted_for() -> None:
    """Each block is run, exempted with a reason, checked, or of a kind skipped by rule."""
    problems = []
    tally: Counter[str] = Counter()
    for block in BLOCKS:
        if block.marker and block.exempt_reason is None and block.marker not in HANDLERS:
            problems.append(f"{block.where}: marker names no handler: {block.marker!r}")
        elif block.exempt_reason is not None:
            if not block.exempt_reason or block.lang not in RUN:
                problems.append(f"{block.where}: an exemption needs a reason and a python/sh block")
            tally["exempt"] += 1
        elif handler_for(block) is not None:
            tally["run"] += 1
        elif block.lang == "json":
            tally["parsed"] += 1
        elif block.lang in SKIP_BY_RULE:
            tally[f"skipped by rule ({block.lang})"] += 1
        else:
            problems.append(f"{block.where}: info string {block.lang!r} has no rule")
    unused = set(HANDLERS) - {b.marker for b in BLOCKS}
    assert not unused, f"handlers no block uses (a sample moved or lost its marker): {unused}"
    assert not problems, "\n".join(problems)
    # Guard against the parser silently finding nothing.
    assert tally["run"] >= 14, tally
    print(dict(tally))


@pytest.fixture
def ctx(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Ctx]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    yield Ctx(tmp_path, env, request)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_block(block: Block, ctx: Ctx) -> None:
    handler = handler_for(block)
    if handler is not None:
        handler(block, ctx)
    elif block.exempt_reason is not None and block.lang == "python":
        compile(block.code, block.where, "exec")
    elif block.exempt_reason is not None:
        run_sh(ctx, f"bash -n <<'EOF'\n{block.code}EOF\n")
    elif block.lang == "json":
        json.loads(block.code)
    else:
        assert block.lang in SKIP_BY_RULE, f"{block.where}: info string {block.lang!r} has no rule"


# -- links ------------------------------------------------------------------------------


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page``."""
    found: set[str] = set()
    seen: Counter[str] = Counter()
    fenced = False
    for line in page.read_text().split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^#{1,6} (.+)$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return found


def check_target(source: str, base: Path, target: str) -> str | None:
    path, _, anchor = target.partition("#")
    file = (base / path).resolve() if path else None
    if file is not None and not file.exists():
        return f"{source}: {target}: no such file"
    if anchor and file is not None and file.suffix == ".md" and anchor not in anchors(file):
        return f"{source}: {target}: no section #{anchor} in {file.relative_to(ROOT)}"
    return None


def test_links_between_pages_resolve() -> None:
    problems = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # an absolute URL: nothing in these pages should need one
            if target.startswith("#"):
                target = f"{page.name}{target}"
            problem = check_target(str(page.relative_to(ROOT)), page.parent, target)
            if problem:
                problems.append(problem)
    assert not problems, "\n".join(problems)


def test_source_comments_cite_sections_that_exist() -> None:
    """``docs/x.md#anchor`` in src/ names a real section; no comment cites the README's manual."""
    problems = []
    refs = 0
    for path in sorted((ROOT / "src").rglob("*")):
        if path.suffix not in {".py", ".pyx", ".pxd", ".pyi"}:
            continue
        text = path.read_text()
        for target in re.findall(r"\b(docs/[\w.-]+\.md(?:#[\w-]+)?)", text):
            refs += 1
            problem = check_target(str(path.relative_to(ROOT)), ROOT, target)
            if problem:
                problems.append(problem)
        if re.search(r"\bsee (?:the )?README\b", text, re.I):
            problems.append(f"{path.relative_to(ROOT)}: cites the README; cite docs/*.md")
    assert refs, "no docs/ references found in src/"
    assert not problems, "\n".join(problems)


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"the README does not link docs/{page.name}"
