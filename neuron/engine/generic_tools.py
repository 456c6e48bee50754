"""Tools for every model: cortex's generic tool format, for chat templates that render none.

Many small models' templates (SmolLM2's, plain ChatML) ignore `tools`: the
model never hears of them and every client that uses tools gets plain text.
For such a template the neuron writes the tools into the conversation itself,
in the Hermes/Qwen form that open models are most often trained on and that
`tool_calls` parses back:

- the tool definitions, and how to call them, open the system message;
- an earlier assistant turn's calls become `<tool_call>{"name": ..., "arguments": ...}</tool_call>` text;
- tool results become a user turn of `<tool_response>...</tool_response>` blocks.

`tool_choice` required or named is then enforced the same way as for any other
template, by constrained decoding of one `<tool_call>`. The format is
documented in docs/api.md#tools.
"""

from __future__ import annotations

import json
from functools import lru_cache

from neuron.engine.chat_template import TemplateError, render_chat

PREAMBLE = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""

_PROBE_TOOL = [{"type": "function", "function": {"name": "cortex_probe", "description": "probe",
                                                  "parameters": {"type": "object", "properties": {}}}}]


@lru_cache(maxsize=64)
def renders_tools(template: str, bos: str = "", eos: str = "") -> bool:
    """Whether a chat template shows the model its tools (a render with a tool differs from one without)."""
    messages = [{"role": "user", "content": "hi"}]
    try:
        return render_chat(template, messages, tools=_PROBE_TOOL, bos_token=bos, eos_token=eos) != \
            render_chat(template, messages, bos_token=bos, eos_token=eos)
    except TemplateError:
        return False


def with_generic_tools(messages: list[dict], tools: list[dict]) -> list[dict]:
    """The conversation with the tools described in it, for a template that cannot render them."""
    block = PREAMBLE.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
    out: list[dict] = []
    if messages and messages[0]["role"] == "system":
        out.append({"role": "system", "content": f"{messages[0]['content']}\n\n{block}"})
        messages = messages[1:]
    else:
        out.append({"role": "system", "content": block})
    for message in messages:
        if message["role"] == "tool":
            _add_tool_result(out, message)
        elif message["role"] == "assistant" and message.get("tool_calls"):
            out.append({"role": "assistant", "content": _with_calls(message)})
        else:
            out.append(message)
    return [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]


def _with_calls(message: dict) -> str:
    calls = [f'<tool_call>\n{{"name": {json.dumps(c["function"]["name"])}, "arguments": '
             f'{c["function"]["arguments"] or "{}"}}}\n</tool_call>' for c in message["tool_calls"]]
    return "\n".join(([message["content"]] if message.get("content") else []) + calls)


def _add_tool_result(out: list[dict], message: dict) -> None:
    """Results of one round of calls share one user turn, in order."""
    block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
    last = out[-1] if out else None
    if last is not None and last.get("role") == "user" and last.get("_tool_results"):
        last["content"] += "\n" + block
        return
    out.append({"role": "user", "content": block, "_tool_results": True})
