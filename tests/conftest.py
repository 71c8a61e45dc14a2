"""Shared fixtures.

Storage: ``storage`` runs a test once per backend (ids ``memory``, ``file``,
``s3``); the S3 backend talks to a real moto server started once per session
(``moto_server``), and ``moto_auth_server`` is a second one that enforces
credentials. The session's AWS environment is dummy credentials only, so no
test can reach a real AWS account.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import pytest_asyncio
import uvloop

from fastelect.storage import FileStorage, MemoryStorage, S3Storage, Storage
from helpers import (
    S3_BUCKET,
    MotoAuth,
    MotoServer,
    boto3_client,
    dummy_aws_environment,
    make_s3_storage,
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the moto server ``s3``, so ``-m "not s3"`` works."""
    for item in items:
        if _S3_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.s3)


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


# -- every backend ---------------------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("file", id="file"),
        pytest.param("s3", id="s3", marks=pytest.mark.s3),
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
        return lambda: FileStorage(tmp_path_factory.mktemp("file-storage") / "locks")
    # Sync fixtures only here: the moto server starts outside any event loop.
    endpoint = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("s3_bucket")
    return lambda: make_s3_storage(endpoint, bucket)


@pytest_asyncio.fixture
async def storage(storage_factory: Callable[[], Storage]) -> AsyncIterator[Storage]:
    """A fresh, empty backend: memory, file (in a temp dir) or S3 (moto); closed after."""
    backend = storage_factory()
    try:
        yield backend
    finally:
        await backend.close()
