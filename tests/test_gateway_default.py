"""`cortex serve` with no config (the README's first command), and keep-alives during cold loads."""

from __future__ import annotations

import json
import os
import urllib.request

import openai

from tests.helpers import CortexProcess, free_port, http_json, make_tiny, start_gateway, start_neuron


def test_embedded_default_serves_cortex_tiny(tmp_path):
    port, metrics_port = free_port(), free_port()
    env = {"HOME": str(tmp_path), "CORTEX_MODELS_DIR": str(tmp_path / "models"), "CORTEX_CONFIG": ""}
    os.environ.pop("CORTEX_CONFIG", None)
    proc = CortexProcess(["serve", "--listen", f"127.0.0.1:{port}", "--metrics-listen",
                          f"127.0.0.1:{metrics_port}"], port, tmp_path / "serve.log", env=env)
    try:
        proc.wait_healthy(timeout=120)
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0)
        resp = client.chat.completions.create(model="cortex-tiny", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5)
        assert resp.usage.completion_tokens > 0
        models = {m.id: m for m in client.models.list().data}
        assert models["cortex-tiny"].model_extra["loaded_on"] == ["local"]
        assert (tmp_path / "models" / "cortex-tiny.gguf").exists()
        assert "random weights" in proc.log()
        assert proc.terminate() == 0
        assert "unloading 1 model(s)" in proc.log(), "the local neuron was stopped with the gateway"
    finally:
        proc.kill()


def test_streaming_client_gets_keepalives_during_a_cold_load(tmp_path):
    make_tiny(tmp_path / "models" / "slowpoke.gguf", "gguf")
    neuron = start_neuron(tmp_path, tmp_path / "models", name="n1")
    gateway = start_gateway(tmp_path, {"n1": neuron.url})
    try:
        http_json("POST", neuron.url + "/debug/faults", {"model": "slowpoke", "fault": "slow_load",
                                                         "delay_ms": 2000})
        body = {"model": "slowpoke", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True}
        req = urllib.request.Request(gateway.url + "/v1/chat/completions", data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=60) as resp:
            lines = [line.decode().strip() for line in resp if line.strip()]
        first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
        assert first_data >= 2 and all(line == ": keep-alive" for line in lines[:first_data])
        assert lines[-1] == "data: [DONE]"
    finally:
        gateway.terminate()
        neuron.terminate()
