"""Chat-template rendering shared by both backends.

Both backends render prompts here, with the same Jinja settings transformers
uses (sandboxed, trim_blocks, lstrip_blocks), so a model answers the same
prompt the same way whichever backend loaded it, and tools reach the template
in both.
"""

from __future__ import annotations

import json
from functools import lru_cache

# ChatML with Qwen-style tool calling: the form most open models share, and the
# one the tool-call parser understands.
CHATML_TOOLS_TEMPLATE = """\
{%- if tools %}
<|im_start|>system
{% if messages and messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages and messages[0].role == 'system' %}
<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'tool' %}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' %}
<|im_start|>assistant
{% if message.content %}{{ message.content }}{% endif %}
{%- for tc in message.tool_calls or [] %}
<tool_call>
{"name": {{ tc.function.name | tojson }}, "arguments":
{%- if tc.function.arguments is string %} {{ tc.function.arguments }}
{%- else %} {{ tc.function.arguments | tojson }}
{%- endif %}}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""


# Plain ChatML, with no tool support (as SmolLM2's): tools reach such models in cortex's generic format.
CHATML_TEMPLATE = """\
{%- for message in messages %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

TEMPLATES = {"chatml-tools": CHATML_TOOLS_TEMPLATE, "chatml": CHATML_TEMPLATE}


class TemplateError(ValueError):
    """The model's chat template could not render these messages."""


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """transformers' `tojson` filter, with the arguments templates pass it (`indent`, `separators`, ...)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=32)
def _compile(source: str):
    from jinja2.exceptions import TemplateError as JinjaError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise JinjaError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def render_chat(
    template: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    extra: dict | None = None,
) -> str:
    """Render `messages` (OpenAI shape, text content) into the model's prompt string; `extra` are more
    template variables (chat_template_kwargs)."""
    from jinja2.exceptions import TemplateError as JinjaError

    try:
        return _compile(template).render(
            **(extra or {}),
            messages=messages,
            tools=tools or None,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
    except JinjaError as exc:
        raise TemplateError(f"the model's chat template rejected the messages: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        # A template that assumes a shape these messages lack (iterating a null content, say): the request
        # cannot be rendered by this model, which is a 400 naming the failure, not a server error.
        raise TemplateError(f"the model's chat template could not render these messages "
                            f"({type(exc).__name__}: {exc}); check the message shapes this model expects") from exc
