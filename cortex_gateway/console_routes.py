"""The web console's files, `GET /ui` and `GET /ui/<asset>`: a single page the gateway serves itself.

The page is static (shipped in the package under `cortex_gateway/console/`, no build step, no CDN: it
works on a machine with no internet) and holds no data: every figure it shows comes from the same API
the CLI uses, each call carrying the key the user signed in with, so the page itself loads without a
key and needs no route of its own behind auth. Its Content-Security-Policy forbids inline script and
style and any other origin, so a hostile name the page shows (as text) cannot run, and frames are
refused so no other site can overlay its buttons.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from neuron.shared.errors import ApiError

CONSOLE = Path(__file__).resolve().parent / "console"
PREFIX = "/ui"
ASSETS = {"console.js": "text/javascript", "playground.js": "text/javascript",
          "playground_kinds.js": "text/javascript", "usage.js": "text/javascript", "console.css": "text/css",
          "favicon.svg": "image/svg+xml"}
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def is_console_path(path: str) -> bool:
    """The console's own files, open to anyone (they hold no data): the API checks the key of each call."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def _file(name: str, content_type: str) -> web.Response:
    return web.Response(body=(CONSOLE / name).read_bytes(), content_type=content_type, charset="utf-8",
                        headers=HEADERS)


async def page(request: web.Request) -> web.Response:
    return _file("index.html", "text/html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise ApiError(404, "not_found_error", f"the console has no file {name!r}; open {PREFIX} for the console",
                       code="not_found")
    return _file(name, ASSETS[name])


def add_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX, page)
    app.router.add_get(PREFIX + "/", page)
    app.router.add_get(PREFIX + "/{name}", asset)
