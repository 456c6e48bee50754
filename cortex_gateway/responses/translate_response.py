"""Chat completion -> Response object (non-streaming), and the shapes the stream shares.

The SDK parses a Response with pydantic models whose required fields must be
there, so every Response we send, in a stream's lifecycle events too, is built by
`ResponseHead.response`: the request's echoed settings plus status, output, usage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cortex_gateway.responses.input_items import new_id
from neuron.shared.errors import ApiError

# The neuron names chat fields; a Responses client knows them by these names.
_CLIENT_PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}


@dataclass
class ResponseHead:
    """What every Response object of one request shares: its id, its time, the echoed settings."""

    echo: dict
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # flat name -> (namespace, name)
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def call_item(self, call_id: str | None, name: str, arguments: str, status: str = "completed") -> dict:
        """A function_call item for the model's call of `name`: a namespace's function is named as OpenAI
        names it, its own name plus `namespace`, which is how Codex finds the tool to run."""
        item = function_call_item(call_id, name, arguments, status)
        if name in self.namespaced:
            item["namespace"], item["name"] = self.namespaced[name]
        return item

    def response(self, status: str, output: list[dict], usage: dict | None = None,
                 error: dict | None = None) -> dict:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "error": error, "incomplete_details": incomplete, **self.echo, "output": output,
                "usage": usage}


def status_of(finish_reason: str | None) -> str:
    """The Response status for a chat finish_reason: the token limit leaves it incomplete."""
    return "incomplete" if finish_reason == "length" else "completed"


def message_item(text: str, status: str, logprobs: list | None = None, item_id: str | None = None) -> dict:
    return {"id": item_id or new_id("msg"), "type": "message", "role": "assistant", "status": status,
            "content": [text_part(text, logprobs)]}


def text_part(text: str, logprobs: list | None = None) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def function_call_item(call_id: str | None, name: str, arguments: str, status: str = "completed",
                       item_id: str | None = None) -> dict:
    return {"id": item_id or new_id("fc"), "type": "function_call", "call_id": call_id or new_id("call"),
            "name": name, "arguments": arguments, "status": status}


def response_usage(usage: dict | None) -> dict:
    """Chat usage in Responses terms: input_tokens includes the cached ones, as OpenAI counts them."""
    usage = usage or {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def logprobs_of(choice_logprobs: dict | None) -> list[dict]:
    """Chat `logprobs.content` entries as output_text logprobs (the same fields, bytes filled in)."""
    content = (choice_logprobs or {}).get("content") or []
    return [{**_logprob(e), "top_logprobs": [_logprob(t) for t in e.get("top_logprobs") or []]} for e in content]


def _logprob(entry: dict) -> dict:
    token = entry.get("token") or ""
    return {"token": token, "bytes": entry.get("bytes") or list(token.encode()),
            "logprob": entry.get("logprob", 0.0)}


def to_response(chat: dict, head: ResponseHead) -> dict:
    """The Response for a whole chat answer. Its items come in the order the model made them, so a token
    limit cut only the last: that one is incomplete, as in a stream, and those before it are complete."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    status = status_of(choice.get("finish_reason"))
    calls = message.get("tool_calls") or []
    output = []
    if message.get("content") or not calls:
        last = not calls
        output.append(message_item(message.get("content") or "", status if last else "completed",
                                   logprobs_of(choice.get("logprobs"))))
    for i, call in enumerate(calls):
        fn = call.get("function") or {}
        last = i == len(calls) - 1
        output.append(head.call_item(call.get("id"), fn.get("name", ""), fn.get("arguments", "{}"),
                                     status if last else "completed"))
    return head.response(status, output, response_usage(chat.get("usage")))


def for_client(err: ApiError) -> ApiError:
    """A neuron error, with the parameter it names called by its Responses name (in the message too, where
    the message opens with it, as the neuron's field errors do: `max_tokens is too large: ...`)."""
    name = _CLIENT_PARAMS.get(err.param)
    if name is not None:
        if err.message.startswith(f"{err.param} ") or err.message.startswith(f"{err.param}:"):
            err.message = name + err.message[len(err.param):]
        err.param = name
    return err
