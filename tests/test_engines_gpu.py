"""vLLM and SGLang for real, on a GPU: for a session that is lent one (marked `gpu`, skipped elsewhere).

They are the same lifecycle test_engines.py runs against the fake engine, on the real engines, with a
small Hugging Face model the test writes (`cortex tiny-model --format hf`).
"""

from __future__ import annotations

import importlib.util
import shutil

import openai
import pytest

from tests.helpers import http_json, make_tiny, start_neuron

pytestmark = pytest.mark.gpu


def _need(engine: str, module: str) -> None:
    if shutil.which("nvidia-smi") is None:
        pytest.skip(f"{engine} needs an NVIDIA GPU, and this machine has none")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{engine} is not installed here (pip install {module})")


@pytest.mark.parametrize("engine, module", [("vllm", "vllm"), ("sglang", "sglang")])
def test_a_real_engine_loads_answers_and_unloads(tmp_path, engine, module):
    _need(engine, module)
    make_tiny(tmp_path / "models" / "tiny-hf", "hf")
    node = start_neuron(tmp_path, tmp_path / "models", "--gpus", "0")
    try:
        status, info = http_json("POST", node.url + "/models/load", {"model": "tiny-hf", "backend": engine,
                                                                    "context_size": 1024}, timeout=900)
        assert status == 200 and info["memory_mb"] > 0, info
        client = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="tiny-hf", max_tokens=4,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.usage.completion_tokens > 0
        assert http_json("POST", node.url + "/models/unload", {"model": "tiny-hf"})[0] == 200
    finally:
        node.kill()
