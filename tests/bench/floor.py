"""The floor: the thinnest aiohttp forwarder there is. What any aiohttp proxy must at least cost.

One shared ClientSession; every POST body goes to the upstream as-is and the answer comes back as-is
(streams chunk by chunk as they arrive). No routing, no metrics, no logging, no parsing.

    python tests/bench/floor.py --port 9001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def create_app(upstream: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            app["session"] = session
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with app["session"].post(upstream + request.path, data=body, headers=headers) as up:
            if up.content_type != "text/event-stream":
                return web.Response(status=up.status, body=await up.read(), content_type=up.content_type)
            response = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's root URL, e.g. http://127.0.0.1:9000")
    args = parser.parse_args()
    web.run_app(create_app(args.upstream.rstrip("/")), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
