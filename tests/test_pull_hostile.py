"""Pulls from a hostile hub (tests/fake_hub.py's hostile mode): names that are paths elsewhere, sizes it does not keep.

A hub or a mirror (HF_ENDPOINT) is outside the node: the names it lists become paths under the
models directory, and the sizes it lists are what the disk check counted. Real `cortex neuron`
processes pull from the fake; nothing may land outside the models directory, nothing beyond a
listed size may be written, and a SIGTERM must not wait for a body that never ends.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from neuron.pulls.names import name_problem, split_parts, staged_path
from tests.fake_hub import FakeHub, hf_env
from tests.helpers import http_json, make_tiny, start_neuron

MIB = 1 << 20


@pytest.mark.parametrize("name", [
    "config.json", "1_Pooling/config.json", "sub/model-Q4_K_M.gguf", "tokenizer.model", "a:b.json", "ünï.json",
    "..x/y..", "model.safetensors.index.json"])
def test_plain_relative_names_pass(name):
    assert name_problem(name) is None


@pytest.mark.parametrize("name, why", [
    ("", "non-empty"), ("/etc/passwd", "absolute"), ("../x.json", "'..'"), ("a/../../b", "'..'"), ("a/..", "'..'"),
    ("a\\..\\b", "backslash"), ("C:\\x", "backslash"), ("a\x00b", "control"), ("a\nb", "control"),
    ("a\x1b[2Jb", "control"), ("a\x7fb", "control"), ("a\x9bb", "control"), ("a\u202eb", "control"),
    ("a//b", "empty"), ("./a", "'.'"), ("a/", "empty"), (5, "string"), (None, "string")])
def test_names_that_are_not_plain_relative_paths_are_refused(name, why):
    assert why in name_problem(name)


def test_a_staged_path_resolves_inside_the_staging_folder(tmp_path):
    staging, outside = tmp_path / "staging", tmp_path / "outside"
    staging.mkdir()
    outside.mkdir()
    (staging / "link").symlink_to(outside)
    assert staged_path("org/x", staging, "sub/config.json", ".part") == staging.resolve() / "sub/config.json.part"
    for name in ("link/config.json", "link", "../outside/x"):
        with pytest.raises(Exception) as refused:
            staged_path("org/x", staging, name)
        assert getattr(refused.value, "code", None) == "unsafe_file_name" and repr(name) in str(refused.value)


@pytest.mark.parametrize("name, parts", [
    ("m-00001-of-00002.gguf", ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]),
    ("m[1]*-00002-of-00002.gguf", ["m[1]*-00001-of-00002.gguf", "m[1]*-00002-of-00002.gguf"]),
    ("sub/a-of-b-00001-of-00001.gguf", ["sub/a-of-b-00001-of-00001.gguf"]),
    ("victim-of-x.gguf", None), ("m-1-of-2.gguf", None), ("m-00001-of-00000.gguf", None)])
def test_split_parts_are_named_from_the_literal_prefix(name, parts):
    assert split_parts(name) == parts


# -- a real neuron against the hostile fake ------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    make_tiny(root / "tiny-hf", "hf")
    make_tiny(root / "tiny.gguf", "gguf")
    return root


@pytest.fixture(scope="module")
def hub():
    with FakeHub() as hub:
        yield hub


@pytest.fixture(scope="module")
def node(root, hub):
    """One neuron for the module; each test pulls from repos of its own. Its staging folders are
    `<root>/models/.pulls/NAME/`, so `../../../x` from one is `<root>/x`."""
    proc = start_neuron(root, root / "models", "--cpu-memory-mb", "4000", env=hf_env(hub.url, root / "hf-home"))
    try:
        yield proc
    finally:
        proc.kill()


def pull(node, source: str, **extra) -> tuple[int, dict]:
    return http_json("POST", node.url + "/models/pull", {"source": source, "wait": True, **extra})


def hf_repo(root: Path, **more: bytes | Path) -> dict[str, bytes | Path]:
    hf = root / "tiny-hf"
    return {"config.json": hf / "config.json", "model.safetensors": hf / "model.safetensors", **more}


def file_requests(hub: FakeHub, repo: str) -> list:
    """Every request for one of `repo`'s files (on the hub or its CDN): none may come before a refusal."""
    return [r for r in hub.requests if repo in r.path and not r.path.startswith("/api/")]


def staged(root: Path) -> list[Path]:
    return [p for p in (root / "models" / ".pulls").rglob("*") if p.is_file() and p.name != "index.json"]


@pytest.mark.parametrize("name", [
    "../../../escaped/tokenizer.json", "{root}/abs-escaped/tokenizer.json", "tokenizer\\..\\..\\..\\x.json",
    "tokenizer\x1b]0;owned\x07\x1b[2J\n.json", "tokenizer\x00.json"],
    ids=["traversal", "absolute", "backslash", "control", "nul"])
def test_a_hostile_file_name_refuses_the_pull_before_a_byte(node, hub, root, name, request):
    name = name.format(root=root)
    repo = f"cortex/hostile-{request.node.callspec.id}"
    hub.add_repo(repo, hf_repo(root, **{name: b'{"hostile": true}'}))
    status, body = pull(node, repo)
    assert status == 502 and body["error"]["code"] == "unsafe_file_name", body
    assert repr(name) in body["error"]["message"], body
    assert file_requests(hub, repo) == [], "refused from the listing, before any file is fetched"
    assert not (root / "escaped").exists() and not (root / "abs-escaped").exists()
    assert not staged(root) and not (root / "models" / repo.replace("/", "--")).exists()


def test_a_gguf_listed_outside_with_a_wrong_sha256_neither_overwrites_nor_deletes(node, hub, root):
    """The old way: written over the file there, found corrupt, then unlinked: a file outside destroyed."""
    victim = root / "outside" / "victim-Q4_K_M.gguf"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    name = "../../../outside/victim-Q4_K_M.gguf"
    hub.add_repo("cortex/victim-GGUF", {name: root / "tiny.gguf"})
    hub.corrupt(name)
    status, body = pull(node, "cortex/victim-GGUF:Q4_K_M")
    assert status == 502 and body["error"]["code"] == "unsafe_file_name", body
    assert victim.read_bytes() == b"precious" and sorted(victim.parent.iterdir()) == [victim]
    assert file_requests(hub, "cortex/victim-GGUF") == []


def test_a_file_served_longer_than_listed_is_cut_at_its_size_and_deleted(node, hub, root):
    hub.add_repo("cortex/longer-GGUF", {"longer-Q4_K_M.gguf": root / "tiny.gguf"})
    hub.serve_extra("longer-Q4_K_M.gguf", 25 * MIB)  # past huggingface_hub's 10 MiB read chunks
    listed = hub.repos["cortex/longer-GGUF"].files["longer-Q4_K_M.gguf"].size
    status, body = pull(node, "cortex/longer-GGUF:Q4_K_M")
    assert status == 502 and body["error"]["code"] == "pull_size_mismatch", body
    assert "longer-Q4_K_M.gguf" in body["error"]["message"] and f"{listed} bytes" in body["error"]["message"]
    assert not staged(root), "what was staged is deleted: no resume may build on it"
    assert not (root / "models" / "longer-Q4_K_M.gguf").exists()


def test_an_endless_body_is_cut_at_the_listed_size(node, hub, root):
    hub.add_repo("cortex/endless-GGUF", {"endless-Q4_K_M.gguf": root / "tiny.gguf"})
    hub.serve_endless("endless-Q4_K_M.gguf", trickle=True)
    status, body = pull(node, "cortex/endless-GGUF:Q4_K_M")
    assert status == 502 and body["error"]["code"] == "pull_size_mismatch", body
    assert not staged(root) and not (root / "models" / "endless-Q4_K_M.gguf").exists()


def wait_for_bytes(node, source: str, deadline_s: float = 120) -> dict:
    """The pull's state once some of its bytes are staged (polled on its state, with a generous deadline)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        pulls = http_json("GET", node.url + "/models/pulls")[1]["pulls"]
        state = next((p for p in pulls if p["source"] == source), {})
        if state.get("done_bytes", 0) > 0 or state.get("phase") in ("done", "failed"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"no byte of {source} came in {deadline_s}s: {pulls}")


def test_a_sigterm_stops_a_download_of_an_endless_body(tmp_path, hub, root):
    """Listed at 512 MiB and never ending: the neuron stops the download, answers the waiting client,
    exits, and what it staged stays within the listed size (kept, so that a pull resumes from it)."""
    hub.add_repo("cortex/forever-GGUF", {"forever-Q4_K_M.gguf": root / "tiny.gguf"})
    hub.list_size("forever-Q4_K_M.gguf", 512 * MIB)
    hub.serve_endless("forever-Q4_K_M.gguf", trickle=True)
    proc = start_neuron(tmp_path, tmp_path / "models", "--cpu-memory-mb", "4000",
                        env=hf_env(hub.url, tmp_path / "hf-home"), name="term")
    answers: list = []

    def wait_for_the_pull() -> None:
        try:
            answers.append(pull(proc, "cortex/forever-GGUF:Q4_K_M"))
        except OSError as exc:  # a connection dropped instead of an answer: the assertion below shows it
            answers.append((None, repr(exc)))

    waiting = threading.Thread(target=wait_for_the_pull)
    try:
        waiting.start()
        state = wait_for_bytes(proc, "cortex/forever-GGUF:Q4_K_M")
        assert state["phase"] == "downloading", state
        proc.proc.send_signal(signal.SIGTERM)
        try:
            proc.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the neuron did not exit after SIGTERM mid-download:\n{proc.log_tail()}")
        assert proc.proc.returncode == 0, proc.log_tail()
        waiting.join(60)
        [(status, body)] = answers
        assert status == 503 and body["error"]["code"] == "shutting_down", body
        parts = list((tmp_path / "models" / ".pulls").rglob("*.part"))
        assert all(p.stat().st_size <= 512 * MIB for p in parts), parts
        assert not list((tmp_path / "models").glob("*.gguf"))
    finally:
        proc.kill()
        waiting.join(60)
