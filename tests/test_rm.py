"""`cortex rm` (POST /models/delete): exactly the named model's files, never while any of them is loaded.

Split GGUF parts are named from the first part's prefix taken literally, so a name with `-of-` in
it, or with glob characters, reaches no other model's files; a file loaded under another id (a
path inside a folder, a symlink to it) keeps its model from being deleted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import http_json, make_tiny, start_neuron


def parts(prefix: str, total: int = 3) -> list[str]:
    return [f"{prefix}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rm")
    make_tiny(root / "split" / "tiny.gguf", "gguf", "--split-tensors", "8")
    made = sorted((root / "split").iterdir())
    assert [p.name for p in made] == parts("tiny"), made
    models = root / "models"
    models.mkdir()
    for prefix in ("victim-q4", "m[1]", "m1"):  # llama.cpp finds the other parts by name alone
        for src, name in zip(made, parts(prefix), strict=True):
            shutil.copy(src, models / name)
    make_tiny(root / "plain.gguf", "gguf")
    for name in ("victim-of-x.gguf", "target.gguf"):
        shutil.copy(root / "plain.gguf", models / name)
    (models / "alias.gguf").symlink_to("target.gguf")
    make_tiny(models / "cortex--tiny-hf", "hf")
    shutil.copy(root / "plain.gguf", models / "cortex--tiny-hf" / "extra.gguf")
    return models


@pytest.fixture(scope="module")
def node(models):
    proc = start_neuron(models.parent, models, "--cpu-memory-mb", "4000")
    try:
        yield proc
    finally:
        proc.kill()


def rm(node, model: str) -> tuple[int, dict]:
    return http_json("POST", node.url + "/models/delete", {"model": model})


def load(node, model: str) -> str:
    status, body = http_json("POST", node.url + "/models/load", {"model": model})
    assert status == 200, body
    return body["id"]


def test_rm_deletes_exactly_the_named_models_files(node, models):
    load(node, "victim-q4")
    status, body = rm(node, "victim-of-x")  # '-of-' in a plain name is no split
    assert status == 200 and body["deleted"] is True, body
    assert all((models / name).is_file() for name in parts("victim-q4")), "another model's parts are not touched"
    assert not (models / "victim-of-x.gguf").exists() and body["files"] == ["victim-of-x.gguf"], body
    status, body = rm(node, "m[1]")  # glob characters are literal
    assert status == 200, body
    assert all((models / name).is_file() for name in parts("m1"))
    assert not any((models / name).exists() for name in parts("m[1]")) and body["files"] == parts("m[1]"), body


def test_rm_refuses_while_any_file_of_the_model_is_loaded(node, models):
    load(node, "victim-q4")
    status, body = rm(node, "victim-q4")
    assert status == 409 and body["error"]["code"] == "model_loaded", body
    inside = load(node, "cortex--tiny-hf/extra.gguf")  # a file inside the folder, loaded under its own id
    assert inside == "file:cortex--tiny-hf/extra"
    status, body = rm(node, "cortex--tiny-hf")
    assert status == 409 and body["error"]["code"] == "model_loaded" and inside in body["error"]["message"], body
    assert (models / "cortex--tiny-hf" / "extra.gguf").is_file()
    load(node, "alias")  # a symlink to target.gguf
    status, body = rm(node, "target")
    assert status == 409 and "alias" in body["error"]["message"], body
    assert (models / "target.gguf").is_file()
    http_json("POST", node.url + "/models/unload", {"model": inside})
    status, body = rm(node, "cortex--tiny-hf")
    assert status == 200 and body["files"] == ["cortex--tiny-hf/"], body
    assert not (models / "cortex--tiny-hf").exists()


def test_a_split_models_size_counts_its_own_parts_only(tmp_path):
    """The catalog sizes a split GGUF by the same exact names: `a-*-of-*.gguf` also matched `a-b`'s parts."""
    from neuron.server.catalog import scan

    for prefix, size in (("a", 10), ("a-b", 100), ("[ab]", 1000)):
        for name in parts(prefix, 2):
            (tmp_path / name).write_bytes(b"\0" * size)
    sizes = {ref.id: round(ref.size_mb * 2**20) for ref in scan(tmp_path)}
    assert sizes == {"a": 20, "a-b": 200, "[ab]": 2000}
