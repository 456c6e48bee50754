"""Models from the hub onto a node, against a fake hub on loopback (tests/fake_hub.py): no test touches the internet.

Real `cortex neuron` processes pull with huggingface_hub from the fake, whose
repositories hold `cortex tiny-model` outputs; what they pull is then loaded
and asked, through the official SDK.
"""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import openai
import pytest

from tests.fake_hub import FakeHub, hf_env
from tests.helpers import CORTEX, http_json, killed_after, make_tiny, start_gateway, start_neuron

TOKEN = "hf_test_token_not_real_5f3a9c"


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub-files")
    make_tiny(root / "hf", "hf")
    make_tiny(root / "q4.gguf", "gguf", "--seed", "1")
    make_tiny(root / "q8.gguf", "gguf", "--seed", "2")
    make_tiny(root / "split" / "tiny-Q5_K_M.gguf", "gguf", "--split-tensors", "8")
    # Over two of huggingface_hub's 10 MiB download chunks: it writes whole chunks, so a resume needs more.
    make_tiny(root / "big.gguf", "gguf", "--dim", "768", "--seed", "3")
    return {"hf": root / "hf", "q4": root / "q4.gguf", "q8": root / "q8.gguf", "split": root / "split",
            "big": root / "big.gguf"}


@pytest.fixture(scope="module")
def hub(tiny_files):
    with FakeHub(token=TOKEN) as hub:
        hf = tiny_files["hf"]
        hub.add_repo("cortex/tiny-hf", {**{p.name: p for p in hf.iterdir()},
                                        "onnx/model.onnx": b"\0" * 2048, "optimizer.pt": b"\0" * 4096,
                                        "README.md": b"# tiny\n"})
        hub.add_repo("cortex/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny_files["q4"], "tiny-Q8_0.gguf": tiny_files["q8"],
                                          "README.md": b"# tiny gguf\n"})
        hub.add_repo("cortex/split-GGUF", {p.name: p for p in tiny_files["split"].iterdir()})
        hub.add_repo("cortex/gated-GGUF", {"gated-Q4_K_M.gguf": tiny_files["q4"]}, gated=True)
        hub.add_repo("cortex/big-GGUF", {"big-F32.gguf": tiny_files["big"]})
        yield hub


@pytest.fixture()
def node(tmp_path, hub):
    """A neuron whose HF_ENDPOINT is the fake hub (no token), with an empty models dir."""
    proc = start_neuron(tmp_path, tmp_path / "models", "--cpu-memory-mb", "4000",
                        env=hf_env(hub.url, tmp_path / "hf-home"))
    try:
        yield proc
    finally:
        proc.kill()


def pull(node, source: str) -> tuple[int, dict]:
    return http_json("POST", node.url + "/models/pull", {"source": source, "wait": True})


def ask(node, model: str) -> int:
    client = openai.OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0)
    status, body = http_json("POST", node.url + "/models/load", {"model": model})
    assert status == 200, body
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    return reply.usage.completion_tokens


def on_disk(models: Path) -> list[str]:
    return sorted(p.relative_to(models).as_posix() for p in models.rglob("*")
                  if p.is_file() and ".pulls" not in p.parts)


def test_a_safetensors_repo_lands_with_only_what_a_load_reads(node, hub, tmp_path):
    status, state = pull(node, "cortex/tiny-hf")
    assert status == 200 and state["phase"] == "done" and state["id"] == "cortex--tiny-hf", state
    files = on_disk(tmp_path / "models")
    assert "cortex--tiny-hf/model.safetensors" in files and "cortex--tiny-hf/config.json" in files
    assert not any(name.endswith((".onnx", "optimizer.pt", "README.md")) for name in files), files
    assert not hub.fetched("model.onnx") and not hub.fetched("optimizer.pt")
    assert ask(node, "cortex--tiny-hf") > 0
    # The hub id itself now loads what was pulled, without asking the hub again.
    before = len(hub.requests)
    status, body = http_json("POST", node.url + "/models/load", {"model": "cortex/tiny-hf"})
    assert status == 200 and body["id"] == "cortex--tiny-hf" and len(hub.requests) == before


def test_a_gguf_by_quant_tag_and_a_split_gguf(node, hub, tmp_path):
    status, state = pull(node, "cortex/tiny-GGUF:q8_0")
    assert status == 200 and state["id"] == "tiny-Q8_0", state
    assert not hub.fetched("tiny-Q4_K_M.gguf"), "only the chosen quantisation is downloaded"
    status, state = pull(node, "cortex/split-GGUF:Q5_K_M")
    assert status == 200 and state["id"] == "tiny-Q5_K_M" and state["files_total"] == 3, state
    assert sorted(p.name for p in (tmp_path / "models").glob("tiny-Q5_K_M-*")) == [
        "tiny-Q5_K_M-00001-of-00003.gguf", "tiny-Q5_K_M-00002-of-00003.gguf", "tiny-Q5_K_M-00003-of-00003.gguf"]
    assert ask(node, "tiny-Q8_0") > 0 and ask(node, "tiny-Q5_K_M") > 0


def test_an_interrupted_download_resumes_where_it_stopped(node, hub, tmp_path):
    """A connection reset ends the pull; the next pull asks only for the rest (a Range request)."""
    hub.drop_after("big-F32.gguf", 25 << 20, reset=True)
    status, failed = pull(node, "cortex/big-GGUF:F32")
    assert status == 502 and failed["error"]["code"] == "pull_failed", failed
    assert not list((tmp_path / "models").glob("*.gguf")), "a failed pull leaves nothing that looks like a model"
    status, state = pull(node, "cortex/big-GGUF:F32")
    assert status == 200 and state["phase"] == "done", state
    sha = hub.repos["cortex/big-GGUF"].files["big-F32.gguf"].sha256
    last = hub.fetched(sha)[-1]
    assert last.range and last.range.startswith("bytes=") and not last.range.startswith("bytes=0-"), hub.requests
    assert ask(node, "big-F32") > 0


def test_a_connection_closed_midway_is_resumed_within_the_pull(node, hub):
    hub.drop_after("big-F32.gguf", 15 << 20)  # a clean close: huggingface_hub's own retry asks for the rest
    status, state = pull(node, "cortex/big-GGUF:F32")
    assert status == 200 and state["phase"] == "done", state
    sha = hub.repos["cortex/big-GGUF"].files["big-F32.gguf"].sha256
    assert any(r.range and not r.range.startswith("bytes=0-") for r in hub.fetched(sha)), hub.requests


def test_a_corrupted_download_is_caught_by_its_checksum(node, hub, tmp_path):
    hub.corrupt("tiny-Q8_0.gguf")
    try:
        status, body = pull(node, "cortex/tiny-GGUF:Q8_0")
    finally:
        hub._corrupt.discard("tiny-Q8_0.gguf")
    assert status == 502 and body["error"]["code"] == "pull_corrupted" and "sha256" in body["error"]["message"]
    assert not on_disk(tmp_path / "models"), "the bad bytes are deleted, not kept to resume from"
    assert http_json("GET", node.url + "/models/available")[1]["models"] == []


def test_a_gated_repo_needs_a_token_and_the_token_is_never_shown(tmp_path, hub):
    with (killed_after(start_neuron(tmp_path, tmp_path / "a", env=hf_env(hub.url, tmp_path / "hf-a"),
                                    name="a")) as without,
          killed_after(start_neuron(tmp_path, tmp_path / "b", env={**hf_env(hub.url, tmp_path / "hf-b"),
                                                                   "HF_TOKEN": TOKEN}, name="b")) as with_token):
        status, body = pull(without, "cortex/gated-GGUF:Q4_K_M")
        assert status == 403 and body["error"]["code"] == "gated_repo" and "HF_TOKEN" in body["error"]["message"]
        status, state = pull(with_token, "cortex/gated-GGUF:Q4_K_M")
        assert status == 200 and state["phase"] == "done", state
        for proc in (without, with_token):
            assert TOKEN not in proc.log()
            assert TOKEN not in str(http_json("GET", proc.url + "/models/pulls")[1])


def test_a_model_too_big_for_the_node_is_refused_before_any_byte(tmp_path, hub):
    small = start_neuron(tmp_path, tmp_path / "models", "--cpu-memory-mb", "16",
                         env=hf_env(hub.url, tmp_path / "hf-home"), name="small")
    weights = hub.repos["cortex/tiny-hf"].files["model.safetensors"].sha256
    before = len(hub.fetched("model.safetensors")) + len(hub.fetched(weights))
    try:
        status, body = pull(small, "cortex/tiny-hf")
        assert status == 507 and body["error"]["code"] == "insufficient_memory", body
        assert "could never load here" in body["error"]["message"]
        assert len(hub.fetched("model.safetensors")) + len(hub.fetched(weights)) == before, "no weight byte fetched"
    finally:
        small.kill()


def test_two_pulls_of_one_model_download_it_once(node, hub):
    sha = hub.repos["cortex/tiny-GGUF"].files["tiny-Q4_K_M.gguf"].sha256
    before = len(hub.fetched(sha))  # the CDN's GETs of the weights' bytes
    results = []
    threads = [threading.Thread(target=lambda: results.append(pull(node, "cortex/tiny-GGUF:Q4_K_M")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s for s, _ in results] == [200, 200] and {b["id"] for _, b in results} == {"tiny-Q4_K_M"}
    assert len(hub.fetched(sha)) - before == 1, hub.requests


def test_a_cold_load_through_the_gateway_pulls_first_and_the_cli_pulls_with_progress(tmp_path, hub):
    with (killed_after(start_neuron(tmp_path, tmp_path / "models", "--cpu-memory-mb", "4000",
                                    env=hf_env(hub.url, tmp_path / "hf-home"))) as neuron,
          killed_after(start_gateway(tmp_path, {"n1": neuron.url}, models_toml=(
              '[[models]]\nid = "tiny-from-hub"\nsource = "cortex/tiny-GGUF:Q4_K_M"\n'
              '[[models]]\nid = "tiny-split"\nsource = "cortex/split-GGUF:Q5_K_M"\n'))) as gateway):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="tiny-from-hub", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=3, stream=True)
        assert any(c.choices and c.choices[0].delta.content for c in stream)
        assert (tmp_path / "models" / "tiny-Q4_K_M.gguf").is_file()
        cli = subprocess.run(CORTEX + ["pull", "cortex/tiny-hf", "--gateway", gateway.url], capture_output=True,
                             text=True, timeout=300)
        assert cli.returncode == 0, cli.stderr
        assert "pulled cortex/tiny-hf: model cortex--tiny-hf" in cli.stdout
        assert re.search(r"done .* [\d.]+/[\d.]+ [kMG]?B", cli.stderr), cli.stderr  # the progress bar's bytes
        loaded = subprocess.run(CORTEX + ["load", "n1", "tiny-split", "--gateway", gateway.url], capture_output=True,
                                text=True, timeout=300)
        assert loaded.returncode == 0 and "loaded tiny-split on n1" in loaded.stdout, loaded.stderr
        disk = subprocess.run(CORTEX + ["models", "--disk", "n1", "--gateway", gateway.url], capture_output=True,
                              text=True, timeout=60)
        assert "cortex--tiny-hf" in disk.stdout and "tiny-Q4_K_M" in disk.stdout and "GiB" in disk.stdout
        refused = subprocess.run(CORTEX + ["rm", "n1", "tiny-Q4_K_M", "--yes", "--gateway", gateway.url],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "unload it first" in refused.stderr
        removed = subprocess.run(CORTEX + ["rm", "n1", "cortex--tiny-hf", "--gateway", gateway.url], input="y\n",
                                 capture_output=True, text=True, timeout=60)
        assert removed.returncode == 0 and not (tmp_path / "models" / "cortex--tiny-hf").exists(), removed.stderr
        assert removed.stdout.rstrip().endswith("MiB freed): cortex--tiny-hf/"), removed.stdout  # what went
        neuron.kill()
