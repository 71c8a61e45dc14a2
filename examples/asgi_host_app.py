"""Workers that read the host elector's leadership: docs/asgi.md's host variant.

    fastelect run --store s3://my-bucket/locks --id "$(hostname)" --shm myapp &
    uvicorn asgi_host_app:app --workers 16

LOCK_SHM names the host elector's table (default myapp).
"""

import os
from typing import Any

from fastapi import FastAPI

import fastelect

# Attaches lazily and again after the elector restarts, so either may start first.
leadership = fastelect.HostLeadership(os.environ.get("LOCK_SHM", "myapp"))
app = FastAPI()


@app.get("/leader")
async def leader() -> dict[str, Any]:
    return {"is_leader": leadership.is_leader(), "pid": os.getpid()}  # one shared-memory read
