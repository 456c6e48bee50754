"""The chat-template renderer: what transformers' templates expect of it, and its failures as 400s."""

from __future__ import annotations

import pytest

from neuron.engine.chat_template import TemplateError, render_chat

MESSAGES = [{"role": "user", "content": "hi"}]


def test_tojson_takes_the_arguments_transformers_templates_pass():
    template = "{{ messages | tojson(indent=2, separators=(',', ': '), sort_keys=true, ensure_ascii=true) }}"
    text = render_chat(template, [{"role": "user", "content": "é"}])
    assert text.startswith("[\n  {\n    \"content\": \"\\u00e9\",")


@pytest.mark.parametrize("template", [
    "{% for part in messages[0].missing %}{{ part }}{% endfor %}",  # iterating an undefined-as-None: TypeError
    "{{ messages[0].content + 1 }}",  # str + int
    "{{ messages[5].content }}x{{ (messages | list)[7]['role'] }}",
])
def test_a_template_that_cannot_render_these_messages_is_a_template_error(template):
    messages = [{"role": "user", "content": "hi", "missing": None}]
    with pytest.raises(TemplateError) as info:
        render_chat(template, messages)
    assert "chat template" in str(info.value)
