"""The health benchmark's baseline: the same JSON endpoint on aiohttp's web server.

``python benchmarks/aiohttp_health.py TABLE CERT KEY`` serves
``GET /health/leadership/cluster`` over HTTPS on 127.0.0.1 (a free port,
printed on stdout as the first line) on uvloop, answering with exactly the
handler granian's workers run (:meth:`fastelect.health.app.HealthApp.leadership`),
so the two servers differ only in the server.  It stops when stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import web

from fastelect.health.app import HealthApp

PATH = "/health/leadership/cluster"


async def main(table: str, cert: str, key: str) -> None:
    """Serve until stdin reaches EOF."""
    import ssl

    health = HealthApp(table, {PATH: "cluster"})

    async def leadership(request: web.Request) -> web.Response:
        status, body = health.leadership("cluster")
        return web.Response(
            status=status,
            body=body,
            content_type="application/json",
            headers={"cache-control": "no-store"},
        )

    app = web.Application()
    app.router.add_get(PATH, leadership)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx, backlog=1024)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(main(*sys.argv[1:4]))
