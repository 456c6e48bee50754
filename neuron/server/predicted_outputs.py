"""OpenAI's Predicted Outputs: `prediction: {"type": "content", "content": ...}` on a chat or text
completion, the text the answer is expected to be much like (a file being edited, say). It changes no
token of the answer: it is the first source of drafts for speculative decoding (`neuron.engine.drafts`),
and the answer's usage says how many of its tokens were accepted and rejected
(`completion_tokens_details`)."""

from __future__ import annotations

from typing import Any

from neuron.shared.errors import bad_request

MAX_PREDICTION_CHARS = 1 << 20  # a prediction longer than any context could be is a mistake


def parse_prediction(value: Any) -> str | None:
    """The prediction's text; None when there is none (absent, null, or empty)."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") != "content":
        raise bad_request('prediction: expected {"type": "content", "content": "the text the answer is expected '
                          'to resemble"}', param="prediction")
    content = value.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise bad_request('prediction.content: expected a string or a list of {"type": "text", "text": ...} '
                              "parts", param="prediction")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise bad_request("prediction.content: expected a string or a list of text parts", param="prediction")
    if len(content) > MAX_PREDICTION_CHARS:
        raise bad_request(f"prediction.content: at most {MAX_PREDICTION_CHARS} characters", param="prediction")
    return content or None
