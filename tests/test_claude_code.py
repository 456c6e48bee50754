"""A Claude Code request replayed through the gateway: a well-formed answer, or the context error it compacts on.

Claude Code is pointed at cortex with ANTHROPIC_BASE_URL and a model alias;
it sends the request in `claude_code_request`. On a model whose context is
too small it must get Anthropic's own wording ("prompt is too long: N tokens
> M maximum"), which is what triggers its auto-compaction.
"""

from __future__ import annotations

import re

import anthropic
import pytest

from tests.claude_code_request import claude_code_request
from tests.helpers import make_tiny, one_node_fleet

BETAS = ["claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27"]
SCRIPT = ('The assertion expects 4 where add(1, 2) returns 3.\n<tool_call>\n{"name": "Bash", "arguments": '
          '{"command": "pytest tests/test_app.py", "description": "Run the failing test"}}\n</tool_call>')


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("claude-code")
    models = root / "models"
    models.mkdir()
    make_tiny(models / "tiny-2k.gguf", "gguf")
    make_tiny(models / "tiny-32k.gguf", "gguf", "--context", "32768")
    with one_node_fleet(root, models, "--cpu-memory-mb", "4000", models_toml=(
            '[[models]]\nid = "tiny-32k"\ncontext_size = 32768\n'
            '[aliases]\n"claude-sonnet-4-7" = "tiny-32k"\n"claude-haiku-4-7" = "tiny-2k"\n')) as (gateway, _, _):
        yield anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)


def sdk_args(body: dict) -> tuple[dict, dict]:
    """The body as SDK arguments, and what this SDK no longer takes as one (temperature) as extra_body."""
    body = dict(body)
    del body["stream"]
    return body, {"temperature": body.pop("temperature")}


def test_a_small_context_gets_the_error_claude_code_compacts_on(client):
    body, extra = sdk_args(claude_code_request("claude-haiku-4-7"))
    with pytest.raises(anthropic.BadRequestError) as info:
        with client.beta.messages.stream(**body, betas=BETAS, extra_body=extra):
            pass
    err = info.value.body["error"]
    assert err["type"] == "invalid_request_error"
    found = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", err["message"])
    tokens, maximum = map(int, found.groups())
    assert maximum == 2048 and tokens > maximum


def test_the_replay_streams_a_well_formed_answer(client):
    body, extra = sdk_args(claude_code_request("claude-sonnet-4-7"))
    counted = client.beta.messages.count_tokens(**{k: v for k, v in body.items() if k in (
        "model", "system", "messages", "tools", "thinking", "context_management")}, betas=BETAS).input_tokens
    events = []
    with client.beta.messages.stream(**body, betas=BETAS, extra_body={**extra, "cortex_script": SCRIPT}) as stream:
        for event in stream:
            events.append(event)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    start = events[0].message
    assert start.usage.input_tokens == counted > 5000  # the real prompt size, known before the answer
    assert final.stop_reason == "tool_use"
    text, call = final.content
    assert text.type == "text" and "add(1, 2) returns 3" in text.text
    assert call.type == "tool_use" and call.name == "Bash" and call.input["command"] == "pytest tests/test_app.py"
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) == counted
