"""``fastelect check``, run for real: ``python -m fastelect.cli check`` in subprocesses.

Exit status 0 fit, 1 not fit, 2 could not check; the stores are a real
directory, a real moto server, the same server behind a proxy that drops the
condition headers, and a moto server whose user may not delete.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import S3_REGION, MotoAuth, MotoServer, boto3_client, free_port
from verify_helpers import S3Proxy

CLI = [sys.executable, "-m", "fastelect.cli"]


def check(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``fastelect check`` to completion."""
    return subprocess.run(
        [*CLI, "check", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def s3_url(endpoint: str, bucket: str, prefix: str | None = None) -> str:
    prefix = prefix or f"check-{uuid.uuid4().hex[:12]}"
    return f"s3://{bucket}/{prefix}?endpoint_url={endpoint}&region={S3_REGION}"


def keys_under(endpoint: str, bucket: str, prefix: str, **credentials: str) -> list[str]:
    client = boto3_client("s3", endpoint, **credentials)
    try:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    finally:
        client.close()
    return [item["Key"] for item in listed.get("Contents", [])]


def assert_could_not_check(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2 with exactly one clean error line on stderr."""
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastelect: error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_check() -> None:
    done = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "check" in done.stdout
    done = check("--help")
    assert done.returncode == 0 and "--prefix" in done.stdout and "--json" in done.stdout


def test_a_directory_is_fit_and_left_clean(tmp_path: Path) -> None:
    done = check("--store", f"file://{tmp_path}", "--prefix", "locks")
    assert done.returncode == 0, done
    assert done.stderr == ""
    for name in (
        "create",
        "create-refuses-existing",
        "replace-current",
        "refuse-stale",
        "read-after-write",
        "distinct-etags",
    ):
        assert re.search(rf"^  pass  {name} ", done.stdout, re.M), done.stdout
    assert re.search(r"^clock: +not applicable", done.stdout, re.M), done.stdout
    assert re.search(r"^guard: +not applicable", done.stdout, re.M), done.stdout
    assert re.search(r"^cleanup: deleted file://.*locks%2F\.fastelect-check-", done.stdout, re.M)
    assert re.search(r"^result: +fit: ", done.stdout, re.M), done.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.s3
def test_moto_is_fit_with_json(moto_server: str, s3_bucket: str) -> None:
    prefix = f"check-{uuid.uuid4().hex[:12]}"
    done = check("--store", s3_url(moto_server, s3_bucket, prefix), "--json")
    assert done.returncode == 0, done
    report = json.loads(done.stdout)
    assert report["verdict"] == "fit" and report["fit"] is True
    assert all(c["passed"] is True for c in report["checks"]) and len(report["checks"]) == 6
    assert report["probe"].startswith(f"s3://{s3_bucket}/{prefix}/.fastelect-check-")
    assert abs(report["clock_offset_seconds"]) <= report["clock_uncertainty_seconds"] + 0.05
    assert report["left_behind"] == [] and report["error"] is None
    assert keys_under(moto_server, s3_bucket, prefix) == []


@pytest.mark.s3
def test_a_store_that_ignores_conditions_exits_1(moto_server: str, s3_bucket: str) -> None:
    with S3Proxy(moto_server) as proxy:
        store = s3_url(proxy.url, s3_bucket)
        human = check("--store", store)
        as_json = check("--store", store, "--json")
    assert proxy.stripped.keys() == {"if-match", "if-none-match"}
    assert human.returncode == 1, human
    assert re.search(
        r"^  FAIL  create-refuses-existing .*ignores If-None-Match", human.stdout, re.M
    )
    assert re.search(r"^  FAIL  refuse-stale .*ignores If-Match", human.stdout, re.M)
    assert re.search(r"^  pass  create ", human.stdout, re.M)
    assert re.search(
        r"^result: +NOT FIT: 2 check\(s\) failed \(create-refuses-existing, refuse-stale\)",
        human.stdout,
        re.M,
    ), human.stdout
    assert as_json.returncode == 1, as_json
    report = json.loads(as_json.stdout)
    assert report["verdict"] == "unfit" and report["fit"] is False
    failed = [c["name"] for c in report["checks"] if c["passed"] is False]
    assert failed == ["create-refuses-existing", "refuse-stale"]
    assert report["left_behind"] == []


# -- could not check: exit 2 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--store", "ftp://bucket/x"], "unsupported scheme 'ftp'"),
        (["--store", "s3://"], "missing bucket"),
        (["--store", "s3://bucket/p?bogus=1"], "unknown parameter 'bogus'"),
        (["--store", "memory://"], "memory://"),
        (["--store", "file:///tmp", "--prefix", "a/../b"], "--prefix: "),
    ],
)
def test_bad_input_exits_2(args: list[str], needle: str) -> None:
    assert_could_not_check(check(*args), needle)


def test_a_missing_directory_exits_2_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert_could_not_check(check("--store", f"file://{missing}"), "does not exist")
    assert not missing.exists()


def test_an_unreachable_endpoint_exits_2() -> None:
    store = s3_url(f"http://127.0.0.1:{free_port()}", "bucket") + "&timeout=1"
    done = check("--store", store)
    assert_could_not_check(done, "could not check", "127.0.0.1")
    assert re.search(r"^result: +could not check \(the cause is on stderr\)$", done.stdout, re.M)
    # The cause once (on stderr), and one line for the checks that did not run.
    assert "127.0.0.1" not in done.stdout.split("probe:")[1], done.stdout
    assert done.stdout.count("not run") == 1, done.stdout


@pytest.mark.s3
def test_a_missing_bucket_exits_2(moto_server: str) -> None:
    store = s3_url(moto_server, f"no-such-bucket-{uuid.uuid4().hex[:8]}")
    done = check("--store", store, "--json")
    assert_could_not_check(done, "does not exist")
    report = json.loads(done.stdout)
    assert report["verdict"] == "unknown" and "does not exist" in report["error"]
    assert all(c["passed"] is None for c in report["checks"])


@pytest.mark.s3
def test_wrong_credentials_exit_2(moto_auth_server: MotoAuth) -> None:
    store = s3_url(moto_auth_server.url, moto_auth_server.bucket)
    for key_id, secret in (moto_auth_server.denied, ("AKIAUNKNOWN000000000", "wrong")):
        env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
        assert_could_not_check(check("--store", store, env=env), "credentials")
    # The allowed user gets through.
    key_id, secret = moto_auth_server.allowed
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    done = check("--store", store, env=env)
    assert done.returncode == 0, done


# -- delete not permitted -----------------------------------------------------------------


@pytest.fixture(scope="module")
def no_delete_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, dict[str, str]]]:
    """A moto server enforcing auth, and credentials that may do all but s3:DeleteObject."""
    bucket = "fastelect-no-delete"
    with MotoServer(tmp_path_factory.mktemp("moto-no-delete") / "moto.log") as server:
        s3 = boto3_client("s3", server.url)
        iam = boto3_client("iam", server.url)
        try:
            s3.create_bucket(Bucket=bucket)
            iam.create_user(UserName="no-delete")
            key = iam.create_access_key(UserName="no-delete")["AccessKey"]
            resources = f'["arn:aws:s3:::{bucket}", "arn:aws:s3:::{bucket}/*"]'
            iam.put_user_policy(
                UserName="no-delete",
                PolicyName="all-but-delete",
                PolicyDocument=(
                    '{"Version": "2012-10-17", "Statement": ['
                    f'{{"Effect": "Allow", "Action": "s3:*", "Resource": {resources}}},'
                    f'{{"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": {resources}}}'
                    "]}"
                ),
            )
        finally:
            s3.close()
            iam.close()
        server.enforce_auth()
        yield (
            server.url,
            bucket,
            {
                "aws_access_key_id": key["AccessKeyId"],
                "aws_secret_access_key": key["SecretAccessKey"],
            },
        )


@pytest.mark.s3
def test_delete_not_permitted_is_reported_with_what_was_left(
    no_delete_server: tuple[str, str, dict[str, str]],
) -> None:
    url, bucket, credentials = no_delete_server
    prefix = f"check-{uuid.uuid4().hex[:12]}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": credentials["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": credentials["aws_secret_access_key"],
    }
    done = check("--store", s3_url(url, bucket, prefix), "--json", env=env)
    # Electors never delete, so the store is still fit; the leftover is reported.
    assert done.returncode == 0, done
    report = json.loads(done.stdout)
    assert report["verdict"] == "fit"
    assert len(report["left_behind"]) == 1 and report["left_behind"][0] == report["probe"]
    assert "delete not permitted" in report["cleanup"] and report["probe"] in report["cleanup"]
    # It really is still there, exactly what the report names.
    left = keys_under(url, bucket, prefix, **credentials)
    assert [f"s3://{bucket}/{key}" for key in left] == report["left_behind"]
    human = check("--store", s3_url(url, bucket, prefix), env=env)
    assert human.returncode == 0, human
    assert re.search(r"^cleanup: delete not permitted, left s3://", human.stdout, re.M)


# -- the docs ---------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def docs_block(kind: str) -> str:
    """The first ``kind`` code block of the docs' ``fastelect check`` section."""
    text = DOCS.read_text()
    start = text.index("### Check your store: `fastelect check`")
    section = text[start : text.index("\n### ", start + 1)]
    found = re.search(rf"```{kind}\n(.*?)```", section, re.S)
    assert found is not None, f"docs/cli.md's check section has no {kind} block"
    return found.group(1)


def test_the_docs_sample_output_has_the_commands_shape(tmp_path: Path) -> None:
    def shape(lines: list[str]) -> list[str]:
        heads = [re.match(r"^(?:[a-z]+:|  (?:pass|FAIL|----)  \S+)", line) for line in lines]
        assert all(heads), lines
        return [head.group(0) for head in heads if head]

    printed = docs_block("console").splitlines()
    assert printed[0].startswith("$ fastelect check --store ")
    done = check("--store", f"file://{tmp_path}")
    assert done.returncode == 0, done
    assert shape(printed[1:]) == shape(done.stdout.splitlines())


@pytest.mark.s3
def test_the_docs_shell_sample_runs(tmp_path: Path, moto_server: str, s3_bucket: str) -> None:
    script = tmp_path / "sample.sh"
    script.write_text(docs_block("sh"))
    # The venv's bin holds the fastelect command the sample calls.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

    def run(store: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": path, "STORE": store}
        return subprocess.run(
            ["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    (tmp_path / "store").mkdir()
    done = run(f"file://{tmp_path / 'store'}")
    assert done.returncode == 0 and done.stderr == "", done
    with S3Proxy(moto_server) as proxy:
        done = run(s3_url(proxy.url, s3_bucket))
    assert done.returncode == 1, done
    assert done.stderr == "not fit: create-refuses-existing, refuse-stale\n", done
    done = run(f"file://{tmp_path / 'missing'}")
    assert done.returncode == 1 and done.stderr.endswith(
        f"could not check file://{tmp_path / 'missing'}\n"
    ), done


# -- the bucket's own guard: are unconditional overwrites refused? (information) ------


@pytest.mark.s3
def test_a_bucket_that_allows_unconditional_writes_is_fit_with_a_pointer_to_the_policy(
    moto_server: str, s3_bucket: str
) -> None:
    prefix = f"guard-{uuid.uuid4().hex[:12]}"
    done = check("--store", s3_url(moto_server, s3_bucket, prefix))
    assert done.returncode == 0 and done.stderr == "", done
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("guard:")]
    assert "was allowed" in line and "docs/operations.md#require-conditional-writes" in line
    assert keys_under(moto_server, s3_bucket, prefix) == []  # the probe is gone anyway
    done = check("--store", s3_url(moto_server, s3_bucket, prefix), "--json")
    report = json.loads(done.stdout)
    assert report["guard_enforced"] is False and report["verdict"] == "fit", report


@pytest.mark.s3
def test_a_bucket_policy_requiring_conditional_writes_is_reported(
    moto_server: str, s3_bucket: str
) -> None:
    prefix = f"guard-{uuid.uuid4().hex[:12]}"
    # The proxy answers what S3 answers under a policy that denies PutObject
    # without s3:if-match / s3:if-none-match; conditional writes pass through.
    with S3Proxy(moto_server, strip=(), require_conditions=True) as proxy:
        done = check("--store", s3_url(proxy.url, s3_bucket, prefix), "--json")
        assert proxy.refused == 1, "the guard probe sent no unconditional write"
    assert done.returncode == 0, done
    report = json.loads(done.stdout)
    assert report["verdict"] == "fit", report
    assert report["guard_enforced"] is True, report
    assert "requires conditional writes" in report["guard_detail"]
    assert keys_under(moto_server, s3_bucket, prefix) == []
