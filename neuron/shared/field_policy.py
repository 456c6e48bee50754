"""No silent drops: every request field of a dialect is honoured, ignored by design, or refused.

Each dialect's edge declares a `FieldPolicy`: for every field its official SDK can
send, whether we honour it, ignore it because it has no meaning here (and why),
or refuse it with a 400 that names it. A field no policy knows is refused the way
OpenAI refuses one ("Unrecognized request argument supplied: X"), so a client
never believes a setting took effect when it did not. The tables are rendered
into docs/api.md (`python -m cortex_gateway.field_tables`), and a test walks the SDKs'
request types against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuron.shared.errors import bad_request

HONOURED, IGNORED, REFUSED = "honoured", "ignored", "refused"


@dataclass(frozen=True)
class Rule:
    kind: str  # HONOURED | IGNORED | REFUSED
    note: str = ""  # what honouring means, why it is ignored, or what to do instead


def honoured(note: str = "") -> Rule:
    return Rule(HONOURED, note)


def ignored(why: str) -> Rule:
    return Rule(IGNORED, why)


def refused(what_to_do: str) -> Rule:
    return Rule(REFUSED, what_to_do)


@dataclass(frozen=True)
class FieldPolicy:
    dialect: str  # as shown in docs: "OpenAI chat completions", "Anthropic messages", ...
    rules: dict[str, Rule]

    def check(self, data: dict) -> None:
        """Refuse unknown fields, and refused fields set to anything but null/false/empty."""
        for key, value in data.items():
            rule = self.rules.get(key)
            if rule is None:
                raise bad_request(f"Unrecognized request argument supplied: {key} (not a field of the {self.dialect} "
                                  "API, or not one cortex knows; see docs/api.md)", param=key,
                                  code="unknown_parameter")
            if rule.kind == REFUSED and _is_set(value):
                raise bad_request(f"{key}: not supported here; {rule.note}", param=key, code="unsupported_parameter")

    def markdown(self) -> str:
        lines = [f"### {self.dialect}", "", "| field | | note |", "|---|---|---|"]
        for key in sorted(self.rules):
            rule = self.rules[key]
            lines.append(f"| `{key}` | {rule.kind} | {rule.note.replace('|', '/')} |")
        return "\n".join(lines) + "\n"


def _is_set(value: Any) -> bool:
    return value is not None and value is not False and value != [] and value != {} and value != ""
