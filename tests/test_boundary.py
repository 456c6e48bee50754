"""The package boundary, as a prefix rule: the gateway and the CLI import only `neuron.shared`.

`neuron.shared` holds what both sides use (the node protocol and its client, errors and envelopes,
the HTTP and SSE edge, auth, connection bounds, request ids, field readers and policies, the
neuron's light config, metric buckets). `neuron.server` (the daemon's HTTP server), `neuron.engine`
(registry, admission, workers, backends, external engines), `neuron.pulls` and `neuron.tiny` are the
node's alone: importing them would drag torch or llama.cpp into the gateway. No list to keep: a new
module is shared by being put under `neuron/shared/`. `make lint` runs these checks too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = "neuron.shared"
# The commands that run a neuron or write a tiny model import the node's modules inside the command.
NODE_COMMANDS = {"cortex_cli/commands/neuron.py", "cortex_cli/commands/tiny_model.py"}
HEAVY = ("torch", "llama_cpp", "transformers", "textual", "neuron.engine", "neuron.tiny", "neuron.server",
         "neuron.pulls")


def imports(path: Path, *, top_level_only: bool) -> list[str]:
    """Every absolute import of `path` (top-level statements only, or all), `importlib` calls included."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend([node.module] if node.module != "neuron" else [f"neuron.{a.name}" for a in node.names])
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def neuron_imports(path: Path, *, top_level_only: bool) -> list[str]:
    return [m for m in imports(path, top_level_only=top_level_only) if m == "neuron" or m.startswith("neuron.")]


def is_shared(module: str) -> bool:
    return module == SHARED or module.startswith(SHARED + ".")


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["cortex_gateway", "cortex_cli"])
def test_gateway_and_cli_import_only_the_shared_neuron_package(package):
    wrong = []
    for path in sources(package):
        rel = str(path.relative_to(ROOT))
        for module in neuron_imports(path, top_level_only=rel in NODE_COMMANDS):
            if not is_shared(module):
                wrong.append(f"{rel} imports {module}")
    assert not wrong, "the gateway and the CLI import only neuron.shared:\n" + "\n".join(wrong)


def test_shared_package_imports_nothing_of_the_node():
    wrong = [f"{path.relative_to(ROOT)} imports {m}" for path in sources("neuron/shared")
             for m in neuron_imports(path, top_level_only=False) if not is_shared(m)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ["cortex_gateway", "cortex_cli", "neuron/shared"])
def test_no_side_door_past_the_boundary(package):
    """`importlib` reaches any module by a string, past the import checks above."""
    wrong = [str(path.relative_to(ROOT)) for path in sources(package)
             if "importlib" in imports(path, top_level_only=False)
             and "import_module" in path.read_text()]
    assert not wrong, "import_module past the boundary in: " + ", ".join(wrong)


def test_importing_the_gateway_and_the_cli_loads_nothing_heavy():
    code = ("import sys, cortex_gateway.app, cortex_gateway.server, cortex_cli.main; "
            f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
