"""A FastAPI app whose workers elect one leader: the app of docs/asgi.md.

    LOCK_DIR=/var/lib/myapp uvicorn asgi_app:app --workers 4
    LOCK_BUCKET=my-bucket gunicorn -k uvicorn.workers.UvicornWorker -w 4 asgi_app:app

The store comes from the environment: LOCK_DIR (a FileStorage directory,
processes on one host) or LOCK_BUCKET and LOCK_PREFIX (S3; endpoint, region
and credentials from the standard AWS environment). LOCK_FREQUENT_INTERVAL,
LOCK_INFREQUENT_INTERVAL and LOCK_LEADER_TIMEOUT (seconds) override
ElectorConfig's defaults.
"""

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request

from fastelect import Elector, ElectorConfig, FileStorage, LeadershipLost, S3Storage, Storage

TIMINGS: dict[str, Any] = {
    field: float(os.environ[f"LOCK_{field.upper()}"])
    for field in ("frequent_interval", "infrequent_interval", "leader_timeout")
    if f"LOCK_{field.upper()}" in os.environ
}


def storage_from_env() -> Storage:
    """Made in the lifespan: an S3 client is bound to the event loop it was made on."""
    if "LOCK_DIR" in os.environ:
        return FileStorage(os.environ["LOCK_DIR"])
    return S3Storage(os.environ["LOCK_BUCKET"], os.environ.get("LOCK_PREFIX", "locks"))


async def leader_job(app: FastAPI) -> None:
    """The work only the leader does; cancelled the moment its lease ends."""
    elector: Elector = app.state.elector
    term = elector.fence()  # this leadership's fencing token
    try:
        while True:
            elector.fence(term)  # before each side effect: still leading, in this term
            app.state.job_term = term  # stand-in for real work: pass it `term`
            await asyncio.sleep(1)
    finally:
        app.state.job_term = None


async def lead_whenever_elected(app: FastAPI) -> None:
    elector: Elector = app.state.elector
    while True:
        with contextlib.suppress(LeadershipLost):  # lost it: campaign on, run it again
            await elector.run_while_leader(lambda: leader_job(app))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Every worker runs the lifespan and campaigns: the id must be the worker's own.
    server_id = f"{socket.gethostname()}-{os.getpid()}"
    config = ElectorConfig("myapp-leader.json", server_id=server_id, **TIMINGS)
    storage = storage_from_env()
    try:
        async with Elector(config, storage) as elector:  # start() ... stop()
            app.state.elector = elector
            app.state.job_term = None
            job = asyncio.create_task(lead_whenever_elected(app))
            try:
                yield
            finally:
                job.cancel()  # leader work ends before the lock is handed back
                with contextlib.suppress(asyncio.CancelledError):
                    await job
        # Leaving the block stopped the elector: a leader released the lock, so
        # a worker of another server takes over at its next poll.
    finally:
        await storage.close()


app = FastAPI(lifespan=lifespan)


@app.get("/leader")
async def leader(request: Request) -> dict[str, Any]:
    elector: Elector = request.app.state.elector
    return {
        "id": elector.config.server_id,
        "is_leader": elector.is_leader(),  # nanoseconds, no I/O: ask on every request
        "leader_id": elector.leader_id,
        "term": elector.term,
        "job_term": request.app.state.job_term,
    }
