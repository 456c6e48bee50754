"""Shell completion, asked of real shells: bash always, zsh and fish where installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cortex_cli.commands.completion import SHELLS
from cortex_cli.main import cli
from tests.helpers import free_port, one_node_fleet

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)


def shell_env(gateway_url: str) -> dict:
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "CORTEX_GATEWAY": gateway_url}


def need(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed here (make test installs it where apt-get can)")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("completion")
    with one_node_fleet(root, models_dir, name="beast") as (gateway, _, _):
        yield gateway


@pytest.mark.parametrize("shell", SHELLS)
def test_generated_copies_are_current(shell):
    printed = CliRunner().invoke(cli, ["completion", shell]).output
    assert printed == (ROOT / "completions" / f"cortex.{shell}").read_text(), \
        f"regenerate: cortex completion {shell} > completions/cortex.{shell}"


def bash_complete(words: list[str], env: dict) -> list[str]:
    script = (f"source {ROOT / 'completions' / 'cortex.bash'}\n"
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
              "_cortex_completion cortex\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.stderr == "", out.stderr
    return [line for line in out.stdout.splitlines() if line]


def test_bash_commands_nodes_and_models(gateway):
    env = shell_env(gateway.url)
    assert bash_complete(["cortex", "st"], env) == ["status"]
    assert "completion" in bash_complete(["cortex", ""], env)
    assert bash_complete(["cortex", "load", ""], env) == ["beast"]
    assert bash_complete(["cortex", "load", "beast", "tiny-"], env) == ["tiny-gguf", "tiny-hf", "tiny-short"]
    assert bash_complete(["cortex", "load", "beast", "tiny-h"], env) == ["tiny-hf"]
    assert bash_complete(["cortex", "load", "--backend", ""], env) == ["auto", "torch", "llama.cpp", "llama-server",
                                                                   "vllm", "sglang"]
    assert bash_complete(["cortex", "load", "--speculative", ""], env) == ["ngram", "draft"]
    assert bash_complete(["cortex", "load", "beast", "tiny-gguf", "--draft-model", "tiny-s"], env) == ["tiny-short"]


def test_bash_offers_nothing_when_the_gateway_is_down():
    env = shell_env(f"http://127.0.0.1:{free_port()}")
    assert bash_complete(["cortex", "load", ""], env) == []
    assert bash_complete(["cortex", "unload", "beast", ""], env) == []


def test_fish_completes_through_its_own_engine(gateway):
    need("fish")
    script = f"source {ROOT / 'completions' / 'cortex.fish'}; complete -C'cortex load '; complete -C'cortex lo'"
    out = subprocess.run(["fish", "-c", script], capture_output=True, text=True, env=shell_env(gateway.url),
                         timeout=60)
    lines = [line.split("\t")[0] for line in out.stdout.splitlines()]
    assert "beast" in lines and "load" in lines, out.stdout + out.stderr


def test_zsh_registers_and_completes(gateway):
    need("zsh")
    script = (f"autoload -U compinit && compinit -u\nsource {ROOT / 'completions' / 'cortex.zsh'}\n"
              "print -r -- registered=${_comps[cortex]}\n"
              'print -rl -- "${(@f)$(env COMP_WORDS="cortex load beast tiny-g" COMP_CWORD=3 '
              '_CORTEX_COMPLETE=zsh_complete cortex)}"\n')
    out = subprocess.run(["zsh", "-c", script], capture_output=True, text=True, env=shell_env(gateway.url),
                         timeout=60)
    assert "registered=_cortex_completion" in out.stdout, out.stdout + out.stderr
    assert "tiny-gguf" in out.stdout
