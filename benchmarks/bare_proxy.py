"""A bare aiohttp pass-through (no routing, no metrics): the floor any Python gateway pays.

    python benchmarks/bare_proxy.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web


def create_app(upstream: str) -> web.Application:
    async def ctx(app):
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    async def health(_):
        return web.json_response({"status": "ok"})

    async def chat(request: web.Request):
        body = await request.read()
        async with request.app["session"].post(upstream + request.path, data=body,
                                               headers={"Content-Type": "application/json"}) as up:
            if up.headers.get("Content-Type", "").startswith("text/event-stream"):
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                return resp
            return web.Response(body=await up.read(), status=up.status, content_type="application/json")

    app = web.Application()
    app.cleanup_ctx.append(ctx)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    return app


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    web.run_app(create_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
