"""What `POST /v1/responses` does with every field the official SDK can send (see `neuron.shared.field_policy`).

A test walks `openai.types.responses.response_create_params.ResponseCreateParamsBase`
against these rules, so a field the SDK grows cannot pass through unnoticed.
"""

from __future__ import annotations

from neuron.shared.field_policy import FieldPolicy, honoured, ignored, refused

_NOT_HERE = "has no meaning on a self-hosted model"
_CACHE = "prefix reuse is automatic, per slot (input_tokens_details.cached_tokens)"

RESPONSES = FieldPolicy("OpenAI responses", {
    "model": honoured(),
    "input": honoured("a string, or messages (text parts; input_image parts by image_url in user messages, for "
                      "vision models), function_call and function_call_output items; image file_ids, file and "
                      "audio parts, item references and non-function tool items are refused "
                      "naming them; reasoning items are accepted and dropped (these models do not reason)"),
    "instructions": honoured("a system message first; not carried over by previous_response_id, as at OpenAI"),
    "previous_response_id": honoured("the stored conversation is prepended; unknown or expired: 404 "
                                     "previous_response_not_found"),
    "store": honoured("default true: kept in the gateway's memory, bounded by [gateway] responses_store_max, "
                      "responses_store_ttl_s, responses_store_max_mb and responses_store_max_response_mb"),
    "stream": honoured("the full Responses event sequence"),
    "max_output_tokens": honoured("max_tokens; reaching it gives status incomplete"),
    "temperature": honoured(),
    "top_p": honoured(),
    "tools": honoured("function tools, and namespace tools (each function offered as <namespace>__<name>, its "
                      "calls returned with name and namespace); hosted tools (web_search, file_search, "
                      "code_interpreter, image_generation, mcp) are left out of what the model is offered and named "
                      "in cortex_dropped_tools and the X-Cortex-Dropped-Tools header, or refused with [gateway] "
                      "hosted_tools = \"refuse\"; other tool types are refused naming the type"),
    "tool_choice": honoured("auto, none, required, a function, allowed_tools listing functions; other tool "
                            "types are refused"),
    "parallel_tool_calls": honoured(),
    "text": honoured("format text, json_object or json_schema (response_format); verbosity is ignored"),
    "top_logprobs": honoured("0-20, with logprobs on the output text"),
    "include": honoured("message.output_text.logprobs gives logprobs; the other values ask for outputs of "
                        "tools or reasoning that do not exist here, so they add nothing"),
    "truncation": honoured('"disabled" (the default); "auto" is refused: the input is never cut'),
    "metadata": honoured("echoed in the response (up to 16 string pairs)"),
    "reasoning": ignored("these models do not reason: there is no effort to set and no summary to give "
                         "(reasoning_tokens is 0); accepted so reasoning-model clients work unchanged"),
    "client_metadata": ignored("request instrumentation for the client's own analytics (Codex sends its "
                               "installation, session and turn ids): not stored, echoed or logged"),
    "user": ignored(_NOT_HERE + " (no per-user abuse tracking); echoed, up to 64 characters as at OpenAI"),
    "safety_identifier": ignored(_NOT_HERE + " (no per-user abuse tracking); echoed, up to 128 characters as "
                                 "at OpenAI"),
    "prompt_cache_key": ignored(_CACHE + "; echoed, up to 64 characters as at OpenAI"),
    "prompt_cache_options": ignored(_CACHE),
    "prompt_cache_retention": ignored(_CACHE),
    "service_tier": ignored(_NOT_HERE + " (one tier)"),
    "stream_options": ignored("include_obfuscation: no obfuscation padding is added to events"),
    "max_tool_calls": ignored("limits calls to built-in tools, and there are none here (function calls are "
                              "the client's to run)"),
    "access_programs": ignored(_NOT_HERE + " (OpenAI's domain access programs)"),
    "image": ignored("image context options; input_image parts are read as they are sent (detail is passed on)"),
    "background": refused("background responses are not supported; stream the response to see it progress"),
    "background_options": refused("goes with background, which is not supported"),
    "conversation": refused("the Conversations API is not available; chain responses with "
                            "previous_response_id"),
    "context_management": refused("server-side compaction is not available; keep the input within the "
                                  "model's context"),
    "moderation": refused("there is no moderation model here; moderate input and output yourself"),
    "prompt": refused("stored prompt templates are not available; send input and instructions"),
    "cortex_script": honoured("test-only: forces the output of `cortex tiny-model` models; refused on others"),
})

POLICIES = [RESPONSES]
