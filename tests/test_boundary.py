"""The package boundary: the gateway and the CLI use the neuron's light, shared modules only.

The neuron's top level holds what both sides share (the node protocol and its
client, errors and envelopes, SSE framing, auth, the HTTP edge, field readers,
config helpers, metric buckets). The engine (`neuron.engine`: registry,
admission, workers, generation, backends) and the tiny-model writer
(`neuron.tiny`) are the node's alone: importing them would drag torch or
llama.cpp into the gateway. These checks run in CI with the rest of the suite.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = {"neuron", "neuron.errors", "neuron.fields", "neuron.protocol", "neuron.client", "neuron.sse",
          "neuron.auth", "neuron.http", "neuron.config", "neuron.metrics", "neuron.connections",
          "neuron.field_policy", "neuron.openai_fields", "neuron.request_context",
          "neuron.launch_flags", "neuron.heap"}
# The commands that run a neuron or write a tiny model import the node's modules inside the command.
NODE_COMMANDS = {"cortex_cli/commands/neuron.py", "cortex_cli/commands/tiny_model.py"}
HEAVY = ("torch", "llama_cpp", "transformers", "textual", "neuron.engine", "neuron.tiny")


def imports(path: Path, *, top_level_only: bool) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [m for m in found if m == "neuron" or m.startswith("neuron.")]


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["cortex_gateway", "cortex_cli"])
def test_gateway_and_cli_import_only_the_shared_neuron_modules(package):
    wrong = []
    for path in sources(package):
        rel = str(path.relative_to(ROOT))
        for module in imports(path, top_level_only=rel in NODE_COMMANDS):
            if module not in SHARED:
                wrong.append(f"{rel} imports {module}")
    assert not wrong, "the gateway and the CLI must not import the neuron's engine:\n" + "\n".join(wrong)


def test_shared_modules_do_not_import_the_engine():
    wrong = []
    for name in sorted(SHARED - {"neuron"}):
        path = ROOT / (name.replace(".", "/") + ".py")
        wrong += [f"{name} imports {m}" for m in imports(path, top_level_only=False) if m not in SHARED]
    assert not wrong, "\n".join(wrong)


def test_importing_the_gateway_and_the_cli_loads_nothing_heavy():
    code = ("import sys, cortex_gateway.app, cortex_gateway.server, cortex_cli.main; "
            f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
