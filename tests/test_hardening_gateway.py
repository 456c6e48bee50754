"""The gateway and the CLI under hostile input: bounded bodies, loopback defaults, a terminal that stays ours.

The CLI tests need a gateway that answers what an attacker controls (names with escape
sequences and markup, broken JSON, a huge reply): that server is the adversary, so it is
a small canned one on loopback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading

import pytest
from aiohttp import web
from click.testing import CliRunner

from cortex_cli.main import cli
from cortex_cli.options import complete_model, complete_node
from cortex_gateway.config import GatewayConfig
from cortex_gateway.server import _warn_if_open
from tests.helpers import free_port

MANY_KEYS = b'{"model": "tiny-gguf", "messages": [], ' + b", ".join(b'"k%d": 0' % i for i in range(250_000)) + b"}"


def post(url: str, body: bytes) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_body_of_a_million_tiny_keys_is_refused_before_it_is_parsed(one_node):
    gateway, _ = one_node
    status, body = post(gateway.url + "/v1/chat/completions", MANY_KEYS)
    assert (status, body["error"]["code"]) == (413, "request_too_large"), body
    status, body = post(gateway.url + "/v1/messages", MANY_KEYS)
    assert status == 413 and body["type"] == "error" and body["error"]["type"] == "request_too_large"


def test_defaults_are_loopback_and_an_open_v1_is_called_out(caplog):
    config = GatewayConfig()
    assert (config.host, config.metrics_host) == ("127.0.0.1", "127.0.0.1")
    config.host = "0.0.0.0"
    config.auth = dataclasses.replace(config.auth, admin_keys=("admin-only",))
    with caplog.at_level(logging.WARNING, logger="cortex.gateway"):
        _warn_if_open(config)
    assert ("with no user keys in the config: unless the state database holds keys, anyone who can reach port 31313 "
            "can use every model;") in caplog.text


# -- the CLI against a hostile gateway ---------------------------------------------------------------
HOSTILE = "evil\x1b[2J\x1b]52;c;cGF5bG9hZA==\x07[/][bold red]boom"


def hostile_status() -> dict:
    model = {"id": HOSTILE, "status": "loaded", "memory_mb": 1.0, "gateway_in_flight": 0, "queued": 0}
    node = {"name": HOSTILE, "endpoint": "http://x\x1b]8;;http://evil\x07", "healthy": True, "devices": [],
            "models": [model], "available": [HOSTILE, "ok-model", "$(touch pwned)", "a*", "two\nlines"]}
    summary = {"id": HOSTILE, "replicas": [HOSTILE], "loading": [], "min_replicas": 0, "max_replicas": 2,
               "in_flight": 0, "waiting": 0}
    events = [{"time": 0, "kind": "scale_out", "node": HOSTILE, "model": HOSTILE, "reason": "queue", "waiting": 4}]
    return {"nodes": [node], "pins": {}, "stats": {}, "events": events, "models": [summary]}


class CannedGateway:
    """Answers each path with fixed bytes, on its own thread and loop (the CLI runs its own loop)."""

    def __init__(self, answers: dict[str, bytes]):
        self.answers, self.port = answers, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=self.answers.get(request.path, b"{}"), content_type="application/json")

        async def main():
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        asyncio.run(main())

    def __enter__(self) -> CannedGateway:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def cortex(gateway: CannedGateway, *args: str):
    return CliRunner().invoke(cli, [*args, "--gateway", gateway.url], env={"COLUMNS": "200"})


def test_names_from_the_fleet_reach_the_terminal_as_plain_text():
    import orjson

    catalog = orjson.dumps({"object": "list", "data": [{"id": HOSTILE, "loaded_on": [HOSTILE]}]})
    with CannedGateway({"/admin/status": orjson.dumps(hostile_status()), "/admin/models": catalog}) as gw:
        for command in ("status", "models"):
            result = cortex(gw, command)
            assert result.exit_code == 0, result.output
            assert "\x1b" not in result.output and "\x07" not in result.output
            assert "[/][bold" in result.output, "markup in a name is shown, not interpreted"


@pytest.mark.parametrize("body, says", [
    (b"<html>not json</html>", "its answer is not JSON"),
    (b'{"nodes": "nope"}', "unexpected shape"),
    (b'{"x": "' + b"a" * (17 * 2**20) + b'"}', "its answer is over 16 MiB"),
])
def test_a_broken_or_huge_answer_is_one_clear_line(body, says):
    with CannedGateway({"/admin/status": body}) as gw:
        result = cortex(gw, "status")
    assert result.exit_code == 1 and says in result.output, result.output
    assert "Traceback" not in result.output


def test_completion_offers_only_names_a_shell_cannot_misread(monkeypatch):
    monkeypatch.setattr("cortex_cli.options._status_quietly", lambda ctx: hostile_status())
    assert complete_model(None, None, "") == ["ok-model"]
    assert complete_node(None, None, "") == []
