"""Validation of OpenAI-dialect inference requests into typed objects.

Every field a client can get wrong produces a 400 naming the field; nothing
unchecked reaches a backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from neuron.server.openai_output import OutputFormat, ToolChoice, parse_response_format, parse_tool_choice, parse_tools
from neuron.server.predicted_outputs import parse_prediction
from neuron.shared.errors import bad_request
from neuron.shared.fields import opt_bool, opt_float, opt_int, req_str, require_object
from neuron.shared.image_parts import ImageBounds, ImageInput, decode_data_url, is_remote, remote_refused, url_of
from neuron.shared.openai_fields import CHAT, COMPLETIONS

MAX_STOP_SEQUENCES = 16
MAX_CHOICES = 16
MAX_TOP_LOGPROBS = 20
# Logprob entries (a token's own and its alternatives) one answer may carry, over all its choices. Each
# costs ~60 bytes of JSON and ~250 of Python objects: n=16 x top_logprobs=20 x 2,000 tokens made a
# 41.6 MiB answer and +175 MiB of memory for one request. This allows 6,241 tokens at top_logprobs 20.
MAX_ANSWER_LOGPROBS = 131_072
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
MEDIA_PARTS = ("image_url", "input_audio", "file", "input_image", "input_file")


@dataclass
class SamplingParams:
    max_tokens: int | None = None
    n: int = 1  # choices: they share the prompt's computation where the backend can
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logprobs: int | None = None  # None: no logprobs; else how many alternatives per token (0-20)
    max_tokens_param: str = "max_tokens"  # the field max_tokens came in (max_completion_tokens), for errors
    # vLLM's extensions, which clients written for vLLM send.
    min_tokens: int = 0  # neither an end token nor a stop sequence ends the answer before this many tokens
    ignore_eos: bool = False  # end tokens are written as text: max_tokens or a stop sequence ends the answer
    include_stop: bool = False  # include_stop_str_in_output: the text keeps the stop sequence that ended it
    skip_special: bool = True  # skip_special_tokens: control tokens the model writes are left out of the text


@dataclass
class InferenceRequest:
    model: str
    stream: bool
    sampling: SamplingParams
    messages: list[dict] | None = None
    prompt: str | None = None
    tools: list[dict] | None = None
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    output_format: OutputFormat | None = None
    include_usage: bool = False  # stream_options.include_usage: a usage chunk before [DONE]
    template_kwargs: dict = field(default_factory=dict)  # chat_template_kwargs: more template variables
    # Test-only: honoured by tiny models alone (see neuron.engine.inference, InferenceEngine._forced_tokens).
    script: str | None = None
    # Continue the last (assistant) message instead of opening a new turn: Anthropic's prefill.
    continue_final: bool = False
    # The images of user messages, in order; each such message's content is then a list of
    # {"type": "text"} and {"type": "image"} parts, as processors' chat templates read them.
    images: list[ImageInput] = field(default_factory=list)
    prediction: str | None = None  # Predicted Outputs: drafts for speculative decoding (predicted_outputs)


def parse_sampling(data: dict) -> SamplingParams:
    max_param = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = opt_int(data, max_param, minimum=1)
    sampling = SamplingParams(
        max_tokens=max_tokens,
        max_tokens_param=max_param,
        n=opt_int(data, "n", minimum=1, maximum=MAX_CHOICES) or 1,
        temperature=_default(opt_float(data, "temperature", minimum=0, maximum=2), 1.0),
        top_p=_default(opt_float(data, "top_p", minimum=0, maximum=1), 1.0),
        top_k=_default(opt_int(data, "top_k", minimum=0), 0),
        min_p=_default(opt_float(data, "min_p", minimum=0, maximum=1), 0.0),
        seed=opt_int(data, "seed", minimum=-(2**63), maximum=2**64 - 1),
        stop=parse_stop(data.get("stop")),
        logit_bias=parse_logit_bias(data.get("logit_bias")),
        presence_penalty=_default(opt_float(data, "presence_penalty", minimum=-2, maximum=2), 0.0),
        frequency_penalty=_default(opt_float(data, "frequency_penalty", minimum=-2, maximum=2), 0.0),
        repeat_penalty=_repeat_penalty(data),
        min_tokens=_default(opt_int(data, "min_tokens", minimum=0), 0),
        ignore_eos=opt_bool(data, "ignore_eos"),
        include_stop=opt_bool(data, "include_stop_str_in_output"),
        skip_special=opt_bool(data, "skip_special_tokens", True),
    )
    if max_tokens is not None and sampling.min_tokens > max_tokens:
        raise bad_request(f"min_tokens: {sampling.min_tokens} is more than {max_param}={max_tokens}; ask for at "
                          f"most {max_tokens}, or raise {max_param}", param="min_tokens")
    return sampling


def _repeat_penalty(data: dict) -> float:
    value = opt_float(data, "repeat_penalty", minimum=0, maximum=10)
    if value is None:
        value = opt_float(data, "repetition_penalty", minimum=0, maximum=10)
    return _default(value, 1.0)


def _default(value, fallback):
    return fallback if value is None else value


def parse_stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad_request("stop: expected a string or a list of strings", param="stop")
    if len(value) > MAX_STOP_SEQUENCES:
        raise bad_request(f"stop: at most {MAX_STOP_SEQUENCES} sequences", param="stop")
    return [s for s in value if s]


def parse_logit_bias(value: Any) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("logit_bias: expected an object mapping token ids to biases", param="logit_bias")
    out = {}
    for key, bias in value.items():
        if not str(key).lstrip("-").isdigit() or isinstance(bias, bool) or not isinstance(bias, (int, float)):
            raise bad_request("logit_bias: keys must be token ids and values numbers", param="logit_bias")
        out[int(key)] = max(-100.0, min(100.0, float(bias)))
    return out


def parse_chat(body: Any) -> InferenceRequest:
    data = require_object(body)
    CHAT.check(data)
    _check_modalities(data.get("modalities"))
    tools = parse_tools(data.get("tools"))
    sampling = parse_sampling(data)
    sampling.logprobs = _chat_logprobs(data)
    check_answer_size(sampling, "top_logprobs")
    tool_choice = parse_tool_choice(data.get("tool_choice"), tools)
    output_format = parse_response_format(data.get("response_format"))
    images: list[ImageInput] = []
    messages = parse_messages(data.get("messages"), images)
    if sampling.ignore_eos and (output_format is not None or tool_choice.forced):
        raise bad_request("ignore_eos: cannot be combined with response_format or a forced tool_choice, whose "
                          "grammar decides where the answer ends; send one or the other", param="ignore_eos")
    return InferenceRequest(
        model=req_str(data, "model"),
        stream=opt_bool(data, "stream"),
        sampling=sampling,
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=opt_bool(data, "parallel_tool_calls", True),
        output_format=output_format,
        include_usage=_include_usage(data),
        template_kwargs=_template_kwargs(data.get("chat_template_kwargs")),
        script=_opt_script(data),
        continue_final=_continue_final(data),
        images=images,
        prediction=parse_prediction(data.get("prediction")),
    )


_TEMPLATE_OWN = {"messages", "tools", "bos_token", "eos_token", "add_generation_prompt", "raise_exception"}


def _template_kwargs(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise bad_request("chat_template_kwargs: expected an object of template variables",
                          param="chat_template_kwargs")
    odd = sorted(k for k in value if not k.isidentifier())
    if odd:  # a template reads its variables by name: any other key could only be printed, never read
        raise bad_request(f"chat_template_kwargs: {odd[0][:64]!r} is not a template variable name (letters, "
                          "digits and _, not starting with a digit)", param="chat_template_kwargs")
    taken = sorted(_TEMPLATE_OWN & set(value))
    if taken:
        raise bad_request(f"chat_template_kwargs: {', '.join(taken)} are set by the request itself, not here",
                          param="chat_template_kwargs")
    return value


def parse_completion(body: Any) -> InferenceRequest:
    data = require_object(body)
    COMPLETIONS.check(data)
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad_request("prompt: expected a string (one prompt per request)", param="prompt")
    sampling = parse_sampling(data)
    best_of = opt_int(data, "best_of", minimum=1)
    if best_of is not None and best_of not in (1, sampling.n):
        raise bad_request(f"best_of: {best_of} is not supported; ask for n choices and pick yourself",
                          param="best_of")
    sampling.logprobs = opt_int(data, "logprobs", minimum=0, maximum=5)
    check_answer_size(sampling, "logprobs")
    return InferenceRequest(model=req_str(data, "model"), stream=opt_bool(data, "stream"),
                            sampling=sampling, prompt=prompt, include_usage=_include_usage(data),
                            script=_opt_script(data), prediction=parse_prediction(data.get("prediction")))


def logprob_tokens(sampling: SamplingParams) -> int | None:
    """The most tokens per choice whose logprobs fit one answer; None without logprobs."""
    if sampling.logprobs is None:
        return None
    return MAX_ANSWER_LOGPROBS // (sampling.n * (1 + sampling.logprobs))


def check_answer_size(sampling: SamplingParams, alternatives: str) -> None:
    """Refuse up front an answer whose logprobs could not fit (without max_tokens, it stops there instead)."""
    most = logprob_tokens(sampling)
    if most is None or sampling.max_tokens is None or sampling.max_tokens <= most:
        return
    raise bad_request(f"max_tokens: {sampling.max_tokens} tokens with logprobs, for n={sampling.n} choices "
                      f"and {alternatives}={sampling.logprobs}, would carry "
                      f"{sampling.n * sampling.max_tokens * (1 + sampling.logprobs)} logprob entries, over the "
                      f"{MAX_ANSWER_LOGPROBS} one answer may (n x max_tokens x (1 + {alternatives})); ask for at "
                      f"most {most} tokens, or fewer choices or alternatives", param="max_tokens",
                      code="answer_too_large")


def _chat_logprobs(data: dict) -> int | None:
    top = opt_int(data, "top_logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS)
    if not opt_bool(data, "logprobs"):
        if top:
            raise bad_request("top_logprobs: needs logprobs: true", param="top_logprobs")
        return None
    return top or 0


def _include_usage(data: dict) -> bool:
    options = data.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad_request("stream_options: expected an object", param="stream_options")
    return opt_bool(options, "include_usage")


def _check_modalities(value: Any) -> None:
    if value is not None and value != ["text"]:
        raise bad_request(f'modalities: only ["text"] is available here, got {value!r}', param="modalities")




def _opt_script(data: dict) -> str | None:
    value = data.get("cortex_script")
    if value is not None and not isinstance(value, str):
        raise bad_request("cortex_script: expected a string", param="cortex_script")
    return value


def parse_messages(value: Any, images: list[ImageInput] | None = None) -> list[dict]:
    """The messages, checked; images of user messages are decoded into `images` (refused if it is None)."""
    if not isinstance(value, list) or not value:
        raise bad_request("messages: expected a non-empty list of messages", param="messages")
    return [_parse_message(m, i, images) for i, m in enumerate(value)]


def _parse_message(msg: Any, i: int, images: list[ImageInput] | None) -> dict:
    where = f"messages[{i}]"
    if not isinstance(msg, dict):
        raise bad_request(f"{where}: expected an object", param="messages")
    role = msg.get("role")
    if role not in CHAT_ROLES:
        # OpenAI's own wording and code: clients match on them.
        raise bad_request(f"Invalid value: {role!r}. Supported values are: 'system', 'developer', 'user', "
                          f"'assistant', and 'tool'. ({where}.role)", param=f"{where}.role", code="invalid_value")
    content = msg.get("content")
    if role == "user" and images is not None and _has_images(content):
        content = image_content(content, where, images)
    else:
        content = message_text(content, where)
    out = {"role": "system" if role == "developer" else role, "content": content}
    if role == "assistant" and msg.get("tool_calls"):
        out["tool_calls"] = _parse_tool_calls(msg["tool_calls"], where)
    if role == "tool":
        out["tool_call_id"] = msg.get("tool_call_id")
    return out


def message_text(content: Any, where: str) -> str:
    """Flatten OpenAI content (string or parts) to text; these models read text only."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: expected a string or a list of content parts", param="messages")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind == "image_url":  # user messages are read by image_content
            raise bad_request(f"Invalid content type. image_url parts are read in user messages only. "
                              f"({where}.content[{j}])", param=f"{where}.content[{j}].type", code="unsupported_content")
        if kind in MEDIA_PARTS:
            raise bad_request(f"Invalid content type. {kind} is only supported by certain models; the models here "
                              f"read text and images only: send text parts. ({where}.content[{j}])",
                              param=f"{where}.content[{j}].type", code="unsupported_content")
        if kind not in ("text", "input_text"):
            raise bad_request(f"Invalid value: {kind!r}. Supported values are: 'text', 'image_url', 'input_audio', "
                              f"'file', and 'refusal'. ({where}.content[{j}].type)",
                              param=f"{where}.content[{j}].type", code="invalid_value")
        if not isinstance(part.get("text"), str):
            raise bad_request(f"{where}.content[{j}].text: expected a string", param="messages")
        texts.append(part["text"])
    return "".join(texts)


def _has_images(content: Any) -> bool:
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content)


def image_content(content: list, where: str, images: list[ImageInput]) -> list[dict]:
    """A user message with images: its text parts as they are, each image as {"type": "image"}, the image
    itself (decoded, bounded) appended to `images`. http(s) URLs are refused: the gateway fetches them
    where the operator allows it, and hands the neuron data URLs only."""
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") == "image_url":
            at = f"{where}.content[{j}].image_url"
            url = url_of(part, at)
            if is_remote(url):
                raise remote_refused(at)
            images.append(decode_data_url(url, at, ImageBounds()))
            parts.append({"type": "image"})
        else:
            parts.append({"type": "text", "text": message_text([part], f"{where}.content[{j}]")})
    return parts


def _parse_tool_calls(calls: Any, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise bad_request(f"{where}.tool_calls: expected a list", param="messages")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(f"{where}.tool_calls[{j}].function.name: required", param="messages")
        args = fn.get("arguments", "{}")
        if not isinstance(args, str):
            raise bad_request(f"{where}.tool_calls[{j}].function.arguments: expected a JSON string",
                              param="messages")
        out.append({"id": call.get("id"), "type": "function",
                    "function": {"name": fn["name"], "arguments": args or "{}"}})
    return out


def _continue_final(data: dict) -> bool:
    """`continue_final_message` (vLLM's name): continue the last message, which must be the assistant's."""
    value = opt_bool(data, "continue_final_message")
    messages = data.get("messages")
    if value and not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)
                      and messages[-1].get("role") == "assistant"):
        raise bad_request("continue_final_message: the last message must be the assistant's", param="messages")
    return value
