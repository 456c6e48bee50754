"""Inference through the neuron's app (in process) with both backends, using the official openai client."""

from __future__ import annotations

import json

import pytest

from tests.helpers import NO_EOS
from tests.neuron_inprocess import IN_MODULE_LOOP, streamed_text

BACKENDS = ["tiny-gguf", "tiny-hf"]
pytestmark = IN_MODULE_LOOP


@pytest.fixture(scope="module")
def client(inprocess_neuron):
    return inprocess_neuron.openai


@pytest.mark.parametrize("model", BACKENDS)
async def test_chat_non_streaming(client, model):
    resp = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=12, seed=5, temperature=0.7)
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("length", "stop")
    assert resp.usage.prompt_tokens > 5
    assert 0 < resp.usage.completion_tokens <= 12
    assert resp.model == model


@pytest.mark.parametrize("model", BACKENDS)
async def test_same_seed_same_answer(client, model):
    async def ask(seed):
        return (await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "say something"}], max_tokens=16,
            seed=seed, temperature=1.0, logit_bias=NO_EOS)).choices[0].message.content

    assert await ask(11) == await ask(11)
    assert len({await ask(s) for s in (1, 2, 3)}) > 1, "different seeds should sample differently"


@pytest.mark.parametrize("model", BACKENDS)
async def test_chat_streaming_matches_non_streaming(client, model):
    kwargs = dict(model=model, messages=[{"role": "user", "content": "stream please"}], max_tokens=20,
                  temperature=0, logit_bias=NO_EOS)
    full = (await client.chat.completions.create(**kwargs)).choices[0].message.content
    chunks = [c async for c in await client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs)]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full
    assert chunks[-1].usage.completion_tokens == 20
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


@pytest.mark.parametrize("model", BACKENDS)
async def test_stream_usage_chunk_only_when_asked(inprocess_neuron, model):
    """A usage chunk (choices: []) only with stream_options.include_usage; the usage comment always (clients
    skip comments; the gateway reads it for metrics)."""
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": True}
    plain = await inprocess_neuron.stream_lines("/v1/chat/completions", body)
    asked = await inprocess_neuron.stream_lines("/v1/chat/completions",
                                                {**body, "stream_options": {"include_usage": True}})
    assert plain[-1] == asked[-1] == "data: [DONE]"
    assert not any('"choices":[]' in line for line in plain)
    assert plain[-2].startswith(": cortex-usage ")
    usage_chunk = json.loads(asked[-2].removeprefix("data: "))
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] <= 3


@pytest.mark.parametrize("model", BACKENDS)
async def test_text_completion(client, model):
    resp = await client.completions.create(model=model, prompt="The quick brown fox", max_tokens=8, seed=1)
    assert resp.object == "text_completion"
    assert resp.usage.completion_tokens <= 8
    streamed = [c async for c in await client.completions.create(model=model, prompt="The quick brown fox",
                                                                  max_tokens=8, seed=1, stream=True)]
    assert any(c.choices and c.choices[0].text for c in streamed)


@pytest.mark.parametrize("model", BACKENDS)
async def test_scripted_output_and_stop_sequences(client, model):
    """A tiny model can be made to say a chosen text; stop sequences cut it, in both modes."""
    script = "alpha beta gamma delta"
    said = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "?"}],
                                                extra_body={"cortex_script": script})
    assert said.choices[0].message.content == script
    assert said.choices[0].finish_reason == "stop"
    cut = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "?"}],
                                               stop=["gam"], extra_body={"cortex_script": script})
    assert cut.choices[0].message.content == "alpha beta "
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "?"}],
                                                  stop=["a d"], stream=True, extra_body={"cortex_script": script})
    assert await streamed_text(stream) == "alpha beta gamm"


@pytest.mark.parametrize("model", BACKENDS)
async def test_multibyte_text_survives_token_splits(client, model):
    script = "héllo wörld 日本 ✓"
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "?"}],
                                                  stream=True, extra_body={"cortex_script": script})
    assert await streamed_text(stream) == script


@pytest.mark.parametrize("model", BACKENDS)
async def test_embeddings(client, model):
    resp = await client.embeddings.create(model=model, input=["hello", "world"])
    assert len(resp.data) == 2
    vec = resp.data[0].embedding
    assert abs(sum(v * v for v in vec) - 1.0) < 1e-3
    assert resp.usage.prompt_tokens >= 2


async def test_prompt_over_context_is_a_400(inprocess_neuron):
    status, body = await inprocess_neuron.call("POST", "/models/load", {"model": "tiny-short"})
    ctx = body["context_size"]  # llama.cpp rounds small contexts up (to 256)
    assert status == 200 and 64 <= ctx <= 256
    status, body = await inprocess_neuron.call("POST", "/v1/chat/completions", {
        "model": "tiny-short", "messages": [{"role": "user", "content": "word " * ctx}]})
    assert status == 400
    assert body["error"]["code"] == "context_length_exceeded"
    # OpenAI's own wording, which client libraries match to recognise an overflow.
    assert "maximum context length is" in body["error"]["message"]
    assert str(ctx) in body["error"]["message"]


async def test_metrics_count_the_requests(inprocess_neuron, client):
    series = 'cortex_neuron_requests_total{endpoint="chat",model="tiny-gguf",status="ok"}'
    before = await inprocess_neuron.metric(series)
    for _ in range(3):
        await client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "m"}],
                                             max_tokens=2)
    assert await inprocess_neuron.metric(series) - before == 3


async def test_both_backends_decode_the_same_greedy_tokens(client):
    """The GGUF and HF tiny models hold the same weights; greedy decoding must agree."""
    answers = {model: (await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "compare"}], max_tokens=24, temperature=0,
        logit_bias=NO_EOS)).choices[0].message.content for model in BACKENDS}
    assert answers["tiny-gguf"] == answers["tiny-hf"], answers


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object", "properties": {
                                                     "city": {"type": "string"}}}}}
TWO_CALLS = ('Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
             '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo, with a rather long name"}}\n'
             '</tool_call>')


@pytest.mark.parametrize("model", BACKENDS)
async def test_tool_calls_parsed_non_streaming(client, model):
    resp = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "weather?"}],
                                                tools=[WEATHER_TOOL], extra_body={"cortex_script": TWO_CALLS})
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check. "
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Tokyo, with a rather long name"]
    assert calls[0].id != calls[1].id


@pytest.mark.parametrize("model", BACKENDS)
async def test_tool_calls_streamed_in_pieces(client, model):
    stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "weather?"}],
                                                  tools=[WEATHER_TOOL], stream=True,
                                                  extra_body={"cortex_script": TWO_CALLS})
    text, calls, finish, pieces = "", {}, None, 0
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for tc in delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += (tc.function.name or "") if tc.function else ""
            entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
            pieces += 1
        finish = chunk.choices[0].finish_reason or finish
    assert text == "Let me check. " and finish == "tool_calls"
    assert [json.loads(c["arguments"])["city"] for c in calls.values()] == ["Paris", "Tokyo, with a rather long name"]
    assert pieces > 4, "arguments arrive in several pieces"


async def test_json_object_answer_is_a_tool_call_only_for_known_tools(client):
    script = '{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    resp = await client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "?"}],
                                                tools=[WEATHER_TOOL], extra_body={"cortex_script": script})
    assert json.loads(resp.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}
    other = '{"name": "launch_rockets", "arguments": {}}'
    resp = await client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "?"}],
                                                tools=[WEATHER_TOOL], extra_body={"cortex_script": other})
    assert resp.choices[0].message.content == other and not resp.choices[0].message.tool_calls
