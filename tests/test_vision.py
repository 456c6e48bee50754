"""Images in chat through the gateway (real processes, the official SDKs): a real `cortex neuron` serving
`cortex tiny-model --kind vision` (a random-weight Llava whose image is 16 tokens) beside a text-only tiny
model, behind a real `cortex serve`; a second gateway over the same neuron fetches http(s) image URLs, with
small bounds, to show its refusals.

The tiny model's weights are random, so what is checked is what is deterministic: an answer comes, an image
adds its tokens to the prompt's count (in usage and in count_tokens), and every refusal is a clear 4xx in the
route's dialect naming the part and what to do.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading

import anthropic
import openai
import pytest

from tests.helpers import http_json, make_tiny, start_gateway, start_neuron
from tests.test_vision_parts import data_url, png, png_header

IMAGE_TOKENS = 16  # the tiny model's 32x32 image, in 8-pixel patches


def write_projector(path) -> None:
    """A GGUF of architecture clip, as a vision model's multimodal projector (mmproj) is written."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_tensor("v.patch_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def image_message(url: str, text: str = "what is in the picture") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.fixture(scope="module")
def vision_models(tmp_path_factory, models_dir):
    models = tmp_path_factory.mktemp("vision-models")
    make_tiny(models / "tiny-vision", "hf", "--kind", "vision")
    (models / "vision-cold").symlink_to(models / "tiny-vision")  # never loaded but by a request
    write_projector(models / "mmproj-tiny.gguf")
    (models / "tiny-hf").symlink_to(models_dir / "tiny-hf")
    return models


@pytest.fixture(scope="module")
def stack(tmp_path_factory, vision_models):
    """(gateway, fetching gateway, neuron): tiny-vision loaded, tiny-hf and vision-cold listed but not loaded."""
    root = tmp_path_factory.mktemp("vision")
    with start_neuron(root, vision_models) as neuron:
        status, body = http_json("POST", neuron.url + "/models/load", {"model": "tiny-vision"})
        assert status == 200 and body["kind"] == "vision", body
        (root / "a").mkdir()
        (root / "b").mkdir()
        with start_gateway(root / "a", {"n1": neuron.url}) as gateway, \
                start_gateway(root / "b", {"n1": neuron.url}, extra_toml="image_fetch = true\nimage_max_mb = 0.05\n"
                              "image_max_megapixels = 0.01") as fetching:
            yield gateway, fetching, neuron


@pytest.fixture(scope="module")
def oai(stack):
    return openai.OpenAI(base_url=stack[0].url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_a_chat_with_an_image_answers_and_counts_its_tokens(oai):
    text = [{"role": "user", "content": "what is in the picture"}]
    plain = oai.chat.completions.create(model="tiny-vision", messages=text, max_tokens=4)
    seen = oai.chat.completions.create(model="tiny-vision", messages=image_message(data_url(png())), max_tokens=4)
    assert seen.choices[0].finish_reason in ("length", "stop")
    assert seen.usage.prompt_tokens == plain.usage.prompt_tokens + IMAGE_TOKENS
    assert 1 <= seen.usage.completion_tokens <= 4


def test_vision_models_are_listed_as_such_and_cold_loaded_by_an_image_request(oai):
    kinds = {m.id: (m.model_extra or {}).get("kind") for m in oai.models.list().data}
    assert kinds["tiny-vision"] == "vision" and kinds["vision-cold"] == "vision" and kinds["tiny-hf"] == "generation"
    answer = oai.chat.completions.create(model="vision-cold", messages=image_message(data_url(png())), max_tokens=2)
    assert answer.usage.prompt_tokens > IMAGE_TOKENS


def test_each_image_counts_and_a_typed_placeholder_stays_text(stack):
    """Two images in two turns are two images' tokens; `<image>` typed by the user is text, never an image."""
    neuron = stack[2]

    def count(messages):
        status, body = http_json("POST", neuron.url + "/tokenize", {"model": "tiny-vision", "messages": messages})
        assert status == 200, body
        return body["count"]

    one = image_message(data_url(png()))
    two = [*one, {"role": "assistant", "content": "a red square"}, *image_message(data_url(png(8, 8, "blue")))]
    text_two = [{"role": "user", "content": "what is in the picture"}, {"role": "assistant", "content": "a red square"},
                {"role": "user", "content": "what is in the picture"}]
    assert count(two) == count(text_two) + 2 * IMAGE_TOKENS
    typed = [{"role": "user", "content": "what is in the picture <image>"}]
    assert count(typed) < count([{"role": "user", "content": "what is in the picture"}]) + IMAGE_TOKENS


def test_structured_output_forced_tools_and_logprobs_hold_with_an_image(oai):
    """The same grammars and logprobs as any chat model: a random-weight model's answer still matches its schema."""
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "blue"]}}, "required": ["color"],
              "additionalProperties": False}
    answer = oai.chat.completions.create(
        model="tiny-vision", messages=image_message(data_url(png())), max_tokens=40, logprobs=True, top_logprobs=2,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}})
    assert json.loads(answer.choices[0].message.content)["color"] in ("red", "blue")
    entries = answer.choices[0].logprobs.content
    assert entries and all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    tool = {"type": "function", "function": {"name": "paint", "parameters": schema}}
    called = oai.chat.completions.create(model="tiny-vision", messages=image_message(data_url(png())), max_tokens=60,
                                         tools=[tool], tool_choice={"type": "function", "function": {"name": "paint"}})
    call = called.choices[0].message.tool_calls[0]
    assert call.function.name == "paint" and json.loads(call.function.arguments)["color"] in ("red", "blue")


def test_a_streamed_chat_with_an_image_answers_with_its_usage(oai):
    stream = oai.chat.completions.create(model="tiny-vision", messages=image_message(data_url(png())), max_tokens=4,
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens > IMAGE_TOKENS
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_anthropic_image_blocks_answer_and_count_their_tokens(stack):
    client = anthropic.Anthropic(base_url=stack[0].url, api_key="unused", max_retries=0, timeout=120)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png()).decode()}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "describe"}, image]}]
    answer = client.messages.create(model="tiny-vision", max_tokens=4, messages=messages)
    assert answer.content and answer.usage.output_tokens >= 1
    with_image = client.messages.count_tokens(model="tiny-vision", messages=messages).input_tokens
    without = client.messages.count_tokens(model="tiny-vision", messages=[
        {"role": "user", "content": [{"type": "text", "text": "describe"}]}]).input_tokens
    assert with_image == without + IMAGE_TOKENS
    assert answer.usage.input_tokens == with_image


def test_a_responses_input_image_answers(oai):
    resp = oai.responses.create(model="tiny-vision", max_output_tokens=4, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "describe"}, {"type": "input_image", "image_url": data_url(png())}]}])
    assert resp.status in ("completed", "incomplete") and resp.usage.input_tokens > IMAGE_TOKENS


def test_a_text_only_model_refuses_images_in_each_dialect_before_loading(stack, oai):
    gateway, _, neuron = stack
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="tiny-hf", messages=image_message(data_url(png())), max_tokens=4)
    assert "'tiny-hf' is text-only" in err.value.message and "kind" in err.value.message
    assert "messages[0].content[1].image_url" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model="tiny-hf", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": data_url(png())}]}])
    assert "text-only" in err.value.message and "input[0].content[0].image_url" in err.value.message
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as aerr:
        client.messages.create(model="tiny-hf", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": base64.b64encode(png()).decode()}}]}])
    assert "text-only" in aerr.value.message and "messages.0.content.0.source" in aerr.value.message
    status, models = http_json("GET", neuron.url + "/models")
    assert "tiny-hf" not in [m["id"] for m in models["models"]], models  # refused before any load


def test_the_neuron_itself_refuses_images_for_a_text_model(stack):
    _, _, neuron = stack
    http_json("POST", neuron.url + "/models/load", {"model": "tiny-hf"})
    try:
        status, body = http_json("POST", neuron.url + "/v1/chat/completions", {
            "model": "tiny-hf", "messages": image_message(data_url(png())), "max_tokens": 2})
    finally:
        http_json("POST", neuron.url + "/models/unload", {"model": "tiny-hf"})
    assert status == 400 and "text-only" in body["error"]["message"], body
    status, body = http_json("POST", neuron.url + "/v1/chat/completions", {
        "model": "tiny-vision", "messages": image_message("http://127.0.0.1:1/a.png"), "max_tokens": 2})
    assert status == 400 and body["error"]["code"] == "image_url_not_allowed", body  # the neuron never fetches


def test_a_multimodal_projector_alone_is_no_model(stack):
    """A projector (mmproj, architecture clip) is served with its chat GGUF (tests/test_vision_gguf.py), never alone."""
    _, _, neuron = stack
    status, body = http_json("GET", neuron.url + "/models/available")
    assert status == 200 and "mmproj" not in str(body), body
    status, body = http_json("POST", neuron.url + "/models/load", {"model": "mmproj-tiny"})
    assert status == 404 and body["error"]["code"] == "model_not_found", body


@pytest.mark.parametrize("url, status, said", [
    (data_url(png_header(8000, 8000)), 413, "8000x8000 (64.0 megapixels), over the limit of 50 megapixels"),
    (data_url(b"hello, not an image"), 400, "not an image this server reads"),
    ("data:image/png;base64,@@@", 400, "does not decode"),
    ("http://127.0.0.1/a.png", 400, "image_fetch = true"),
])
def test_bounds_and_shapes_are_clear_refusals_naming_the_part(oai, url, status, said):
    with pytest.raises(openai.APIStatusError) as err:
        oai.chat.completions.create(model="tiny-vision", messages=image_message(url), max_tokens=2)
    assert err.value.status_code == status
    assert said in err.value.message and "messages[0].content[1].image_url" in err.value.message


def test_the_gateway_s_own_bounds_apply_in_bytes_and_pixels(stack):
    fetching = stack[1]
    client = openai.OpenAI(base_url=fetching.url + "/v1", api_key="unused", max_retries=0)
    for url, said in [(data_url(b"\0" * 80_000), "over the limit of 0.0 MiB"),
                      (data_url(png(200, 200)), "over the limit of 0.01 megapixels")]:
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="tiny-vision", messages=image_message(url), max_tokens=2)
        assert err.value.status_code == 413 and said in err.value.message, err.value.message


@pytest.fixture
def loopback_image():
    """An image served on 127.0.0.1, which a fetching gateway must refuse to fetch; and whether it was asked."""
    asked = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.set()
            body = png()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield f"http://127.0.0.1:{port}/a.png", f"http://localhost:{port}/a.png", asked
    finally:
        server.shutdown()
        thread.join()


def test_a_fetching_gateway_never_fetches_from_a_private_address(stack, loopback_image):
    by_ip, by_name, asked = loopback_image
    client = openai.OpenAI(base_url=stack[1].url + "/v1", api_key="unused", max_retries=0)
    for url in (by_ip, by_name):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny-vision", messages=image_message(url), max_tokens=2)
        assert "private, loopback or link-local" in err.value.message and "127.0.0.1" in err.value.message
    assert not asked.is_set()
