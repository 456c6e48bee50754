"""Log lines that a client (or a keys file) cannot break: one request, one line, no terminal escapes.

Real processes: a gateway writing text logs with a keys file whose comment (a key's name, shown
in its access lines) holds escapes, and a neuron writing JSON. The requests carry `%0a` and ESC in
their paths and control characters, C1 and U+2028 in their model names: before, the text log
held a forged second line at column 0 with a raw clear-screen sequence.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.helpers import one_node_fleet, wait_for

KEY = "sk-test-hostile-0001"
KEY_NAME = "eve\x1b]0;owned\x07\x9b2J"
PATH = "/v1/%0a%1b[2Jforged%e2%80%a8line%c2%85x"
MODEL = "m\n\x1b]0;title\x07\u2028\x85\u202e x=1 status=200"
RAW = ("\x1b", "\x07", "\x85", "\x9b", "\u2028", "\u202e")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("log_injection")
    (root / "keys.txt").write_text(f"{KEY}  # {KEY_NAME}\n")
    with one_node_fleet(root, models_dir, "--log-format", "json",
                        extra_toml='[auth]\nkeys_file = "keys.txt"') as (gateway, neuron, _):
        yield gateway, neuron


def send(method: str, url: str, rid: str, body: dict | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {KEY}", "X-Request-ID": rid})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def lines(proc) -> list[str]:
    """The log split only at real newlines: what `tail` and a terminal see as lines."""
    return proc.log_path.read_bytes().decode("utf-8", errors="replace").split("\n")


def hostile_requests(url: str, prefix: str) -> list[str]:
    """A hostile path and a hostile model name; their request ids, once both are answered."""
    assert send("GET", url + PATH, f"{prefix}-path") == 404
    status = send("POST", url + "/v1/chat/completions", f"{prefix}-model",
                  {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert status in (400, 404), status
    return [f"{prefix}-path", f"{prefix}-model"]


def test_the_text_log_keeps_one_line_per_request_and_no_raw_escape(stack):
    gateway, _ = stack
    rids = hostile_requests(gateway.url, "text")
    wait_for(lambda: all(any(rid in line for line in lines(gateway)) for rid in rids), what="both access lines")
    log = gateway.log_path.read_text(errors="replace")
    assert not [c for c in RAW if c in log], [line for line in lines(gateway) if any(c in line for c in RAW)]
    for rid in rids:
        mine = [line for line in lines(gateway) if rid in line]
        assert len(mine) == 1, mine
    path_line = next(line for line in lines(gateway) if "text-path" in line)
    assert " get /v1/%0a%1b[2jforged%e2%80%a8line%c2%85x 404 " in path_line.lower(), "as sent, percent-encoded"
    assert "key=eve\\x1b]0;owned\\x07\\x9b2J" in path_line, "the key's name, escaped"
    model_line = next(line for line in lines(gateway) if "text-model" in line)
    assert 'model="m\\x0a\\x1b]0;title\\x07\\u2028\\x85\\u202e x=1 status=200"' in model_line, model_line
    assert not any(line.startswith("forged") or line.startswith("line") for line in lines(gateway))


def test_the_json_log_stays_one_valid_object_per_line(stack):
    _, neuron = stack
    rids = hostile_requests(neuron.url, "json")
    wait_for(lambda: all(any(rid in line for line in lines(neuron)) for rid in rids), what="both access lines")
    text = neuron.log_path.read_text(errors="replace")
    assert not [c for c in RAW if c in text]
    assert text.splitlines() == text.rstrip("\n").split("\n"), "no character any reader takes for a line break"
    records = [json.loads(line) for line in lines(neuron) if line.strip()]
    seen = next(r for r in records if r.get("request_id") == "json-path" and "status" in r)
    assert seen["path"].lower() == PATH.lower(), "the path as sent, percent-encoded"
    assert any(r.get("request_id") == "json-model" and r.get("status") for r in records)
