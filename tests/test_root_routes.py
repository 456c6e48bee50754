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
