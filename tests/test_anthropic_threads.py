"""The Anthropic route where the SDK's own helpers and Anthropic's validation meet ours (issue 21).

- The SDK's threaded tool runner sends later turns as only the new tool result
  plus `thread: continue`; the gateway keeps no threads, so it refuses with the
  error the SDK recognises and the runner resends the whole conversation.
- What Anthropic refuses (temperature above 1, an empty user turn) is refused
  here too, in its words.
"""

from __future__ import annotations

from typing import Annotated

import anthropic
import pytest
from anthropic import beta_tool
from pydantic import Field

from tests.helpers import one_node_fleet


@pytest.fixture(scope="module")
def client(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("anthropic-threads")
    with one_node_fleet(root, models_dir, "--cpu-memory-mb", "4000") as (gateway, _, _):
        yield anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)


def test_the_threaded_tool_runner_falls_back_to_whole_conversations(client):
    calls: list[str] = []

    @beta_tool
    def lookup(city: Annotated[str, Field(max_length=8)]) -> str:
        """Look a city up."""
        calls.append(city)
        return "sunny"

    runner = client.beta.messages.tool_runner(model="tiny-gguf", max_tokens=200, tools=[lookup], max_iterations=2,
                                              tool_choice={"type": "any"},
                                              messages=[{"role": "user", "content": "weather?"}])
    replies = list(runner)
    # Two forced calls, each run: the second request had the tools and the history, which it could not have
    # had as a `thread: continue` turn (forced tool choice with no tools is a 400).
    assert len(replies) == 2 and len(calls) == 2, (replies, calls)
    assert all(block.type == "tool_use" for reply in replies for block in reply.content)


def test_a_thread_field_is_refused_with_the_code_the_sdk_reads(client):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.beta.messages.create(model="tiny-gguf", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                                    extra_body={"thread": {"type": "create"}})
    error = info.value.body["error"]
    assert error["details"]["error_code"] == "thread_unsupported_request"
    assert "full conversation" in error["message"]


@pytest.mark.parametrize("field", ["temperature", "top_p"])
def test_sampling_above_one_is_refused_as_anthropic_does(client, field):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="tiny-gguf", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                               extra_body={field: 1.5})
    assert f"{field}: Input should be less than or equal to 1" in str(info.value)


@pytest.mark.parametrize("content", ["", []])
def test_an_empty_user_turn_is_refused(client, content):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="tiny-gguf", max_tokens=5, messages=[{"role": "user", "content": content}])
    assert "messages.0: all messages must have non-empty content" in str(info.value)


def test_an_empty_final_assistant_turn_is_still_a_prefill(client):
    msg = client.messages.create(model="tiny-gguf", max_tokens=3, messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}])
    assert msg.usage.output_tokens > 0
