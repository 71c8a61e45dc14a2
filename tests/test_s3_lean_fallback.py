"""Configurations the lean S3 path cannot mirror fall back to aiobotocore, said once at INFO.

Each case runs against a real moto server: the fallback must still store and
read what the plain path does, and every hook the user registered must run.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.credentials import RefreshableCredentials

from fastelect.storage import S3Storage
from fastelect.storage._s3_lean import LeanS3, LeanUnsupported, foreign_request_hooks
from helpers import S3_REGION

pytestmark = [pytest.mark.s3, pytest.mark.asyncio]


def _fell_back(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "fastelect.storage.s3" and "lean request path is off" in r.getMessage()
    ]


async def test_a_request_hook_on_the_session_turns_the_lean_path_off(
    moto_server: str, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """How SSE-C keys or checksums are added: the hook must run, so the lean path steps aside."""
    seen: list[str] = []

    def add_metadata(params: dict[str, Any], **_: Any) -> None:
        seen.append("put")
        params.setdefault("Metadata", {})["added-by"] = "hook"

    session = get_session()
    session.register("before-parameter-build.s3.PutObject", add_metadata)
    storage = S3Storage(
        s3_bucket,
        f"hook-{uuid.uuid4().hex}",
        endpoint_url=moto_server,
        region_name=S3_REGION,
        session=session,
    )
    caplog.set_level(logging.INFO, logger="fastelect.storage.s3")
    try:
        etag = await storage.put_if_match("k.json", b'{"n": 1}', "")
        await storage.put_if_match("k.json", b'{"n": 2}', etag)
        body, _ = await storage.get("k.json")
        assert body == b'{"n": 2}'
        assert not storage.lean
        assert seen == ["put", "put"], "the user's hook did not run on every PutObject"
    finally:
        await storage.close()
    records = _fell_back(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.INFO
    assert "add_metadata" in records[0].getMessage()


async def test_without_hooks_the_lean_path_stays_on(moto_server: str, s3_bucket: str) -> None:
    storage = S3Storage(s3_bucket, endpoint_url=moto_server, region_name=S3_REGION)
    try:
        await storage.check()
        assert storage.lean
        assert foreign_request_hooks(await storage._get_client()) == []
    finally:
        await storage.close()


async def test_a_directory_bucket_is_sent_through_aiobotocore(
    moto_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastelect.storage.s3")
    storage = S3Storage("locks--use1-az4--x-s3", endpoint_url=moto_server, region_name=S3_REGION)
    try:
        await storage._get_client()  # no request: the choice is made when the client opens
        assert not storage.lean
    finally:
        await storage.close()
    (record,) = _fell_back(caplog)
    assert "directory bucket" in record.getMessage()


async def test_credentials_that_refresh_synchronously_are_refused(
    moto_server: str, s3_bucket: str
) -> None:
    session = get_session()
    async with session.create_client(
        "s3",
        region_name=S3_REGION,
        endpoint_url=moto_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ) as client:
        assert isinstance(await LeanS3.create(client, s3_bucket), LeanS3)
        client._request_signer._credentials = RefreshableCredentials(
            "testing", "testing", None, None, lambda: {}, "test"
        )
        with pytest.raises(LeanUnsupported, match="refresh synchronously"):
            await LeanS3.create(client, s3_bucket)
