"""Placement that learns (cortex_gateway/learned_memory.py): which figure a placement plans with, the keys,
the bounds, and the file kept across restarts."""

from __future__ import annotations

import json

import pytest

from cortex_gateway.learned_memory import (
    FILE_NAME,
    LearnedMemory,
    LearnedMemoryStore,
    MemoryKey,
    device_kind,
    key_for_placing,
    key_of_loaded,
)
from neuron.shared.protocol import DeviceInfo, ModelInfo

KEY = MemoryKey("tiny-hf", "auto", 0, 0, "cpu")
CPU = DeviceInfo("cpu", "cpu", name="CPU (2 cores)", free_mb=4000)
GPU0 = DeviceInfo("cuda:0", "cuda", 0, name="NVIDIA H200", free_mb=9000)
GPU1 = DeviceInfo("cuda:1", "cuda", 1, name="NVIDIA H200", free_mb=100)


@pytest.mark.parametrize("learned, estimate, need, source", [
    (None, 58.0, 58.0, "estimated"),  # nothing measured yet: the node's guess
    (32.0, 58.0, 40.0, "learned"),  # the guess was high: measured + the 8 MiB floor of the margin
    (109.3, 36.5, 120.2, "learned"),  # the guess was short: measured + 10%, above the guess
    (828.6, 845.8, 845.8, "estimated"),  # measured + margin is above a guess that was close: the guess
    (500.0, 520.0, 520.0, "estimated"),
    (34.5, 34.5, 34.5, "estimated"),  # the node reported its estimate as the measure (measured under half)
    (20.0, 0.0, 28.0, "learned"),  # no estimate at all (size unknown): what was measured, padded
])
def test_the_figure_a_placement_plans_with(learned, estimate, need, source):
    memory = LearnedMemory()
    if learned is not None:
        memory.record(KEY, learned)
    assert memory.need(KEY, estimate) == (need, source)


@pytest.mark.parametrize("other", [
    MemoryKey("tiny-gguf", "auto", 0, 0, "cpu"),
    MemoryKey("tiny-hf", "torch", 0, 0, "cpu"),
    MemoryKey("tiny-hf", "auto", 4096, 0, "cpu"),
    MemoryKey("tiny-hf", "auto", 0, 4, "cpu"),
    MemoryKey("tiny-hf", "auto", 0, 0, "NVIDIA H200"),
])
def test_a_figure_serves_only_its_own_kind_of_load(other):
    memory = LearnedMemory()
    memory.record(KEY, 109.3)
    assert memory.need(other, 36.5) == (36.5, "estimated")


def test_a_figure_only_grows_and_says_when_it_changed():
    memory = LearnedMemory()
    assert memory.record(KEY, 100.0) is True
    assert memory.record(KEY, 100.0) is False  # a poll seeing the same load again: nothing to write
    assert memory.record(KEY, 90.0) is False  # a smaller measure: the larger stays (the safe side)
    assert memory.record(KEY, 0.0) is False  # not measured (loading)
    assert memory.record(KEY, 120.0) is True
    assert memory.figures[KEY] == 120.0


def test_the_figures_are_bounded_and_the_least_lately_seen_go_first():
    memory = LearnedMemory(max_entries=3)
    keys = [MemoryKey(f"m{i}") for i in range(4)]
    for key in keys[:3]:
        memory.record(key, 10.0)
    memory.record(keys[0], 10.0)  # seen again: now the newest
    memory.record(keys[3], 10.0)
    assert list(memory.figures) == [keys[2], keys[0], keys[3]]


@pytest.mark.parametrize("ids, kind", [
    (["cpu"], "cpu"),  # not "CPU (2 cores)": the core count would split figures that are alike
    (["cuda:0"], "NVIDIA H200"),
    (["cuda:1", "cuda:0"], "NVIDIA H200+NVIDIA H200"),  # split over two cards: its own kind
    (["cuda:7"], "cuda:7"),  # a device the node no longer reports
    ([], "cpu"),
])
def test_device_kinds(ids, kind):
    assert device_kind(ids, [CPU, GPU0, GPU1]) == kind


def test_device_kind_of_a_gpu_without_a_name_is_its_kind():
    assert device_kind(["cuda:0"], [DeviceInfo("cuda:0", "cuda")]) == "cuda"


def test_the_key_of_a_load_matches_the_key_of_placing_it_again():
    spec = {"model": "tiny-hf", "backend": "auto", "devices": []}  # what the neuron echoes as the spec
    loaded = ModelInfo("tiny-hf", backend="torch", devices=["cuda:0"], memory_mb=109.3, context_size=2048, spec=spec)
    devices = [CPU, GPU0, GPU1]
    assert key_of_loaded(loaded, devices) == MemoryKey("tiny-hf", "auto", 0, 0, "NVIDIA H200")
    # placing with no devices named: where the node puts it by default, the device with the most free memory
    placing = key_for_placing("tiny-hf", {"model": "tiny-hf", "backend": "auto"}, devices)
    assert placing == key_of_loaded(loaded, devices)


@pytest.mark.parametrize("spec, key", [
    ({"devices": [1]}, MemoryKey("m", device="NVIDIA H200")),
    ({"devices": ["cpu"], "context_size": 512}, MemoryKey("m", context_size=512)),
    ({"backend": "llama.cpp", "parallel": 4}, MemoryKey("m", "llama.cpp", parallel=4, device="NVIDIA H200")),
    ({"devices": ["nowhere"]}, MemoryKey("m", device="nowhere")),  # the node will refuse it; the key need not
])
def test_keys_for_placing(spec, key):
    assert key_for_placing("m", spec, [CPU, GPU0, GPU1]) == key


def test_a_cpu_only_node_places_on_its_cpu():
    assert key_for_placing("m", {}, [CPU]).device == "cpu"
    assert key_for_placing("m", {}, []).device == "cpu"


def test_the_file_keeps_the_figures_across_a_restart(tmp_path):
    store = LearnedMemoryStore.in_dir(tmp_path / "state")  # created on the first write
    store.observe(KEY, 109.3)
    again = LearnedMemoryStore.in_dir(tmp_path / "state")
    assert again.need(KEY, 36.5) == (120.2, "learned")
    assert json.loads((tmp_path / "state" / FILE_NAME).read_text())["figures"] == [
        {"model": "tiny-hf", "backend": "auto", "context_size": 0, "parallel": 0, "device": "cpu", "memory_mb": 109.3}]


def test_the_file_is_written_only_when_a_figure_changes(tmp_path):
    store = LearnedMemoryStore.in_dir(tmp_path)
    store.observe(KEY, 50.0)
    path = tmp_path / FILE_NAME
    path.write_text("left alone")  # a rewrite would replace this
    store.observe(KEY, 50.0)
    store.observe(KEY, 40.0)
    assert path.read_text() == "left alone"


@pytest.mark.parametrize("text", [
    "{not json",
    "[]",
    '{"version": 2, "figures": []}',
    '{"version": 1, "figures": [{"model": "m"}]}',
    '{"version": 1, "figures": [{"model": 3, "backend": "auto", "context_size": 0, "parallel": 0, "device": "cpu",'
    ' "memory_mb": 1}]}',
    '{"version": 1, "figures": [{"model": "m", "backend": "auto", "context_size": "0", "parallel": 0,'
    ' "device": "cpu", "memory_mb": 1}]}',
    '{"version": 1, "figures": [{"model": "m", "backend": "auto", "context_size": 0, "parallel": 0,'
    ' "device": "cpu", "memory_mb": "x"}]}',
])
def test_a_corrupt_file_is_logged_and_ignored(tmp_path, caplog, text):
    (tmp_path / FILE_NAME).write_text(text)
    store = LearnedMemoryStore.in_dir(tmp_path)
    assert store.learned.figures == {}
    assert "ignoring the learned model memory" in caplog.text
    store.observe(KEY, 10.0)  # and learning goes on, over the bad file
    assert LearnedMemoryStore.in_dir(tmp_path).learned.figures == {KEY: 10.0}


def test_a_state_dir_that_cannot_be_written_is_logged_not_fatal(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    store = LearnedMemoryStore.in_dir(tmp_path / "file")  # a directory that cannot be made
    store.observe(KEY, 10.0)
    assert store.need(KEY, 50.0) == (18.0, "learned")
    assert "could not keep the learned model memory" in caplog.text
