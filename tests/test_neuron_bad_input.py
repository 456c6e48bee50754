"""Everything a client can get wrong gets a 4xx in the OpenAI envelope, and the neuron keeps serving.

Through the neuron's app in process (tests/neuron_inprocess.py): the bodies go over a real socket as sent.
"""

from __future__ import annotations

import json

import pytest

from tests.neuron_inprocess import IN_MODULE_LOOP

pytestmark = IN_MODULE_LOOP

MSG = [{"role": "user", "content": "hi"}]

CASES = [
    ("/v1/chat/completions", b"{not json", 400, "invalid_json"),
    ("/v1/chat/completions", b"", 400, "invalid_json"),
    ("/v1/chat/completions", b"[1, 2]", 400, "invalid_body"),
    ("/v1/chat/completions", {"messages": MSG}, 400, "missing_field"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "max_tokens": -5}, 400, "invalid_request"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "max_tokens": True}, 400, "invalid_request"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "temperature": "hot"}, 400, "invalid_request"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "temperature": 9}, 400, "invalid_request"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "n": 17}, 400, "invalid_request"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "stop": [1]}, 400, "invalid_request"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "stream": "yes"}, 400, "invalid_request"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": "hi"}, 400, "invalid_request"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": [{"role": "wizard", "content": "x"}]}, 400,
     "invalid_value"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": [{"role": "user", "content": [
        {"type": "video", "video": {}}]}]}, 400, "invalid_value"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "temprature": 0.5}, 400, "unknown_parameter"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "audio": {"voice": "x"}}, 400,
     "unsupported_parameter"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "response_format": {"type": "xml"}}, 400,
     "invalid_request"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "top_logprobs": 21, "logprobs": True}, 400,
     "invalid_request"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:x"}}]}]}, 400, "invalid_image"),
    ("/v1/chat/completions", {"model": "tiny-gguf", "messages": MSG, "tools": [{"type": "function"}]}, 400,
     "invalid_request"),
    ("/v1/chat/completions", {"model": "ghost", "messages": MSG}, 404, "model_not_found"),
    ("/v1/completions", {"model": "tiny-gguf", "prompt": 42}, 400, "invalid_request"),
    ("/v1/completions", {"model": "tiny-gguf", "prompt": "x", "logit_bias": {"abc": 1}}, 400, "invalid_request"),
    ("/v1/embeddings", {"model": "tiny-gguf", "input": []}, 400, "invalid_request"),
    ("/v1/embeddings", {"model": "tiny-gguf"}, 400, "invalid_request"),
    ("/models/load", {"model": 12}, 400, "invalid_request"),
    ("/models/unload", {"model": "ghost"}, 404, "model_not_found"),
    ("/no/such/route", {}, 404, "not_found"),
]


@pytest.mark.parametrize("path, body, status, code", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
async def test_bad_input_gets_a_clear_4xx(inprocess_neuron, path, body, status, code):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, resp = await inprocess_neuron.send(path, data)
    assert got == status, resp
    err = resp["error"]
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]


async def test_wrong_method_is_a_405_envelope(inprocess_neuron):
    status, body = await inprocess_neuron.send("/v1/chat/completions", None, method="GET")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


async def test_still_serving_after_bad_input(inprocess_neuron):
    status, body = await inprocess_neuron.call("POST", "/v1/chat/completions",
                                               {"model": "tiny-gguf", "messages": MSG, "max_tokens": 2})
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
