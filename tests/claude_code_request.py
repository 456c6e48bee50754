"""A request shaped as Claude Code (2.x) sends it to `POST /v1/messages?beta=true`.

Its parts are what broke clients on day two: a large system prompt in text
blocks with cache_control, 24 tools with draft-07 schemas, `thinking`,
`context_management`, `metadata.user_id`, a system message in the middle of
the conversation, tool_use / tool_result turns and a streamed answer.
"""

from __future__ import annotations

import copy

_DRAFT7 = "http://json-schema.org/draft-07/schema#"


def _schema(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False,
            "$schema": _DRAFT7}


_S = {"type": "string"}
_N = {"type": "number"}
_B = {"type": "boolean"}

_TOOLS = [
    ("Task", "Launch a new agent to handle complex, multi-step tasks autonomously.",
     {"description": _S, "prompt": _S, "subagent_type": _S}, ["description", "prompt", "subagent_type"]),
    ("Bash", "Executes a given bash command in a persistent shell session with optional timeout.",
     {"command": _S, "timeout": _N, "description": _S, "run_in_background": _B}, ["command"]),
    ("Glob", "Fast file pattern matching tool that works with any codebase size.",
     {"pattern": _S, "path": _S}, ["pattern"]),
    ("Grep", "A powerful search tool built on ripgrep.",
     {"pattern": _S, "path": _S, "glob": _S, "output_mode": {"type": "string", "enum": [
         "content", "files_with_matches", "count"]}, "-B": _N, "-A": _N, "-C": _N, "-n": _B, "-i": _B, "type": _S,
      "head_limit": _N, "multiline": _B}, ["pattern"]),
    ("ExitPlanMode", "Use this tool when you are in plan mode and have finished presenting your plan.",
     {"plan": _S}, ["plan"]),
    ("Read", "Reads a file from the local filesystem.", {"file_path": _S, "offset": _N, "limit": _N}, ["file_path"]),
    ("Edit", "Performs exact string replacements in files.",
     {"file_path": _S, "old_string": _S, "new_string": _S, "replace_all": {"type": "boolean", "default": False}},
     ["file_path", "old_string", "new_string"]),
    ("Write", "Writes a file to the local filesystem.", {"file_path": _S, "content": _S}, ["file_path", "content"]),
    ("NotebookEdit", "Completely replaces the contents of a specific cell in a Jupyter notebook.",
     {"notebook_path": _S, "cell_id": _S, "new_source": _S,
      "cell_type": {"type": "string", "enum": ["code", "markdown"]},
      "edit_mode": {"type": "string", "enum": ["replace", "insert", "delete"]}}, ["notebook_path", "new_source"]),
    ("WebFetch", "Fetches content from a specified URL and processes it using an AI model.",
     {"url": {"type": "string", "format": "uri"}, "prompt": _S}, ["url", "prompt"]),
    ("TodoWrite", "Use this tool to create and manage a structured task list for your current coding session.",
     {"todos": {"type": "array", "items": {"type": "object", "properties": {
         "content": {"type": "string", "minLength": 1},
         "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
         "activeForm": {"type": "string", "minLength": 1}}, "required": ["content", "status", "activeForm"],
         "additionalProperties": False}}}, ["todos"]),
    ("WebSearch", "Allows Claude to search the web and use the results to inform responses.",
     {"query": {"type": "string", "minLength": 2}, "allowed_domains": {"type": "array", "items": _S},
      "blocked_domains": {"type": "array", "items": _S}}, ["query"]),
    ("BashOutput", "Retrieves output from a running or completed background bash shell.",
     {"bash_id": _S, "filter": _S}, ["bash_id"]),
    ("KillShell", "Kills a running background bash shell by its ID.", {"shell_id": _S}, ["shell_id"]),
    ("SlashCommand", "Execute a slash command within the main conversation.", {"command": _S}, ["command"]),
    ("Skill", "Execute a skill within the main conversation.", {"command": _S}, ["command"]),
    ("AskUserQuestion", "Ask the user questions to gather preferences or clarify ambiguous instructions.",
     {"questions": {"type": "array", "minItems": 1, "maxItems": 4, "items": {"type": "object", "properties": {
         "question": _S, "header": _S, "multiSelect": _B, "options": {"type": "array", "items": {
             "type": "object", "properties": {"label": _S, "description": _S}, "required": ["label", "description"],
             "additionalProperties": False}}}, "required": ["question", "header", "options", "multiSelect"],
         "additionalProperties": False}}}, ["questions"]),
    ("EnterPlanMode", "Enter plan mode to explore the codebase and design an implementation approach.", {}, []),
    ("ListMcpResourcesTool", "List available resources from configured MCP servers.", {"server": _S}, []),
    ("ReadMcpResourceTool", "Reads a specific resource from an MCP server.", {"server": _S, "uri": _S},
     ["server", "uri"]),
    ("mcp__ide__getDiagnostics", "Get language diagnostics from VS Code", {"uri": _S}, []),
    ("mcp__ide__executeCode", "Execute python code in the Jupyter kernel for the current notebook file.",
     {"code": _S}, ["code"]),
    ("LSP", "Query a language server for definitions, references and hover information.",
     {"operation": {"type": "string", "enum": ["definition", "references", "hover"]}, "file_path": _S,
      "line": {"type": "integer", "minimum": 0}, "character": {"type": "integer", "minimum": 0}},
     ["operation", "file_path", "line", "character"]),
    ("TaskOutput", "Retrieves the output of a background task.", {"task_id": _S, "block": _B}, ["task_id"]),
]

_INSTRUCTIONS = """You are an interactive CLI tool that helps users with software engineering tasks. Use the
instructions below and the tools available to you to assist the user.

# Tone and style
You should be concise, direct, and to the point. Your responses can use Github-flavored markdown for formatting.
Only use tools to complete tasks. Never use tools like Bash or code comments as means to communicate with the user.

# Doing tasks
The user will primarily request you perform software engineering tasks. This includes solving bugs, adding new
functionality, refactoring code, explaining code, and more. Use the TodoWrite tool to plan the task if required.
"""


def claude_code_request(model: str, *, repeat_instructions: int = 12) -> dict:
    """The body, for `model` (Claude Code is pointed at a cortex model by ANTHROPIC_MODEL or an alias)."""
    tools = [{"name": name, "description": text * 3, "input_schema": _schema(props, required)}
             for name, text, props, required in _TOOLS]
    tools[-1]["cache_control"] = {"type": "ephemeral"}
    return copy.deepcopy({
        "model": model,
        "max_tokens": 32000,
        "stream": True,
        "temperature": 1,
        "metadata": {"user_id": "user_0f3a_account_5b1e_session_9c2d"},
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": _INSTRUCTIONS * repeat_instructions, "cache_control": {"type": "ephemeral"}},
        ],
        "tools": tools,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nAs you answer the user's questions, you can use the "
                                         "following context:\n# important-instruction-reminders\nDo what has been "
                                         "asked; nothing more, nothing less.\n</system-reminder>"},
                {"type": "text", "text": "Why does the test in tests/test_app.py fail?"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me read the test first.", "signature": "EqQBCkYIBxgCKkB"},
                {"type": "text", "text": "I'll read the test."},
                {"type": "tool_use", "id": "toolu_01A", "name": "Read",
                 "input": {"file_path": "/repo/tests/test_app.py"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A",
                 "content": [{"type": "text",
                              "text": "     1\tdef test_add():\n     2\t    assert add(1, 2) == 4\n"}]}]},
            {"role": "system", "content": "The user has switched to plan mode: do not edit files."},
            {"role": "user", "content": [{"type": "text", "text": "Explain the failure in one sentence.",
                                          "cache_control": {"type": "ephemeral"}}]},
        ],
    })
