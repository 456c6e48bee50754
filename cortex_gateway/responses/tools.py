"""A Responses request's `tools` and `tool_choice`: what the model is offered, and what becomes of the rest.

Function tools are offered as they are. A `namespace` tool groups function tools
(Codex sends its multi-agent tools as one); the model is offered each of them
under one flat name, `<namespace>__<name>`, and its calls of that name come back
as OpenAI makes them: `name` the function's own, `namespace` the group's.

Hosted tools are run by OpenAI's servers (a web search, a file search, a code
sandbox, image generation, a remote MCP server); the fleet has none of them.
Clients such as Codex send one by default, so refusing them would refuse every
request such a client makes: `[gateway] hosted_tools = "drop"` (the default)
leaves them out of what the model is offered and says so in the answer
(`cortex_dropped_tools`, header `X-Cortex-Dropped-Tools`); `"refuse"` makes them
a 400. Built-in tools the client runs itself (computer use, local shell,
apply_patch, custom grammar tools) have call items of their own, which this
route does not produce: they are refused either way, naming the type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cortex_gateway.responses.input_items import NAMESPACE_JOIN, flat_name
from neuron.shared.errors import bad_request
from neuron.shared.fields import require_type

HOSTED = ("web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11",
          "file_search", "code_interpreter", "image_generation", "mcp")


@dataclass
class Tools:
    functions: list[dict] = field(default_factory=list)  # chat tools: what the model is offered
    echo: list[dict] = field(default_factory=list)  # Response.tools: as sent (namespaces kept), less the dropped
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # flat name -> (namespace, name)
    dropped: list[str] = field(default_factory=list)  # the types of the hosted tools not offered

    def names(self) -> set[str]:
        return {t["function"]["name"] for t in self.functions}


def parse_tools(value: Any, hosted: str = "drop") -> Tools:
    """The request's `tools`; `hosted` is [gateway] hosted_tools ("drop" or "refuse")."""
    out = Tools()
    if value is None:
        return out
    if not isinstance(value, list):
        raise bad_request("tools: expected a list of tools", param="tools")
    for i, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in HOSTED:
            _hosted(kind, f"tools[{i}]", hosted, out)
        elif kind == "namespace":
            _namespace(tool, f"tools[{i}]", out)
        else:
            fn = function_tool(tool, f"tools[{i}]")
            out.functions.append(fn)
            out.echo.append(_echo_function(fn["function"]))
    _check_unique(out.functions)
    return out


def _hosted(kind: str, where: str, mode: str, out: Tools) -> None:
    if mode == "refuse":
        raise bad_request(f"{where}: {kind!r} is a hosted tool (run by OpenAI's servers) and this gateway has "
                          'none; its [gateway] hosted_tools = "refuse": remove the tool from the request (with '
                          '"drop", the default, it is left out of what the model is offered)', param="tools",
                          code="unsupported_tool")
    if kind not in out.dropped:
        out.dropped.append(kind)


def _namespace(tool: dict, where: str, out: Tools) -> None:
    namespace, tools = tool.get("name"), tool.get("tools")
    if not isinstance(namespace, str) or not namespace:
        raise bad_request(f"{where}.name: required, the namespace's name", param="tools")
    if not isinstance(tools, list) or not tools:
        raise bad_request(f"{where}.tools: expected a non-empty list of function tools", param="tools")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise bad_request(f"{where}.description: expected a string", param="tools")
    members = []
    for j, member in enumerate(tools):
        fn = function_tool(member, f"{where}.tools[{j}]")["function"]
        members.append(_echo_function(fn))
        flat = {**fn, "name": flat_name(namespace, fn["name"])}
        if description:  # the group's description is the model's only view of the group
            flat["description"] = f"{description}\n\n{fn['description']}".strip()
        out.functions.append({"type": "function", "function": flat})
        out.namespaced[flat["name"]] = (namespace, fn["name"])
    out.echo.append({"type": "namespace", "name": namespace, "description": description or "", "tools": members})


def function_tool(tool: Any, where: str) -> dict:
    """A Responses function tool as a chat tool; any other type is refused, naming it."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise bad_request(f"{where}: tool type {kind!r} is not available here; only function tools "
                          "(type, name, description, parameters, strict) and namespaces of them are",
                          param="tools", code="unsupported_tool")
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise bad_request(f"{where}.name: required", param="tools")
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise bad_request(f"{where}.parameters: expected a JSON schema object", param="tools")
    if tool.get("defer_loading"):
        raise bad_request(f"{where}.defer_loading: tool search is not available; send the tool without it",
                          param="tools")
    fn = {"name": tool["name"], "description": tool.get("description") or "",
          "parameters": parameters or {"type": "object", "properties": {}}}
    if tool.get("strict") is not None:
        fn["strict"] = require_type(tool["strict"], bool, f"{where}.strict", "true or false")
    return {"type": "function", "function": fn}


def _echo_function(fn: dict) -> dict:
    return {"type": "function", "strict": None, **fn}


def _check_unique(functions: list[dict]) -> None:
    seen: set[str] = set()
    for tool in functions:
        name = tool["function"]["name"]
        if name in seen:
            raise bad_request(f"tools: two tools are named {name!r} (a namespace's function is offered to the "
                              f"model as <namespace>{NAMESPACE_JOIN}<name>); rename one", param="tools")
        seen.add(name)


def tool_choice(value: Any, tools: Tools) -> tuple[Any, set[str] | None]:
    """(the chat tool_choice, the flat names allowed_tools keeps, None for all)."""
    if value is None or value == "auto" or value == "none":
        return value, None
    if value == "required":
        return _required(tools, None)
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "function":
        name = _resolve(value, tools, "tool_choice")
        return {"type": "function", "function": {"name": name}}, None
    if kind == "allowed_tools":
        return _allowed_tools(value, tools)
    if kind is None:
        raise bad_request('tool_choice: expected "auto", "none", "required", {"type": "function", "name"} or '
                          '{"type": "allowed_tools", ...}', param="tool_choice")
    raise bad_request(f"tool_choice: tool type {kind!r} is not available here; only function tools are",
                      param="tool_choice", code="unsupported_tool")


def _required(tools: Tools, allowed: set[str] | None) -> tuple[str, set[str] | None]:
    if not tools.functions or allowed == set():
        dropped = f" (the hosted tools {', '.join(tools.dropped)} are not offered here)" if tools.dropped else ""
        raise bad_request(f"tool_choice: a tool call is required but the request leaves the model no function "
                          f"tool to call{dropped}; send a function tool, or tool_choice \"auto\"",
                          param="tool_choice")
    return "required", allowed


def _resolve(ref: dict, tools: Tools, where: str) -> str:
    """The flat name a tool_choice reference means: a function, `namespace` + name, or a namespaced
    function by its own name when no other tool has that name."""
    name, namespace = ref.get("name"), ref.get("namespace")
    names = tools.names()
    if isinstance(namespace, str) and isinstance(name, str) and flat_name(namespace, name) in names:
        return flat_name(namespace, name)
    if name in names:
        return name
    matches = [flat for flat, (_, own) in tools.namespaced.items() if own == name]
    if len(matches) == 1:
        return matches[0]
    raise bad_request(f"{where}.name: {name!r} is not one of the request's function tools", param="tool_choice")


def _allowed_tools(value: dict, tools: Tools) -> tuple[str, set[str]]:
    mode, listed = value.get("mode"), value.get("tools")
    if mode not in ("auto", "required"):
        raise bad_request('tool_choice.mode: expected "auto" or "required"', param="tool_choice")
    if not isinstance(listed, list):
        raise bad_request("tool_choice.tools: expected a list of tools", param="tool_choice")
    allowed = set()
    for i, tool in enumerate(listed):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in tools.dropped:
            continue  # a hosted tool left out of the request: left out of the allowed set too
        if kind != "function":
            raise bad_request(f"tool_choice.tools[{i}]: expected {{\"type\": \"function\", \"name\"}} naming one "
                              "of the request's function tools", param="tool_choice")
        allowed.add(_resolve(tool, tools, f"tool_choice.tools[{i}]"))
    if mode == "required":
        return _required(tools, allowed)
    return mode, allowed
