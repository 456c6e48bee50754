"""External engines under the neuron (vLLM, SGLang, llama-server), tested against a fake engine.

vLLM and SGLang cannot run here (no GPU): `tests/fake_engine.py` stands in for
them, recording its command line and environment and serving the OpenAI routes,
so the neuron's side is tested for real: the command line, the start and its
failures, the relay, the engine's death and recovery, unload and shutdown
leaving no process behind. llama-server runs for real in test_llama_server.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import openai
import psutil
import pytest

from tests.helpers import ROOT, http_json, start_gateway, start_neuron, wait_for

FAKE = ROOT / "tests" / "fake_engine.py"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Executables named like the engines, each the fake under that name, and a neuron.toml naming them."""
    root = tmp_path_factory.mktemp("engines")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name in ("vllm", "sglang", "llama-server"):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} {name} \"$@\"\n")
        script.chmod(0o755)
    (root / "records").mkdir()
    (root / "neuron.toml").write_text(f'[engines]\nvllm = "{bin_dir}/vllm"\nsglang = "{bin_dir}/sglang"\n'
                                      f'llama_server = "{bin_dir}/llama-server"\nstart_timeout_s = 60\n')
    return root


@pytest.fixture(scope="module")
def node(engines, models_dir):
    proc = start_neuron(engines, models_dir, "--config", str(engines / "neuron.toml"),
                        env={"FAKE_ENGINE_RECORD": str(engines / "records")})
    try:
        yield proc
    finally:
        proc.kill()


def record(engines: Path, name: str) -> dict:
    return json.loads((engines / "records" / f"{name}.json").read_text())


def load(node, **spec) -> tuple[int, dict]:
    return http_json("POST", node.url + "/models/load", spec)


def unload(node, model: str) -> None:
    assert http_json("POST", node.url + "/models/unload", {"model": model})[0] == 200


def gone(*pids: int) -> bool:
    return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_vllm_gets_its_own_flags_the_model_s_devices_and_engine_args(node, engines, models_dir):
    status, info = load(node, model="tiny-hf", backend="vllm", context_size=1024, parallel=2,
                        engine_args=["--enforce-eager", "--dtype", "float32"])
    assert status == 200 and info["backend"] == "vllm" and info["memory_mb"] > 5, info
    seen = record(engines, "vllm")
    argv = seen["argv"]
    assert argv[:2] == ["serve", str(models_dir / "tiny-hf")]
    for flag, value in (("--served-model-name", "tiny-hf"), ("--max-model-len", "1024"), ("--max-num-seqs", "2"),
                        ("--tensor-parallel-size", "1"), ("--host", "127.0.0.1")):
        assert argv[argv.index(flag) + 1] == value, argv
    assert argv[-3:] == ["--enforce-eager", "--dtype", "float32"], "engine_args come last, as given"
    assert seen["cuda_visible_devices"] == "", "a CPU load sees no GPU"
    unload(node, "tiny-hf")
    wait_for(lambda: gone(seen["pid"], seen["worker"]), what="the engine and its worker stopped")


def test_requests_are_relayed_and_count_tokens_asks_the_engine(node, tmp_path):
    assert load(node, model="tiny-hf", backend="vllm")[0] == 200
    gateway = start_gateway(tmp_path, {"n1": node.url})
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        ask = dict(model="tiny-hf", messages=[{"role": "user", "content": "hi there"}], max_tokens=5)
        assert client.chat.completions.create(**ask).choices[0].message.content == "fake engine says hi"
        chunks = list(client.chat.completions.create(stream=True, **ask))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "fake engine says hi"
        assert all(c.usage is None for c in chunks), "no usage chunk unless asked"
        asked = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **ask))
        assert asked[-1].usage.completion_tokens == 4
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(**{**ask, "max_tokens": 999999})
        assert "vllm: max_tokens is too large" in str(info.value), "what the engine refuses is a 400, in its words"
        counted = http_json("POST", gateway.url + "/v1/messages/count_tokens",
                            {"model": "tiny-hf", "messages": [{"role": "user", "content": "one two three"}]})
        assert counted == (200, {"input_tokens": 6})
    finally:
        gateway.kill()
        unload(node, "tiny-hf")


def test_sglang_flags_and_what_it_cannot_do(node, engines, models_dir):
    assert load(node, model="tiny-hf", backend="sglang", context_size=512)[0] == 200
    try:
        argv = record(engines, "sglang")["argv"]
        assert argv[argv.index("--model-path") + 1] == str(models_dir / "tiny-hf")
        assert argv[argv.index("--context-length") + 1] == "512" and "--tp-size" in argv
        status, body = http_json("POST", node.url + "/tokenize",
                                 {"model": "tiny-hf", "messages": [{"role": "user", "content": "x"}]})
        assert status == 400 and body["error"]["code"] == "unsupported_by_engine"
    finally:
        unload(node, "tiny-hf")


def test_an_engine_that_is_not_installed_is_a_400_saying_how(tmp_path, models_dir):
    bare = start_neuron(tmp_path, models_dir, name="bare", env={"PATH": "/usr/bin:/bin"})
    try:
        status, body = load(bare, model="tiny-hf", backend="vllm")
        assert status == 400 and body["error"]["code"] == "engine_unavailable"
        assert "pip install vllm" in body["error"]["message"] and "[engines]" in body["error"]["message"]
        status, body = load(bare, model="tiny-hf", backend="llama-server")
        assert status == 400 and body["error"]["code"] == "backend_format_mismatch", "llama-server reads GGUF only"
    finally:
        bare.kill()


def children(node) -> set[int]:
    return {p.pid for p in psutil.Process(node.proc.pid).children(recursive=True)}


def test_a_start_that_fails_says_why_leaves_nothing_running_and_shows_no_absolute_path(node, models_dir):
    before = children(node)
    status, body = load(node, model="tiny-hf", backend="vllm", engine_args=["--dtype", "bogus"])
    assert status == 422 and body["error"]["code"] == "engine_failed", body
    message = body["error"]["message"]
    assert "invalid arguments: bogus" in message, "the engine's own last lines"
    assert "<models>/tiny-hf" in message and ".../fake_engine.py" in message, message
    for where in (str(models_dir), str(models_dir.resolve()), str(ROOT)):
        assert where not in message, f"{where} shown: {message}"
    assert children(node) <= before, "no process left behind"
    assert "tiny-hf" not in {m["id"] for m in http_json("GET", node.url + "/models")[1]["models"]}


@pytest.mark.parametrize("backend, model, args, flag", [
    ("vllm", "tiny-hf", ["--enforce-eager", "--host", "0.0.0.0"], "--host"),
    ("vllm", "tiny-hf", ["--trust-remote-code"], "--trust-remote-code"),
    ("llama-server", "tiny-gguf", ["--model=/etc/passwd"], "--model"),
    ("llama-server", "tiny-gguf", ["--chat-template-file", "/etc/shadow"], "--chat-template-file"),
    ("llama-server", "tiny-gguf", ["--log-file", "/tmp/cortex-truncated"], "--log-file"),
    ("sglang", "tiny-hf", ["--not-a-reviewed-flag"], "--not-a-reviewed-flag"),
])
def test_an_engine_flag_the_neuron_owns_or_has_not_reviewed_is_a_400_and_nothing_starts(
        node, engines, backend, model, args, flag):
    record_file = engines / "records" / f"{backend}.json"
    recorded = record_file.read_text() if record_file.exists() else None
    before = children(node)
    status, body = load(node, model=model, backend=backend, engine_args=args)
    assert status == 400, body
    assert (body["error"]["code"], body["error"]["param"]) == ("engine_flag_refused", "engine_args"), body
    assert f"{flag} is" in body["error"]["message"], body
    assert children(node) == before, "no engine was started"
    assert (record_file.read_text() if record_file.exists() else None) == recorded, "the fake engine never ran"
    assert model not in {m["id"] for m in http_json("GET", node.url + "/models")[1]["models"]}


def test_an_engine_that_dies_mid_stream_is_an_error_then_the_model_recovers(node, engines):
    assert load(node, model="tiny-hf", backend="vllm")[0] == 200
    first = record(engines, "vllm")["pid"]
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)
    try:
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model="tiny-hf", stream=True, max_tokens=5,
                                                messages=[{"role": "user", "content": "please die"}]))

        def restarted() -> bool:
            models = {m["id"]: m for m in http_json("GET", node.url + "/models")[1]["models"]}
            return models.get("tiny-hf", {}).get("status") == "loaded" and record(engines, "vllm")["pid"] != first

        wait_for(restarted, timeout=60, what="the engine restarted and the model loaded again")
        reply = client.chat.completions.create(model="tiny-hf", max_tokens=5, messages=[{"role": "user",
                                                                                       "content": "hi"}])
        assert reply.choices[0].message.content == "fake engine says hi"
    finally:
        unload(node, "tiny-hf")


def test_no_engine_outlives_the_neuron_stopped_or_killed(tmp_path, engines, models_dir):
    for stop in (lambda p: p.terminate(), lambda p: os.kill(p.proc.pid, signal.SIGKILL)):
        records = tmp_path / f"records-{id(stop)}"
        records.mkdir()
        proc = start_neuron(tmp_path, models_dir, "--config", str(engines / "neuron.toml"),
                            env={"FAKE_ENGINE_RECORD": str(records)}, name=f"n{id(stop)}")
        try:
            assert load(proc, model="tiny-hf", backend="sglang")[0] == 200
            seen = json.loads((records / "sglang.json").read_text())
            stop(proc)
            pids = (seen["pid"], seen["worker"])
            wait_for(lambda pids=pids: gone(*pids), timeout=40, what="the engine and its worker gone with the neuron")
        finally:
            proc.kill()


def test_the_load_phase_says_the_engine_is_starting(tmp_path, engines, models_dir):
    """A vLLM start can take minutes: until its health route answers, the load says what it waits for."""
    import threading

    slow = start_neuron(tmp_path, models_dir, "--config", str(engines / "neuron.toml"), name="slow",
                        env={"FAKE_ENGINE_RECORD": str(engines / "records"), "FAKE_ENGINE_HEALTH_DELAY_S": "3"})
    try:
        done: list = []
        thread = threading.Thread(target=lambda: done.append(load(slow, model="tiny-hf", backend="vllm")))
        thread.start()

        def phase() -> str:
            models = http_json("GET", slow.url + "/models")[1]["models"]
            return next((m.get("phase", "") for m in models if m["id"] == "tiny-hf"), "")

        wait_for(lambda: "starting vllm (waiting for /health" in phase(), what="the starting phase")
        thread.join(60)
        assert done and done[0][0] == 200 and phase() == "ready"
    finally:
        slow.kill()


def test_an_engine_log_is_quoted_by_its_tail_only(tmp_path):
    """An engine run with --verbose logs whole prompts: an error quotes neither the file nor a line whole."""
    from neuron.engine.external.process import LINE_CHARS, TAIL_BYTES, tail_lines

    log = tmp_path / "m.vllm.log"
    log.write_bytes(b"x" * (4 * TAIL_BYTES) + b"\nloading\n" + b"p" * (3 * LINE_CHARS) + b"\nerror: bad\n")
    assert tail_lines(log, 3).splitlines() == ["loading", "p" * LINE_CHARS + " [...]", "error: bad"]
    assert len(tail_lines(log, 20)) < TAIL_BYTES
    assert tail_lines(tmp_path / "none.log", 20) == ""
