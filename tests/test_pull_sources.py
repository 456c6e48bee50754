"""Hub sources and file selection: pure, table-tested."""

from __future__ import annotations

import pytest

from neuron.pulls.sources import HubSource, RemoteFile, local_name, parse_source, quant_of, select_files
from neuron.shared.errors import ApiError


@pytest.mark.parametrize("text, expected", [
    ("Qwen/Qwen2.5-7B-Instruct", HubSource("Qwen/Qwen2.5-7B-Instruct")),
    ("bartowski/Qwen2.5-0.5B-GGUF:Q4_K_M", HubSource("bartowski/Qwen2.5-0.5B-GGUF", quant="Q4_K_M")),
    ("org/repo/sub/model-q8_0.gguf", HubSource("org/repo", file="sub/model-q8_0.gguf")),
    ("org/repo@v1.0:Q8_0", HubSource("org/repo", revision="v1.0", quant="Q8_0")),
    ("tiny-gguf", None),
    ("/abs/path/model.gguf", None),
    ("org/repo/../../etc/passwd.gguf", None),
    ("org/", None),
])
def test_parse_source(text, expected):
    assert parse_source(text) == expected


@pytest.mark.parametrize("path, quant", [
    ("model.Q4_K_M.gguf", "Q4_K_M"), ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "Q4_K_M"),
    ("m-Q8_0-00001-of-00002.gguf", "Q8_0"), ("m-IQ2_XS.gguf", "IQ2_XS"), ("m-f16.gguf", "F16"), ("m.gguf", None),
])
def test_quant_of(path, quant):
    assert quant_of(path) == quant


REPO = [RemoteFile("config.json", 600), RemoteFile("generation_config.json", 100),
        RemoteFile("tokenizer.json", 9000), RemoteFile("tokenizer_config.json", 300),
        RemoteFile("model-00001-of-00002.safetensors", 10, "a" * 64),
        RemoteFile("model-00002-of-00002.safetensors", 10, "b" * 64),
        RemoteFile("model.safetensors.index.json", 50), RemoteFile("pytorch_model.bin", 20, "c" * 64),
        RemoteFile("onnx/model.onnx", 20), RemoteFile("optimizer.pt", 40), RemoteFile("README.md", 5),
        RemoteFile("1_Pooling/config.json", 5), RemoteFile("model.Q4_K_M.gguf", 7)]


def test_a_safetensors_repo_takes_what_a_load_reads_and_skips_the_rest():
    paths = [f.path for f in select_files(HubSource("o/r"), REPO)]
    assert paths == ["1_Pooling/config.json", "config.json", "generation_config.json",
                     "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]
    assert local_name(HubSource("o/r"), []) == "o--r"


def test_bin_weights_only_when_there_are_no_safetensors():
    files = [f for f in REPO if not f.path.endswith(".safetensors")]
    assert "pytorch_model.bin" in [f.path for f in select_files(HubSource("o/r"), files)]


GGUF_REPO = [RemoteFile("README.md", 5), RemoteFile("m-Q4_K_M.gguf", 7, "d" * 64),
             RemoteFile("m-Q8_0-00001-of-00002.gguf", 7, "e" * 64),
             RemoteFile("m-Q8_0-00002-of-00002.gguf", 7, "f" * 64)]


def test_gguf_by_quant_tag_and_split_parts():
    assert [f.path for f in select_files(HubSource("o/r", quant="q4_k_m"), GGUF_REPO)] == ["m-Q4_K_M.gguf"]
    split = select_files(HubSource("o/r", quant="Q8_0"), GGUF_REPO)
    assert [f.path for f in split] == ["m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf"]
    assert local_name(HubSource("o/r", quant="Q8_0"), split) == "m-Q8_0-00001-of-00002.gguf"
    by_file = select_files(HubSource("o/r", file="m-Q8_0-00002-of-00002.gguf"), GGUF_REPO)
    assert len(by_file) == 2, "naming any part brings the whole split file"


def test_a_split_ggufs_parts_are_its_own_names_only():
    """Other files that start like it (another model, another split of it) are not its parts."""
    repo = [*GGUF_REPO, RemoteFile("m-Q8_0-extra-00001-of-00002.gguf", 7, "1" * 64),
            RemoteFile("m-Q8_0-00001-of-00003.gguf", 7, "2" * 64),
            RemoteFile("m-Q8_0-00002-of-00003.gguf", 7, "3" * 64)]
    by_file = select_files(HubSource("o/r", file="m-Q8_0-00001-of-00002.gguf"), repo)
    assert [f.path for f in by_file] == ["m-Q8_0-00001-of-00002.gguf", "m-Q8_0-00002-of-00002.gguf"]
    with pytest.raises(ApiError) as info:
        select_files(HubSource("o/r", file="m-Q8_0-00001-of-00003.gguf"), repo)
    assert info.value.status == 502 and "m-Q8_0-00003-of-00003.gguf" in info.value.message


def test_unknown_quant_lists_the_choices():
    with pytest.raises(ApiError) as info:
        select_files(HubSource("o/r", quant="Q2_K"), GGUF_REPO)
    assert info.value.status == 404 and "Q4_K_M" in info.value.message and "Q8_0" in info.value.message


def test_a_gguf_repo_pulled_as_safetensors_says_how_to_pull_it():
    with pytest.raises(ApiError) as info:
        select_files(HubSource("o/r"), GGUF_REPO)
    assert "o/r:Q4_K_M" in info.value.message


def test_a_pull_the_disk_cannot_hold_is_refused_naming_the_space(monkeypatch, tmp_path):
    import shutil
    from collections import namedtuple

    from neuron.pulls.checks import check_disk

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(100 << 30, 99 << 30, 1 << 30))
    check_disk(tmp_path, 512 << 20)
    with pytest.raises(ApiError) as info:
        check_disk(tmp_path, 4 << 30)
    assert info.value.status == 507 and "1.00 GiB free" in info.value.message and "4.00 GiB" in info.value.message


def test_hf_hub_offline_is_respected(monkeypatch):
    from neuron.pulls import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ApiError) as info:
        hub.list_files(HubSource("o/r"))
    assert info.value.code == "hub_offline" and "HF_HUB_OFFLINE" in info.value.message


def test_the_token_is_taken_out_of_any_message(monkeypatch):
    from neuron.pulls import hub

    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    assert hub.redact("401 for hf_secret_value at https://x") == "401 for <HF_TOKEN> at https://x"
