"""The OpenAI Responses API served: the gateway's real app over a fake neuron, then real processes
driven by the official `openai` SDK. The translation itself, without processes: `test_responses`."""

from __future__ import annotations

import asyncio
import json

import openai
import orjson
import pytest

from cortex_gateway.auth import AuthSettings
from tests.helpers import one_node_fleet
from tests.test_responses import CALL, WEATHER, events


# -- in process: the gateway's real app over a fake neuron ---------------------------------
@pytest.fixture
def fake_gateway(fakes, gateway_over):
    """`await fake_gateway(keys, **script)`: a fake neuron so scripted, and the gateway's test client over it."""

    async def start(keys: tuple[str, ...] = (), **script):
        fake = await fakes.start("n1", **script)
        return fake, (await gateway_over(fake, auth=AuthSettings(keys))).client

    return start


async def test_a_cold_load_sends_keepalives_then_the_whole_sequence(fake_gateway):
    fake, client = await fake_gateway(available={"m": 100})
    load = fake.hold_loads()
    resp = await client.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    async with asyncio.timeout(5):
        assert (await resp.content.readline()).startswith(b":")  # a comment: the SDK skips it
        await load.arrived.wait()
    load.release()
    async with asyncio.timeout(5):
        tail = await resp.read()
    blocks = [block.lstrip(b"\n") for block in tail.split(b"\n\n")]
    got = events(b"".join(block + b"\n\n" for block in blocks if block.startswith(b"event:")))
    assert got[0]["type"] == "response.created" and got[-1]["type"] == "response.completed"
    assert got[-1]["response"]["output"][0]["content"][0]["text"] == "hello from n1"
    assert fake.chats[0]["stream_options"] == {"include_usage": True}


async def test_a_node_dying_mid_stream_ends_with_response_failed(fake_gateway):
    fake, client = await fake_gateway(loaded={"m": 100})
    death = fake.die_mid_stream()
    resp = await client.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    async with asyncio.timeout(5):
        await death.arrived.wait()
    death.release()
    async with asyncio.timeout(5):
        got = events(await resp.read())
    assert [e["type"] for e in got[-2:]] == ["error", "response.failed"]
    assert got[-2]["code"] == "upstream_failed" and "mid-stream" in got[-2]["message"]
    failed = got[-1]["response"]
    assert failed["status"] == "failed" and failed["output"][0]["content"][0]["text"] == "hello from "
    stored = await client.get(f"/v1/responses/{failed['id']}")
    assert stored.status == 404  # a failed response is not kept


async def test_a_stored_response_belongs_to_the_key_that_made_it(fake_gateway):
    _, client = await fake_gateway(keys=("key-alice-1234", "key-bob-123456"), loaded={"m": 100})
    alice, bob = ({"Authorization": f"Bearer {key}"} for key in ("key-alice-1234", "key-bob-123456"))
    made = await (await client.post("/v1/responses", json={"model": "m", "input": "hi"}, headers=alice)).json()
    assert made["output"][0]["content"][0]["text"] == "hello from n1"
    path = f"/v1/responses/{made['id']}"
    assert (await client.get(path, headers=alice)).status == 200
    for method in ("GET", "DELETE"):
        assert (await client.request(method, path, headers=bob)).status == 404
    follow = await client.post("/v1/responses", json={"model": "m", "input": "more", "previous_response_id":
                                                      made["id"]}, headers=bob)
    assert follow.status == 404 and (await follow.json())["error"]["code"] == "previous_response_not_found"
    assert (await client.delete(path, headers=alice)).status == 200


# -- real processes, driven by the official SDK ---------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("responses")
    with one_node_fleet(root, models_dir, "--cpu-memory-mb", "4000") as (gateway, neuron, _):
        yield gateway, neuron


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack[0].url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", ["tiny-gguf", "tiny-hf"])
def test_create_with_string_input(client, model):
    resp = client.responses.create(model=model, input="hi", max_output_tokens=50,
                                   extra_body={"cortex_script": "Hello there."})
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.status == "completed"
    assert resp.output_text == "Hello there." and resp.model == model
    assert resp.usage.input_tokens > 3 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens


def test_item_input_and_instructions_reach_the_prompt(client):
    items = [{"role": "user", "content": "Tell me about Paris."},
             {"role": "assistant", "content": [{"type": "output_text", "text": "It is in France."}]},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "More?"}]}]
    plain = client.responses.create(model="tiny-gguf", input=items[-1:], max_output_tokens=2)
    full = client.responses.create(model="tiny-gguf", input=items, instructions="Answer in one short sentence.",
                                   max_output_tokens=2)
    assert full.instructions == "Answer in one short sentence."
    assert full.usage.input_tokens > plain.usage.input_tokens + 10


def test_stream_with_the_sdk_helper(client):
    script = "The fleet is healthy."
    with client.responses.stream(model="tiny-gguf", input="status?", max_output_tokens=50,
                                 extra_body={"cortex_script": script}) as stream:
        seen = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in seen]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert "".join(e.delta for e in seen if e.type == "response.output_text.delta") == script
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    assert final.output_text == script and final.status == "completed" and final.usage.output_tokens > 0
    assert client.responses.retrieve(final.id).output_text == script  # streamed responses are stored too


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_loop_through_previous_response_id(client, stream):
    def ask(**kwargs):
        kwargs = dict(model="tiny-hf", tools=[WEATHER], max_output_tokens=200, **kwargs)
        if not stream:
            return client.responses.create(**kwargs)
        with client.responses.stream(**kwargs) as s:
            return s.get_final_response()

    first = ask(input="What is the weather in Paris?", extra_body={"cortex_script": CALL})
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].id.startswith("fc_") and calls[0].call_id
    second = ask(input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"}],
                 previous_response_id=first.id, extra_body={"cortex_script": "It is sunny in Paris."})
    assert second.output_text == "It is sunny in Paris." and second.previous_response_id == first.id
    # The question, the call and its output all reached the model's prompt.
    assert second.usage.input_tokens > first.usage.input_tokens + 10


def test_retrieve_list_input_items_and_delete(client):
    made = client.responses.create(model="tiny-gguf", input=[{"role": "user", "content": "a"},
                                                             {"role": "user", "content": "b"}],
                                   max_output_tokens=2, metadata={"run": "7"})
    got = client.responses.retrieve(made.id)
    assert got.id == made.id and got.output_text == made.output_text and got.metadata == {"run": "7"}
    items = client.responses.input_items.list(made.id, order="asc")
    assert [i.content[0].text for i in items.data] == ["a", "b"]
    assert client.responses.delete(made.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(made.id)


def test_store_false_is_not_kept(client):
    made = client.responses.create(model="tiny-gguf", input="x", max_output_tokens=2, store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)


def test_an_unknown_previous_response_id_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="tiny-gguf", input="x", previous_response_id="resp_nope")
    assert err.value.code == "previous_response_not_found" and err.value.param == "previous_response_id"
    assert err.value.body["message"] == "Previous response with id 'resp_nope' not found."


@pytest.mark.parametrize("stream", [False, True])
def test_max_output_tokens_leaves_it_incomplete(client, stream):
    kwargs = dict(model="tiny-gguf", input="x", max_output_tokens=2,
                  extra_body={"cortex_script": "a long answer that will be cut"})
    if stream:
        with client.responses.stream(**kwargs) as s:
            last = list(s)[-1]
        assert last.type == "response.incomplete"
        resp = last.response
    else:
        resp = client.responses.create(**kwargs)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.output_tokens == 2


def test_refused_tool_types_and_parts_name_what_was_sent(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="tiny-gguf", input="x", tools=[{"type": "local_shell"}])
    assert "'local_shell'" in err.value.message and err.value.param == "tools"  # hosted tools: test_codex
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="tiny-gguf", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"}]}])
    assert "'tiny-gguf' is text-only" in err.value.message  # before any fetch: no URL is fetched for it
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="tiny-gguf", input="x", background=True)
    assert err.value.param == "background"


def test_an_unknown_model_is_not_found_in_the_openai_envelope(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="no-such-model", input="x")
    assert err.value.code == "model_not_found"


@pytest.mark.parametrize("model", ["tiny-gguf", "tiny-hf"])
def test_logprobs_on_the_output_text(client, model):
    script = {"cortex_script": "one two three four five"}
    resp = client.responses.create(model=model, input="hi", max_output_tokens=3, top_logprobs=2, extra_body=script)
    logprobs = resp.output[0].content[0].logprobs
    assert "".join(lp.token for lp in logprobs) == resp.output_text and len(logprobs) == 3
    assert all(len(lp.top_logprobs) == 2 for lp in logprobs)
    with client.responses.stream(model=model, input="hi", max_output_tokens=3, extra_body=script,
                                 include=["message.output_text.logprobs"]) as stream:
        last = list(stream)[-1]
    assert len(last.response.output[0].content[0].logprobs) == last.response.usage.output_tokens == 3


def test_json_output_requested_through_text_format(client):
    script = '{"city": "Paris"}'
    resp = client.responses.create(
        model="tiny-gguf", input="city?", max_output_tokens=50, extra_body={"cortex_script": script},
        text={"format": {"type": "json_schema", "name": "place", "strict": True,
                         "schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"], "additionalProperties": False}}})
    assert orjson.loads(resp.output_text) == {"city": "Paris"} and resp.text.format.type == "json_schema"
