"""Pure pieces: stop matching, admission, request validation, templates, config, the tiny model."""

from __future__ import annotations

import asyncio
import filecmp
import subprocess

import pytest

from neuron.engine.admission import Admission
from neuron.engine.chat_template import CHATML_TOOLS_TEMPLATE, render_chat
from neuron.engine.generation import StopMatcher
from neuron.server.openai_schema import parse_chat
from neuron.shared.config import AdmissionLimits, ConfigError, config_from_file
from neuron.shared.errors import ApiError
from tests.helpers import CORTEX


def feed_all(stops, pieces):
    m = StopMatcher(stops)
    out, stopped = [], False
    for p in pieces:
        text, stopped = m.feed(p)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(m.flush())
    return "".join(out), stopped


@pytest.mark.parametrize("stops, pieces, expected", [
    ([], ["ab", "cd"], ("abcd", False)),
    (["cd"], ["ab", "cd", "ef"], ("ab", True)),
    (["cd"], ["abc", "def"], ("ab", True)),
    (["xyz"], ["abx", "y", "q"], ("abxyq", False)),
    (["</s>", "##"], ["a#", "#b"], ("a", True)),
    (["END"], ["E", "N", "D"], ("", True)),
])
def test_stop_matcher(stops, pieces, expected):
    assert feed_all(stops, pieces) == expected


def test_stop_matcher_never_holds_more_than_a_partial_match():
    m = StopMatcher(["STOP"])
    assert m.feed("hello S") == ("hello ", False)
    assert m.feed("x") == ("Sx", False)


async def test_admission_fifo_queue_and_limits():
    adm = Admission("m", AdmissionLimits(max_in_flight=1, max_queue_depth=1, max_wait_s=5))
    release = asyncio.Event()
    order = []

    async def user(name):
        async with adm.slot():
            order.append(name)
            await release.wait()

    first = asyncio.create_task(user("a"))
    await asyncio.sleep(0)
    second = asyncio.create_task(user("b"))
    await asyncio.sleep(0)
    assert adm.in_flight == 1 and adm.queue_depth == 1
    with pytest.raises(ApiError) as err:
        async with adm.slot():
            pass
    assert err.value.status == 429 and err.value.retry_after
    release.set()
    await asyncio.gather(first, second)
    assert order == ["a", "b"] and adm.in_flight == 0 and adm.queue_depth == 0


async def test_admission_wait_timeout_frees_its_place():
    adm = Admission("m", AdmissionLimits(max_in_flight=1, max_queue_depth=4, max_wait_s=0.05))
    async with adm.slot():
        with pytest.raises(ApiError) as err:
            async with adm.slot():
                pass
        assert err.value.status == 503 and adm.queue_depth == 0
    assert adm.in_flight == 0


def test_chat_template_renders_tools_and_tool_calls():
    messages = parse_chat({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]}).messages
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    text = render_chat(CHATML_TOOLS_TEMPLATE, messages, tools=tools)
    assert text.startswith("<|im_start|>system\nbe brief\n\n# Tools")
    assert '"name": "get_weather"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\nsunny\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_config_errors_name_file_and_key(tmp_path):
    path = tmp_path / "neuron.toml"
    path.write_text('[neuron]\nlisten = "nope"\n')
    with pytest.raises(ConfigError, match=r"neuron.toml: \[neuron\].listen: expected HOST:PORT"):
        config_from_file(path)
    path.write_text("[neuron]\ncpu_memory_mb = \"lots\"\n")
    with pytest.raises(ConfigError, match="cpu_memory_mb: expected a number of MiB"):
        config_from_file(path)
    path.write_text("[neuron\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config_from_file(path)
    path.write_text("[neuron]\ncpu_memory_mb = 1\ncpu_memory_mb = 2\n")  # tomlkit's KeyAlreadyPresent
    with pytest.raises(ConfigError, match='not valid TOML: .*"cpu_memory_mb" already exists.*give each key once'):
        config_from_file(path)


def test_config_file_values(tmp_path):
    path = tmp_path / "neuron.toml"
    path.write_text('# my node\n[neuron]\nlisten = "127.0.0.1:9000"\nname = "beast"\ngpus = [0, 1]\n'
                    'models_dir = "models"\n[admission]\nmax_queue_depth = 3\n[[preload]]\nmodel = "x"\n')
    cfg = config_from_file(path)
    assert (cfg.host, cfg.port, cfg.name, cfg.gpus) == ("127.0.0.1", 9000, "beast", [0, 1])
    assert cfg.models_dir == (tmp_path / "models").resolve()
    assert cfg.admission.max_queue_depth == 3 and cfg.preload == [{"model": "x"}]


def test_tiny_model_is_deterministic(tmp_path):
    for run in ("a", "b"):
        subprocess.run(CORTEX + ["tiny-model", str(tmp_path / run / "m.gguf"), "--seed", "3"], check=True)
    assert filecmp.cmp(tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf", shallow=False)


def test_tiny_model_rejects_bad_shapes(tmp_path):
    result = subprocess.run(CORTEX + ["tiny-model", str(tmp_path / "x"), "--dim", "50"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "multiple of 16" in result.stderr
