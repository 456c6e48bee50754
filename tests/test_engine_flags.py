"""Which engine_args reach an external engine's command line (issue 20, finding 2).

The neuron owns an engine's host, port, model, context, slots, devices, files and code trust: a flag
that sets one is refused by name, in both spellings and under every alias, and a flag not on the
engine's list is refused too. Pure tables here; test_engines.py loads through a real neuron.
"""

from __future__ import annotations

import re

import pytest

from cortex_gateway.config import load_models_file
from neuron.shared.config import ConfigError, config_from_file
from neuron.shared.errors import ApiError
from neuron.shared.launch_flags import TABLES, command_flags, key, refusal
from neuron.shared.protocol import LoadRequest
from tests.helpers import ROOT

CASES = [
    # engine, engine_args, None (passes) or (the flag the refusal names, a word of its reason)
    ("llama-server", ["--host", "0.0.0.0"], ("--host", "listens")),
    ("llama-server", ["--host=0.0.0.0"], ("--host", "listens")),
    ("llama-server", ["--kv-unified", "--port", "1"], ("--port", "listens")),
    ("llama-server", ["--model", "/any/file"], ("--model", "model")),
    ("llama-server", ["-m", "/any/file"], ("-m", "model")),
    ("llama-server", ["-m=/any/file"], ("-m", "model")),
    ("llama-server", ["--chat-template-file", "/etc/shadow"], ("--chat-template-file", "file")),
    ("llama-server", ["--path", "/"], ("--path", "file")),
    ("llama-server", ["--log-file", "/tmp/x"], ("--log-file", "file")),
    ("llama-server", ["-c", "4096"], ("-c", "context_size")),
    ("llama-server", ["-np", "4"], ("-np", "parallel")),
    ("llama-server", ["-dev", "CUDA1"], ("-dev", "devices")),
    ("llama-server", ["--rpc", "10.0.0.9:50052"], ("--rpc", "listens")),
    ("llama-server", ["--tools", "all"], ("--tools", "code")),
    ("llama-server", ["-h"], ("-h", "not one of")),  # llama-server's -h is --help, not a host: unlisted
    ("llama-server", ["--temp", "--host", "0.0.0.0"], ("--host", "listens")),  # no flag hides as a value
    ("llama-server", ["--no-such-flag"], ("--no-such-flag", "docs/engines.md")),
    ("llama-server", ["--"], ("--", "not one of")),
    ("llama-server", ["/etc/shadow"], ("'/etc/shadow'", "not a flag")),
    ("llama-server", ["--temp", "0.5\0"], ("[1]", "NUL")),
    ("llama-server", ["--kv-unified", "-t", "4", "-tb", "8", "--no-jinja", "--chat-template", "chatml"], None),
    ("llama-server", ["--seed", "-1", "-n", "-1", "--temp=0.7", "-ngl", "20", "-fa", "on"], None),
    ("llama-server", ["-C", "ff"], None),  # -C is a CPU mask; -c is the context: case counts
    ("vllm", ["--trust-remote-code"], ("--trust-remote-code", "code")),
    ("vllm", ["--trust_remote_code"], ("--trust_remote_code", "code")),  # vLLM reads _ as -
    ("vllm", ["--host=0.0.0.0"], ("--host", "listens")),
    ("vllm", ["-dpa", "10.0.0.1"], ("-dpa", "listens")),
    ("vllm", ["--chat-template", "/etc/shadow"], ("--chat-template", "file")),  # a path for vLLM
    ("vllm", ["--max-model-len", "9"], ("--max-model-len", "context_size")),
    ("vllm", ["--config", "x.yaml"], ("--config", "file")),
    ("vllm", ["--ho", "0.0.0.0"], ("--ho", "not one of")),  # argparse would expand the prefix: unlisted
    ("vllm", ["-O3"], ("-O3", "not one of")),
    ("vllm", ["--distributed-executor-backend", "my.pkg.Executor"], ("--distributed-executor-backend", "ray")),
    ("vllm", ["--generation-config", "/srv/elsewhere"], ("--generation-config", "auto")),
    ("vllm", ["--generation-config"], ("--generation-config", "auto")),
    ("vllm", ["--enforce-eager", "--dtype", "float32", "--gpu-memory-utilization", "0.92",
              "--enable-auto-tool-choice", "--tool-call-parser", "hermes"], None),
    ("vllm", ["--distributed-executor-backend", "ray", "-tp", "8", "--pipeline-parallel-size=2"], None),
    ("vllm", ["--generation-config=vllm", "--enable_prefix_caching"], None),
    ("sglang", ["--model-path", "/x"], ("--model-path", "model")),
    ("sglang", ["--delete-ckpt-after-loading"], ("--delete-ckpt-after-loading", "file")),
    ("sglang", ["--base-gpu-id", "3"], ("--base-gpu-id", "devices")),
    ("sglang", ["--enable-custom-logit-processor"], ("--enable-custom-logit-processor", "code")),
    ("sglang", ["--mem-fraction-static", "0.8", "--tp-size", "2", "--disable-radix-cache"], None),
]


@pytest.mark.parametrize("engine, args, expected", CASES)
def test_engine_args_table(engine, args, expected):
    problem = refusal(engine, args)
    if expected is None:
        assert problem is None, problem
    else:
        flag, reason = expected
        assert problem is not None and flag in problem and reason in problem, problem


def test_the_load_request_refuses_with_a_400_that_names_the_flag():
    with pytest.raises(ApiError) as info:
        LoadRequest.from_dict({"model": "m", "backend": "vllm", "engine_args": ["--enforce-eager",
                                                                               "--trust-remote-code"]})
    err = info.value
    assert (err.status, err.code, err.param) == (400, "engine_flag_refused", "engine_args")
    assert err.message.startswith("engine_args[1]: --trust-remote-code is set by the neuron"), err.message
    assert LoadRequest.from_dict({"model": "m", "backend": "vllm", "engine_args": ["--enforce-eager"]})


def test_every_listed_flag_is_documented_and_every_documented_flag_is_listed():
    text = (ROOT / "docs" / "engines.md").read_text()
    section = text.split("## Which engine_args pass", 1)[1].split("\n## ", 1)[0]
    flags = re.compile(r"`(-[^`\s=]+)`")
    for engine, table in TABLES.items():
        listed = section.split(f"\n### {engine}\n", 1)[1].split("\n### ", 1)[0]
        documented = set(flags.findall(listed))
        assert documented == set(table.allowed), (engine, documented ^ set(table.allowed))
    refused = set(flags.findall(section.split("\n### Refused", 1)[1]))
    assert refused >= {f for t in TABLES.values() for f in t.owned}


def test_no_flag_is_both_owned_and_allowed_and_no_allowed_flag_prefixes_an_owned_one():
    """vLLM's and SGLang's argparse expand an unambiguous prefix: were an allowed flag missing from
    some version, it must not expand into one the neuron owns. vLLM's --reasoning-parser-plugin came
    after its --reasoning-parser: no version has the one without the other."""
    coexist = {("--reasoning-parser", "--reasoning-parser-plugin")}
    for engine, table in TABLES.items():
        assert not set(table.owned) & table.allowed, engine
        assert all(key(f) == f for f in (*table.owned, *table.allowed)), engine
        if engine != "llama-server":
            clash = [(a, o) for a in table.allowed for o in table.owned
                     if o.startswith(a) and a.startswith("--") and (a, o) not in coexist]
            assert not clash, (engine, clash)


@pytest.mark.parametrize("words, flags", [
    (["/opt/llama-server"], []),
    (["/opt/vllm/bin/vllm", "serve"], []),
    (["/opt/sglang/bin/python", "-m", "sglang.launch_server"], []),
    (["/opt/sglang/bin/python3.11", "-m", "sglang.launch_server", "--host", "0.0.0.0"], ["--host", "0.0.0.0"]),
    (["/opt/llama-server", "-m", "/x.gguf"], ["-m", "/x.gguf"]),  # not a Python launcher: -m is llama's
])
def test_the_flags_of_an_engines_command_line(words, flags):
    assert command_flags(words) == flags


def test_neuron_toml_refuses_engine_flags_in_engines_and_preload(tmp_path):
    path = tmp_path / "neuron.toml"
    path.write_text('[engines]\nllama_server = "/opt/llama-server --host 0.0.0.0"\n')
    with pytest.raises(ConfigError, match=r"\[engines\]\.llama_server\[1\]: --host is set by the neuron"):
        config_from_file(path)
    path.write_text('[engines]\nsglang = "/opt/sglang/bin/python -m sglang.launch_server --enable-metrics"\n'
                    '[[preload]]\nmodel = "m"\nbackend = "vllm"\nengine_args = ["--enforce-eager", '
                    '"--chat-template", "/etc/shadow"]\n')
    with pytest.raises(ConfigError, match=r"\[\[preload\]\] #1\.engine_args\[1\]: --chat-template is set by"):
        config_from_file(path)
    path.write_text('[engines]\nsglang = "/opt/sglang/bin/python -m sglang.launch_server --enable-metrics"\n')
    assert config_from_file(path).engines["sglang"][-1] == "--enable-metrics"


def test_the_gateway_models_file_refuses_them_too(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nid = "big"\npath = "/srv/big"\nbackend = "vllm"\n'
                    'engine_args = ["--gpu-memory-utilization", "0.9", "--trust-remote-code"]\n')
    with pytest.raises(ConfigError, match=r"engine_args\[2\]: --trust-remote-code is set by the neuron"):
        load_models_file(path)
