"""What the gateway does with every field of an Anthropic Messages request (and its beta form).

Claude Code and the SDKs send many fields that steer Anthropic's own service
(caching, thinking budgets, context editing, billing): they have no meaning on
a self-hosted model and are ignored, and said so here and in docs/api.md; what
would change the answer and cannot be done is refused by name. See
`neuron.shared.field_policy`.
"""

from __future__ import annotations

from neuron.shared.field_policy import FieldPolicy, honoured, ignored, refused

_SERVICE = "steers Anthropic's own service; nothing to steer on a self-hosted model"

_COMMON = {
    "model": honoured(),
    "messages": honoured("text, image (base64 or url sources, for vision models), tool_use and tool_result "
                         "blocks; a system message inside messages is kept in place; thinking blocks are dropped; "
                         "document blocks are refused by name"),
    "system": honoured("a string or text blocks"),
    "tools": honoured("client tools; server tools (web search, code execution, ...) are refused by name"),
    "tool_choice": honoured("any and a named tool are enforced by constrained decoding"),
    "output_config": honoured("format (a JSON schema) by constrained decoding; effort is ignored"),
    "thinking": ignored("these models have no separate thinking budget; they answer directly"),
    "cache_control": ignored("prefix reuse is automatic (usage.cache_read_input_tokens)"),
    "speed": ignored(_SERVICE),
    "user_profile_id": ignored(_SERVICE),
    "workspace_id": ignored(_SERVICE),
    "betas": ignored("beta features are Anthropic's; the fields that matter here are honoured on their own"),
    "context_management": ignored("the client's context is sent whole; nothing is edited server-side"),
    "compaction": ignored("nothing is compacted server-side; clients compact on the context-length error"),
    "billing_policy": ignored(_SERVICE),
    "mcp_servers": refused("the gateway connects to no MCP server; give the model those tools as client tools"),
}

MESSAGES = FieldPolicy("Anthropic messages", {
    **_COMMON,
    "max_tokens": honoured(),
    "stream": honoured(),
    "temperature": honoured(),
    "top_p": honoured(),
    "top_k": honoured(),
    "stop_sequences": honoured(),
    "metadata": ignored("user_id is passed on as OpenAI's user, which is ignored too"),
    "service_tier": ignored(_SERVICE),
    "inference_geo": ignored(_SERVICE),
    "diagnostics": ignored(_SERVICE),
    "thread": refused("threads keep the conversation server-side; refused with error_code "
                      "thread_unsupported_request, on which the SDK resends the whole conversation"),
    "fallbacks": ignored("each model is served by the fleet's own failover, not by a list of fallback models"),
    "fallback_credit_token": ignored(_SERVICE),
    "container": refused("there is no code-execution container here"),
    "cortex_script": honoured("test-only: forces the output of `cortex tiny-model` models; refused on others"),
})

COUNT_TOKENS = FieldPolicy("Anthropic count_tokens", {**_COMMON, "max_tokens": ignored("not counted")})

POLICIES = [MESSAGES, COUNT_TOKENS]
