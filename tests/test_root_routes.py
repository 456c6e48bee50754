"""`GET /` lists the gateway's public API: every route there is served, and every public route is there
(a route added without a line in the list is how the list went stale before: images and audio were
missing)."""

from __future__ import annotations

from cortex_gateway.app import create_app
from cortex_gateway.catalog_routes import API
from cortex_gateway.config import GatewayConfig


def _public_paths() -> set[str]:
    app = create_app(GatewayConfig())
    paths = {r.canonical for r in app.router.resources()}
    return {p for p in paths if p.startswith("/v1/") and "{" not in p and not p.startswith("/v1/messages/")}


def test_root_lists_exactly_the_public_routes():
    served = _public_paths()
    assert set(API) <= served, set(API) - served
    assert served - set(API) == set(), "routes GET / does not list"


async def test_a_route_we_do_not_serve_says_so_in_the_sdks_error():
    """images.edit and audio.translations (OpenAI routes cortex does not serve) get a 404 naming the route and
    where the served ones are listed, and a wrong method a 405 naming the right one, in the OpenAI envelope."""
    import aiohttp
    import openai
    from aiohttp.test_utils import TestServer

    async with TestServer(create_app(GatewayConfig()), host="127.0.0.1") as server:
        client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0)
        try:
            await client.images.edit(model="m", image=("a.png", b"\x89PNG"), prompt="x")
            raise AssertionError("images.edit was served")
        except openai.NotFoundError as err:
            assert "POST /v1/images/edits: this gateway has no such route (GET / lists" in err.message
        try:
            await client.audio.translations.create(model="m", file=("a.wav", b"RIFF"))
            raise AssertionError("audio.translations was served")
        except openai.NotFoundError as err:
            assert "/v1/audio/translations" in err.message
        async with aiohttp.ClientSession() as session, session.get(server.make_url("/v1/chat/completions")) as r:
            body = await r.json()
            assert r.status == 405, body
            assert body["error"]["message"] == "GET is not allowed on /v1/chat/completions: use POST"
