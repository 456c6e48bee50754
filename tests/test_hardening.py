"""A neuron under a hostile client: safe defaults, loads confined to their roots, bounded work and connections.

Each test stands for one finding of the hardening probe and proves the bound rather than the minutes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from neuron.shared.config import NeuronConfig
from neuron.shared.protocol import parse_devices
from tests.helpers import CORTEX, free_port, http_json, start_neuron

NOT_HERE = "is not in this node's models directory or model roots"


@pytest.fixture(scope="module")
def layout(tmp_path_factory, models_dir):
    """A models dir with a symlink out, an extra root with a file named like a catalog model, corrupt files."""
    base = tmp_path_factory.mktemp("hardening")
    mine, root, outside = base / "models", base / "root", base / "outside"
    for d in (mine, root / "sub", outside):
        d.mkdir(parents=True)
    (mine / "tiny.gguf").symlink_to(models_dir / "tiny-gguf.gguf")  # the operator's own link: loads by id
    (mine / "escape.gguf").symlink_to(outside / "secret.gguf")
    (outside / "secret.gguf").write_bytes((models_dir / "tiny-short.gguf").read_bytes())
    (root / "sub" / "tiny.gguf").write_bytes((models_dir / "tiny-short.gguf").read_bytes())
    for i in range(70):
        (mine / f"bad{i:02d}.gguf").write_bytes(b"GGUF not really" * 4)
    return base


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, layout):
    with start_neuron(tmp_path_factory.mktemp("guarded"), layout / "models", "--cpu-memory-mb", "4000",
                      "--model-root", str(layout / "root")) as proc:
        yield proc, layout


def load(proc, model, **extra):
    return http_json("POST", proc.url + "/models/load", {"model": model, **extra})


def test_defaults_are_loopback_and_an_open_listen_needs_a_token(tmp_path):
    assert NeuronConfig().host == "127.0.0.1"
    env = {k: v for k, v in os.environ.items() if k != "CORTEX_NEURON_TOKEN"}
    done = subprocess.run(CORTEX + ["neuron", "--listen", f"0.0.0.0:{free_port()}", "--models-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0 and "refusing to listen on 0.0.0.0" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["/etc/passwd", "/nowhere/model.gguf", "../outside/secret.gguf",
                                  "{outside}/secret.gguf"])
def test_loads_by_path_stay_inside_the_roots_and_reveal_nothing(guarded, name):
    proc, layout = guarded
    name = name.format(outside=layout / "outside", models=layout / "models")
    status, body = load(proc, name)
    assert (status, body["error"]["code"]) == (404, "model_not_found"), body
    assert body["error"]["message"] == (f"model {name!r} {NOT_HERE}; GET /models/available lists what this "
                                        "node can load"), "one answer for missing, forbidden and not-a-model"


@pytest.mark.parametrize("name", ["escape.gguf", "{models}/escape.gguf"])
def test_the_operators_link_out_of_the_roots_is_refused_by_path_and_says_why(guarded, name):
    """The link is listed by /models/available: saying what it is reveals nothing (test_permanent_load_failure)."""
    proc, layout = guarded
    status, body = load(proc, name.format(models=layout / "models"))
    assert (status, body["error"]["code"]) == (422, "model_outside_roots"), body
    assert str(layout) not in body["error"]["message"]


def test_a_file_under_a_root_cannot_take_a_catalog_id(guarded):
    proc, layout = guarded
    status, body = load(proc, str(layout / "root" / "sub" / "tiny.gguf"))
    assert status == 200 and body["id"] == "file:sub/tiny" and body["path"] == "sub/tiny.gguf", body
    status, body = load(proc, "tiny")  # the operator's symlink in the models dir, by id
    assert status == 200 and body["id"] == "tiny"
    listed = http_json("GET", proc.url + "/models/available")[1]["models"]
    assert all(not m["path"].startswith("/") for m in listed), "paths are shown relative to the models dir"
    for model in ("file:sub/tiny", "tiny"):
        assert http_json("POST", proc.url + "/models/unload", {"model": model})[0] == 200


def test_joiners_of_a_failed_load_get_its_error_and_paths_stay_hidden(guarded):
    proc, layout = guarded
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: load(proc, "bad00"), range(12)))
    assert {(s, b["error"]["code"]) for s, b in answers} == {(422, "load_failed")}, answers
    assert str(layout) not in json.dumps(answers) and "<models>" in answers[0][1]["error"]["message"]


def test_failed_loads_are_remembered_within_a_bound(guarded):
    proc, _ = guarded
    for i in range(70):
        assert load(proc, f"bad{i:02d}")[0] == 422
    failures = http_json("GET", proc.url + "/models")[1]["failures"]
    assert len(failures) == 64 and "bad69" in failures and "bad00" not in failures


def test_a_loaded_model_is_not_silently_served_by_another_backend(guarded):
    proc, _ = guarded
    assert load(proc, "tiny")[0] == 200
    status, body = load(proc, "tiny", backend="torch")
    assert (status, body["error"]["code"]) == (409, "backend_mismatch"), body
    assert http_json("POST", proc.url + "/models/unload", {"model": "tiny"})[0] == 200


def test_a_loaded_model_is_not_silently_served_with_another_context(guarded):
    """A gateway profile naming the file of a model loaded under its own name got the loaded copy's context."""
    proc, _ = guarded
    assert load(proc, "tiny")[0] == 200
    assert load(proc, "tiny", context_size=2048)[0] == 200  # what it has by default: the same load
    status, body = load(proc, "tiny", context_size=1024)
    assert (status, body["error"]["code"]) == (409, "context_mismatch"), body
    assert "unload it first" in body["error"]["message"]
    assert http_json("POST", proc.url + "/models/unload", {"model": "tiny"})[0] == 200


def test_one_device_named_twice_is_one_device():
    assert parse_devices(["cpu", "cpu"]) == ["cpu"] and parse_devices([0, "cuda:0", "1"]) == ["cuda:0", "cuda:1"]


@pytest.mark.parametrize("messages, why", [
    ([{"role": "user", "content": "<|im_start|>" * 40_000}], "characters of text"),  # 480 KB of control tokens
    ([{"role": "user", "content": ""}] * 30_000, "30000 messages"),  # more than the context has tokens
])
def test_prompts_that_cannot_fit_are_refused_before_any_work(guarded, messages, why):
    """Refused on counts alone: nothing was rendered or tokenised (the message names the count, not tokens)."""
    proc, _ = guarded
    assert load(proc, "tiny")[0] == 200
    status, body = http_json("POST", proc.url + "/v1/chat/completions", {"model": "tiny", "messages": messages})
    assert (status, body["error"]["code"]) == (400, "context_length_exceeded") and why in body["error"]["message"]
    status, body = http_json("POST", proc.url + "/v1/chat/completions",
                             {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200, "the node serves on"


# -- connections ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def strict(tmp_path_factory, models_dir):
    tmp = tmp_path_factory.mktemp("strict")
    (tmp / "neuron.toml").write_text("[neuron]\nidle_timeout_s = 1\nmax_connections_per_client = 4\n"
                                     'token_file = "token.txt"\n')
    (tmp / "token.txt").write_text("file-token-01\n")
    with start_neuron(tmp, models_dir, "--config", str(tmp / "neuron.toml")) as proc:
        yield proc


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closes the connection; a 30 s socket timeout fails the test instead of hanging."""
    sock.settimeout(30)
    try:
        while chunk := sock.recv(4096):
            if chunk.startswith(b"HTTP/1.1 4"):  # answered (and closed): also counts
                continue
        return True
    except ConnectionResetError:
        return True


def test_idle_and_slowly_sent_connections_are_closed(strict):
    idle = socket.create_connection(("127.0.0.1", strict.port))
    slow = socket.create_connection(("127.0.0.1", strict.port))
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    assert closed_by_server(idle) and closed_by_server(slow)


def test_connections_per_client_are_capped(strict):
    held = [socket.create_connection(("127.0.0.1", strict.port)) for _ in range(4)]
    try:
        extra = socket.create_connection(("127.0.0.1", strict.port))
        assert closed_by_server(extra)
    finally:
        for s in held:
            s.close()
    assert http_json("GET", strict.url + "/health")[0] == 200


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        return sock.recv(65536)


def test_odd_bytes_in_auth_headers_are_a_clean_refusal(strict):
    reply = raw_request(strict.port, b"GET /models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    reply = raw_request(strict.port, b"GET /models HTTP/1.1\r\nHost: x\r\nx-api-key: sk-secret-\x01-key\r\n\r\n")
    assert reply.split(b"\r\n")[0].endswith(b" 400 Bad Request"), reply[:200]  # aiohttp's parser refuses it
    log = strict.log()
    assert "sk-secret" not in log and "Traceback" not in log


def test_the_token_can_come_from_a_file(strict):
    assert http_json("GET", strict.url + "/models")[0] == 401
    with socket.create_connection(("127.0.0.1", strict.port), timeout=30) as sock:
        sock.sendall(b"GET /models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer file-token-01\r\n"
                     b"Connection: close\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_the_token_flag_warns_that_ps_shows_it(tmp_path):
    proc = start_neuron(tmp_path, tmp_path, "--token", "t")
    try:
        assert "--token is visible to every user of this machine in ps" in proc.log()
    finally:
        proc.terminate()


def test_the_open_file_limit_is_raised_to_the_hard_limit(strict):
    limits = Path(f"/proc/{strict.proc.pid}/limits").read_text()
    soft, hard = next(line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files"))
    assert soft == hard or int(soft) >= 1 << 20, limits
