"""Requests shaped as Codex CLI (0.171.0, `codex exec` with its defaults) sends them to `POST /v1/responses`.

Recorded from a real run (a custom model provider with `wire_api = "responses"`)
and condensed: long descriptions and instruction texts are cut short, the shapes
are kept. What broke Codex on day one: `client_metadata` (its analytics ids, no
switch to stop it), a `namespace` tool (its multi-agent tools), a hosted
`web_search` tool; and, accepted already, `reasoning`, `include` of encrypted
reasoning, `store: false`, `prompt_cache_key`. No `instructions`: Codex sends its
base prompt as the first developer message. Every turn resends the whole
conversation, the model's earlier calls included (a namespaced one with its
`namespace`), each followed by Codex's `function_call_output`.
"""

from __future__ import annotations

import json

SESSION = "01a233b4-bebd-7d21-860c-cb691c279090"
TURN = "01a233b4-bf14-7b90-93d4-2a1cd8b3a4f0"
INSTALLATION = "d1298b4f-f12c-408f-9f1f-b3e80558a47a"

_S = {"type": "string"}
_N = {"type": "number"}
_B = {"type": "boolean"}


def _obj(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _d(kind: dict, text: str) -> dict:
    return {**kind, "description": text}


def _fn(name: str, description: str, parameters: dict) -> dict:
    return {"type": "function", "name": name, "description": description, "strict": False, "parameters": parameters}


_ITEMS = {"type": "array", "description": "Structured input items.", "items": {
    "type": "object", "properties": {key: _S for key in ("audio_url", "image_url", "name", "path", "text", "type")},
    "additionalProperties": False}}
_QUESTION = _obj({"header": _S, "id": _S, "question": _S, "options": {"type": "array", "items": _obj(
    {"description": _S, "label": _S}, ["label", "description"])}}, ["id", "header", "question", "options"])

TOOLS = [
    _fn("exec_command", "Runs a command in a PTY, returning output or a session ID for ongoing interaction.", _obj({
        "cmd": _d(_S, "Shell command to execute."), "justification": _S, "login": _B, "max_output_tokens": _N,
        "prefix_rule": {"type": "array", "items": _S},
        "sandbox_permissions": {"type": "string", "enum": ["use_default", "require_escalated"]},
        "shell": _S, "tty": _B, "workdir": _d(_S, "Working directory for the command."), "yield_time_ms": _N},
        ["cmd"])),
    _fn("write_stdin", "Writes characters to an existing unified exec session and returns recent output.",
        _obj({"chars": _S, "max_output_tokens": _N, "session_id": _N, "yield_time_ms": _N}, ["session_id"])),
    _fn("request_user_input", "Request user input for one to three short questions and wait for the response.",
        _obj({"questions": {"type": "array", "items": _QUESTION}}, ["questions"])),
    _fn("view_image", "View a local image file from the filesystem.", _obj({"path": _S}, ["path"])),
    {"type": "namespace", "name": "multi_agent_v1", "description": "Tools for spawning and managing sub-agents.",
     "tools": [
         _fn("close_agent", "Close an agent and any open descendants.", _obj({"target": _S}, ["target"])),
         _fn("resume_agent", "Resume a previously closed agent by id.", _obj({"id": _S}, ["id"])),
         _fn("send_input", "Send a message to an existing agent.", _obj(
             {"interrupt": _B, "items": _ITEMS, "message": _S, "target": _S}, ["target"])),
         _fn("spawn_agent", "Spawn a sub-agent for a well-scoped task.", {
             "type": "object", "properties": {"fork_context": _B, "items": _ITEMS, "message": _S, "model": _S,
                                              "reasoning_effort": _S}, "additionalProperties": False}),
         _fn("wait_agent", "Wait for agents to reach a final status.", _obj(
             {"targets": {"type": "array", "items": _S}, "timeout_ms": _N}, ["targets"]))]},
    _fn("get_goal", "Get the current goal for this thread.", _obj({}, [])),
    _fn("create_goal", "Create a goal only when explicitly requested.", _obj(
        {"objective": _S, "token_budget": {"type": "integer"}}, ["objective"])),
    _fn("update_goal", "Update the existing goal.", _obj(
        {"status": {"type": "string", "enum": ["complete", "blocked", "paused"]}}, ["status"])),
    {"type": "web_search", "external_web_access": False},
]

_BASE = ("You are a coding agent running in the Codex CLI, a terminal-based coding assistant. You are expected "
         "to be precise, safe, and helpful. Emit function calls to run terminal commands and apply patches. ")
_ENVIRONMENT = ("<environment_context>\n  <cwd>/home/user/project</cwd>\n  <shell>bash</shell>\n  "
                "<current_date>2026-12-01</current_date>\n  <timezone>Etc/UTC</timezone>\n</environment_context>")


def _message(role: str, text: str, n: int) -> dict:
    return {"type": "message", "id": f"msg_{SESSION[:-4]}{n:04x}", "role": role,
            "content": [{"type": "input_text", "text": text}]}


def _client_metadata() -> dict:
    turn = {"installation_id": INSTALLATION, "session_id": SESSION, "thread_id": SESSION, "agent_name": "/root",
            "turn_id": TURN, "window_id": f"{SESSION}:0", "request_kind": "turn", "turn_trigger": "exec",
            "sandbox": "seccomp", "sandbox_mode": "read-only", "model": "MODEL"}
    return {"x-codex-turn-metadata": json.dumps(turn), "root_turn_id": TURN, "thread_id": SESSION,
            "x-codex-installation-id": INSTALLATION, "session_id": SESSION, "x-codex-window-id": f"{SESSION}:0",
            "turn_id": TURN}


def codex_request(model: str, prompt: str, history: list[dict] = ()) -> dict:
    """The body of one turn: Codex's context messages, the user's prompt, then what happened since."""
    base = _BASE * 60  # Codex's base prompt is about 17,000 characters
    return {
        "model": model, "stream": True,
        "input": [_message("developer", base, 0), _message("developer", "<skills_instructions>\n## Skills\n"
                                                            "</skills_instructions>", 1),
                  _message("user", _ENVIRONMENT, 2), _message("user", prompt, 3), *history],
        "tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": True, "reasoning": {"summary": "auto"},
        "store": False, "include": ["reasoning.encrypted_content"], "prompt_cache_key": SESSION,
        "client_metadata": _client_metadata(),
    }


def function_call(item: dict) -> dict:
    """A function_call output item as Codex resends it in the next turn's input (with `namespace` if any)."""
    keep = ("type", "status", "id", "name", "namespace", "arguments", "call_id")
    return {key: item[key] for key in keep if key in item}


def call_output(call_id: str, output: str) -> dict:
    return {"type": "function_call_output", "id": f"fco_{call_id}", "call_id": call_id, "output": output}


HEADERS = {"Accept": "text/event-stream", "Content-Type": "application/json", "originator": "codex_exec",
           "User-Agent": "codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm (codex_exec; 0.171.0)",
           "session-id": SESSION, "thread-id": SESSION, "x-client-request-id": SESSION,
           "x-codex-window-id": f"{SESSION}:0", "x-codex-beta-features": "remote_compaction_v2"}
