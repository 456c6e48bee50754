"""docs/architecture.md stays a true map: every path it names exists, and it names every module.

A module is named by its path from the repository root in backticks (`cortex_gateway/router.py`);
`dir/{a,b}.py` names `dir/a.py` and `dir/b.py`. Package `__init__.py` files need no row.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("cortex_cli", "cortex_gateway", "neuron")
# A backticked path: no spaces, not a URL path (those start with /), ending in a file extension.
PATH = re.compile(r"`([A-Za-z0-9_.{},/-]+/[A-Za-z0-9_.{},-]+\.(?:py|yml|json|toml|md|tcss))`")
BRACES = re.compile(r"\{([^{}]*)\}")


def expand(path: str) -> list[str]:
    """`a/{b,c}.py` -> [`a/b.py`, `a/c.py`]; one brace group at a time, so several groups work too."""
    match = BRACES.search(path)
    if match is None:
        return [path]
    head, tail = path[:match.start()], path[match.end():]
    return [p for word in match.group(1).split(",") for p in expand(head + word + tail)]


def named_paths() -> set[str]:
    return {p for raw in PATH.findall(DOC.read_text()) for p in expand(raw)}


def modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("*.py")
            if p.name != "__init__.py"}


def test_every_path_the_map_names_exists():
    missing = sorted(p for p in named_paths() if not (ROOT / p).exists())
    assert not missing, "docs/architecture.md names paths that do not exist:\n" + "\n".join(missing)


def test_the_map_names_every_module():
    unnamed = sorted(modules() - named_paths())
    assert not unnamed, "docs/architecture.md does not name:\n" + "\n".join(unnamed)


def test_expand_reads_brace_groups():
    assert expand("a/{b,c}.py") == ["a/b.py", "a/c.py"]
    assert expand("x/{p,q}/{r,s}.yml") == ["x/p/r.yml", "x/p/s.yml", "x/q/r.yml", "x/q/s.yml"]
    assert expand("plain.py") == ["plain.py"]
