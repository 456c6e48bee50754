"""The Anthropic dialect end to end: the official `anthropic` client, the gateway, real neurons."""

from __future__ import annotations

import re
import threading

import anthropic
import pytest

from tests.helpers import http_json, one_node_fleet, start_gateway

KEY = "test-key-123456"
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = '<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{city}"}}}}\n</tool_call>'


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("anthropic")
    with one_node_fleet(root, models_dir, "--cpu-memory-mb", "4000", extra_toml=f'[auth]\nkeys = ["{KEY}"]',
                        models_toml='[aliases]\nclaude-tiny = "tiny-gguf"\n') as (gateway, neuron, _):
        yield gateway, neuron


@pytest.fixture(scope="module")
def client(stack):
    return anthropic.Anthropic(base_url=stack[0].url, api_key=KEY, max_retries=0)


def user(text):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("model", ["tiny-gguf", "tiny-hf"])
def test_plain_text(client, model):
    msg = client.messages.create(model=model, max_tokens=8, system="be brief", messages=user("hi"))
    assert msg.id.startswith("msg_") and msg.role == "assistant" and msg.type == "message"
    assert msg.content[0].type == "text"
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.input_tokens > 5 and 0 < msg.usage.output_tokens <= 8


def test_bearer_auth_and_alias(stack):
    bearer = anthropic.Anthropic(base_url=stack[0].url, auth_token=KEY, max_retries=0)
    msg = bearer.messages.create(model="claude-tiny", max_tokens=3, messages=user("hi"))
    assert msg.usage.output_tokens > 0


@pytest.mark.parametrize("model", ["tiny-gguf", "tiny-hf"])
def test_streaming_with_the_sdk_helper(client, model):
    script = "The fleet is healthy."
    with client.messages.stream(model=model, max_tokens=50, messages=user("status?"),
                                extra_body={"cortex_script": script}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == script
    assert final.content[0].text == script and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences(client, stream):
    kwargs = dict(model="tiny-gguf", max_tokens=50, messages=user("count"), stop_sequences=["three"],
                  extra_body={"cortex_script": "one two three four"})
    if stream:
        with client.messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kwargs)
    assert msg.content[0].text == "one two "
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "three")


def test_max_tokens_stop_reason(client):
    msg = client.messages.create(model="tiny-gguf", max_tokens=2, messages=user("x"),
                                 extra_body={"cortex_script": "a long answer that will be cut"})
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 2


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_over_several_turns(client, stream):
    def ask(messages, script):
        kwargs = dict(model="tiny-hf", max_tokens=200, tools=[WEATHER], messages=messages,
                      extra_body={"cortex_script": script})
        if not stream:
            return client.messages.create(**kwargs)
        with client.messages.stream(**kwargs) as s:
            return s.get_final_message()

    history = user("What is the weather in Paris?")
    first = ask(history, "Let me look. " + CALL.format(city="Paris"))
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    call = first.content[1]
    assert call.name == "get_weather" and call.input == {"city": "Paris"} and call.id.startswith("toolu_")
    history += [{"role": "assistant", "content": first.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                              "content": [{"type": "text", "text": "sunny, 21C"}]}]}]
    second = ask(history, "It is sunny in Paris.")
    assert second.stop_reason == "end_turn" and second.content[0].text == "It is sunny in Paris."
    history += [{"role": "assistant", "content": second.content}, *user("And Tokyo?")]
    third = ask(history, CALL.format(city="Tokyo"))
    assert third.content[-1].input == {"city": "Tokyo"}
    grew = [client.messages.count_tokens(model="tiny-hf", tools=[WEATHER], messages=h).input_tokens
            for h in (history[:1], history[:3], history)]
    assert grew[0] < grew[1] < grew[2], "each tool turn reaches the model's prompt"


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls(client, stream):
    script = CALL.format(city="Paris") + CALL.format(city="Tokyo") + CALL.format(city="Lima")
    kwargs = dict(model="tiny-gguf", max_tokens=300, tools=[WEATHER], messages=user("three cities"),
                  extra_body={"cortex_script": script})
    if stream:
        with client.messages.stream(**kwargs) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kwargs)
    assert [b.type for b in msg.content] == ["tool_use"] * 3
    assert [b.input["city"] for b in msg.content] == ["Paris", "Tokyo", "Lima"]
    assert len({b.id for b in msg.content}) == 3 and msg.stop_reason == "tool_use"


def test_count_tokens_matches_the_models_own_count(client):
    messages = user("How many tokens is this sentence, exactly?")
    counted = client.messages.count_tokens(model="tiny-gguf", system="be brief", messages=messages)
    used = client.messages.create(model="tiny-gguf", max_tokens=1, system="be brief", messages=messages)
    # A prompt whose prefix the neuron had cached counts as cache reads, as Anthropic's API reports them.
    assert counted.input_tokens == used.usage.input_tokens + (used.usage.cache_read_input_tokens or 0) > 10


def test_an_assistant_prefill_is_continued(client):
    messages = [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon"}]
    answer = client.messages.create(model="tiny-gguf", max_tokens=4, messages=messages)
    plain = client.messages.create(model="tiny-gguf", max_tokens=4, messages=messages[:1])
    # The prefill is part of the prompt (that no end-of-turn closes it is checked token by token in
    # tests/test_prompt.py): the request is answered, with more prompt tokens than the question alone.
    assert answer.usage.input_tokens + (answer.usage.cache_read_input_tokens or 0) > \
        plain.usage.input_tokens + (plain.usage.cache_read_input_tokens or 0)


def test_a_system_message_inside_the_conversation_is_answered(client):
    """Claude Code's first request carries one; it used to be refused."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "system", "content": "answer briefly"}, {"role": "user", "content": "go on"}]
    answer = client.messages.create(model="tiny-gguf", max_tokens=4, messages=messages)
    assert answer.role == "assistant" and answer.usage.output_tokens > 0


def test_a_prompt_too_long_is_worded_as_anthropic_words_it(stack, client):
    """Claude Code compacts its conversation when it reads this exact shape."""
    _, neuron = stack
    try:
        with pytest.raises(anthropic.BadRequestError) as err:
            client.messages.create(model="tiny-short", max_tokens=5, messages=user("many words " * 200))
        assert re.fullmatch(r"prompt is too long: \d+ tokens > \d+ maximum", err.value.body["error"]["message"])
    finally:  # the cold load gave it default limits; later tests load it with their own
        http_json("POST", neuron.url + "/models/unload", {"model": "tiny-short"})


def test_error_types(stack, client):
    gateway, neuron = stack
    with pytest.raises(anthropic.AuthenticationError) as err:
        anthropic.Anthropic(base_url=gateway.url, api_key="wrong-key-xxxx", max_retries=0).messages.create(
            model="tiny-gguf", max_tokens=5, messages=user("x"))
    assert err.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="no-such-model", max_tokens=5, messages=user("x"))
    message = err.value.body["error"]["message"]
    assert err.value.body == {"type": "error", "error": {"type": "not_found_error", "message": message}}
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="tiny-gguf", max_tokens=5, messages=[{"role": "robot", "content": "x"}])
    assert err.value.body["error"]["type"] == "invalid_request_error"
    status, body = http_json("POST", gateway.url + "/v1/messages", {"model": "tiny-gguf", "messages": user("x")})
    assert status == 401  # no key: refused before the body is looked at


def test_rate_limit_error_when_the_queue_is_full(stack, client):
    gateway, neuron = stack
    load = {"model": "tiny-short", "max_in_flight": 1, "max_queue_depth": 0}  # one slot, no queue
    assert http_json("POST", neuron.url + "/models/load", load)[0] == 200
    http_json("POST", neuron.url + "/debug/faults", {"model": "tiny-short", "fault": "slow", "delay_ms": 100})
    started = threading.Event()

    def occupy():
        with client.messages.stream(model="tiny-short", max_tokens=30, messages=user("x"),
                                    extra_body={"cortex_script": "x " * 40}) as s:
            for _ in s.text_stream:
                started.set()

    t = threading.Thread(target=occupy)
    t.start()
    assert started.wait(30)
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(model="tiny-short", max_tokens=5, messages=user("x"))
    assert err.value.body["error"]["type"] == "rate_limit_error"
    t.join(60)


def test_overloaded_when_no_node_is_healthy(tmp_path):
    from tests.helpers import free_port

    gateway = start_gateway(tmp_path, {"ghost": f"http://127.0.0.1:{free_port()}"}, wait=False,
                            models_toml='[[models]]\nid = "m"\npath = "/nowhere/m.gguf"\n')
    try:
        import time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                http_json("GET", gateway.url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        c = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as err:
            c.messages.create(model="m", max_tokens=5, messages=user("x"))
        assert err.value.status_code == 503 and err.value.body["error"]["type"] == "overloaded_error"
    finally:
        gateway.terminate()


def test_mid_stream_failure_is_an_error_event(one_node):
    gateway, neuron = one_node
    c = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    http_json("POST", gateway.url + "/admin/load", {"node": "n1", "model": "tiny-gguf"})
    http_json("POST", neuron.url + "/debug/faults", {"model": "tiny-gguf", "fault": "slow", "delay_ms": 100})
    with pytest.raises(anthropic.APIStatusError) as err:
        with c.messages.stream(model="tiny-gguf", max_tokens=100, messages=user("x"),
                               extra_body={"cortex_script": "word " * 60}) as s:
            for i, _ in enumerate(s.text_stream):
                if i == 1:
                    neuron.kill()
    assert "mid-stream" in str(err.value)
