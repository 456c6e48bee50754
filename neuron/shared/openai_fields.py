"""What the neuron does with every field of OpenAI's chat and text completion requests.

The neuron owns the OpenAI dialect (the gateway passes those bodies through), so
its field tables live here. See `neuron.shared.field_policy` for the rule.
"""

from __future__ import annotations

from neuron.shared.field_policy import FieldPolicy, honoured, ignored, refused

_NOT_HERE = "has no meaning on a self-hosted model"
_PREDICTION = honoured("Predicted Outputs: drafts for speculative decoding on llama.cpp models (the answer is the "
                       "same without it); usage.completion_tokens_details says how many of its tokens were "
                       "accepted and rejected")
_SAMPLING = {
    "model": honoured(),
    "stream": honoured(),
    "stream_options": honoured("include_usage: a usage chunk before [DONE]; include_obfuscation is ignored"),
    "max_tokens": honoured(),
    "n": honoured("up to 16 choices"),
    "temperature": honoured(),
    "top_p": honoured(),
    "seed": honoured("the same seed gives the same text, alone or in a batch"),
    "stop": honoured("up to 16 sequences"),
    "logit_bias": honoured(),
    "presence_penalty": honoured(),
    "frequency_penalty": honoured(),
    "user": ignored(_NOT_HERE + " (no per-user abuse tracking)"),
    # Extensions other OpenAI-compatible servers (vLLM, llama.cpp) take; clients send them through extra_body.
    "top_k": honoured("extension (vLLM, llama.cpp)"),
    "min_p": honoured("extension (vLLM, llama.cpp)"),
    "repeat_penalty": honoured("extension (llama.cpp)"),
    "repetition_penalty": honoured("extension (vLLM's name for repeat_penalty)"),
    "ignore_eos": honoured("extension (vLLM): end tokens do not end the answer, max_tokens or a stop sequence "
                           "does; refused with response_format or a forced tool_choice"),
    "min_tokens": honoured("extension (vLLM): neither an end token nor a stop sequence ends the answer before "
                           "this many tokens (a grammar that allows nothing else still ends it)"),
    "include_stop_str_in_output": honoured("extension (vLLM): the text keeps the stop sequence that ended it"),
    "skip_special_tokens": honoured("extension (vLLM): false writes the control tokens the model produces "
                                    "into the text; true, the default, leaves them out"),
    "use_beam_search": refused("beam search is not available: ask for n choices and pick one"),
    "length_penalty": refused("it weighs beam search, which is not available"),
    "prompt_logprobs": refused("the prompt's logprobs are not computed; logprobs covers the answer"),
    **{name: refused("vLLM's older structured output fields are not translated: send response_format with a "
                     "json_schema (a choice of strings is an enum)")
       for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")},
    "cortex_script": honoured("test-only: forces the output of `cortex tiny-model` models; refused on others"),
}

CHAT = FieldPolicy("OpenAI chat completions", {
    **_SAMPLING,
    "messages": honoured("text content, and image_url parts (data URLs) in user messages for vision models; "
                         "audio and file parts are refused with the part type named"),
    "max_completion_tokens": honoured("same as max_tokens"),
    "tools": honoured("function tools; rendered by the model's template, or in cortex's generic format "
                      "when the template has none (docs/api.md#tools)"),
    "tool_choice": honoured("required and a named function are enforced by constrained decoding"),
    "parallel_tool_calls": honoured("false: at most one call per answer"),
    "response_format": honoured("text, json_object, json_schema (strict or not), by constrained decoding"),
    "logprobs": honoured(),
    "top_logprobs": honoured("0-20; n x max_tokens x (1 + top_logprobs) at most 131072 (docs/api.md#logprobs)"),
    "modalities": honoured('only ["text"]'),
    "continue_final_message": honoured("extension (vLLM): continue the last, assistant, message"),
    "chat_template_kwargs": honoured("extension (vLLM): more variables for the chat template, such as Qwen3's "
                                     "enable_thinking; their names must be identifiers, and every string in "
                                     "them, keys included, is read as the client's text"),
    "metadata": ignored(_NOT_HERE + " (stored-completion tags)"),
    "store": ignored(_NOT_HERE + " (nothing is stored for distillation or evals)"),
    "service_tier": ignored(_NOT_HERE + " (one tier)"),
    "prompt_cache_key": ignored("prefix reuse is automatic, per slot (prompt_tokens_details.cached_tokens)"),
    "prompt_cache_retention": ignored("prefix reuse is automatic, per slot"),
    "prompt_cache_options": ignored("prefix reuse is automatic, per slot"),
    "safety_identifier": ignored(_NOT_HERE + " (no per-user abuse tracking)"),
    "prediction": _PREDICTION,
    "reasoning_effort": ignored("these models have no separate reasoning budget"),
    "verbosity": ignored("no verbosity control; ask for brevity in the prompt or set max_tokens"),
    "moderation": refused("there is no moderation service here; run your own before or after the model"),
    "audio": refused("audio output is not available: these models produce text"),
    "web_search_options": refused("there is no web search here; give the model a search tool instead"),
    "functions": refused("the deprecated functions field is not translated: send tools"),
    "function_call": refused("the deprecated function_call field is not translated: send tool_choice"),
})

COMPLETIONS = FieldPolicy("OpenAI completions", {
    **_SAMPLING,
    "prompt": honoured("one prompt per request (a string or a list of one); control tokens in it are parsed"),
    "logprobs": honoured("0-5 alternatives per token; n x max_tokens x (1 + logprobs) at most 131072"),
    "best_of": honoured("1 or equal to n; more is refused"),
    "echo": refused("echo is not supported: prepend the prompt yourself"),
    "suffix": refused("insertion (suffix) is not supported by these models"),
    "prediction": _PREDICTION,
})

POLICIES = [CHAT, COMPLETIONS]
