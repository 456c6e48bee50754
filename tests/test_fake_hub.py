"""The fake hub holds up under the real huggingface_hub 2.4.0, so `cortex pull` tests can trust it.

Each test points huggingface_hub at a fresh fake (environment and import-time constants, see
`huggingface_hub_pointed_at`), with a client that refuses anything but loopback: no test can
reach huggingface.co, even by mistake.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from tests.fake_hub import FakeHub, hf_env, huggingface_hub_pointed_at

TOKEN = "hf_fake_token"
REPO = "cortex-test/tiny"
MIB = 1 << 20
HF_CHUNK = 10 * MIB  # huggingface_hub reads bodies in 10 MiB chunks (constants.DOWNLOAD_CHUNK_SIZE)


class Progress:
    """The least a `tqdm_class` needs: built with total/initial/desc/unit..., a context manager, update(n)."""

    made: list[Progress] = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates = kwargs, []
        self.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, n: int) -> None:
        self.updates.append(n)


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    with FakeHub(token=TOKEN) as fake, huggingface_hub_pointed_at(monkeypatch, fake.url, tmp_path / "hf-home"):
        yield fake
    assert not any(r.path == "/api/agent-harnesses" for r in fake.requests), "telemetry should be off"


@pytest.fixture()
def progress():
    Progress.made = []
    return Progress


@pytest.fixture()
def tiny_repo(hub, models_dir) -> dict[str, Path]:
    """A repo made of the real tiny HF folder and GGUF file, served from disk."""
    files = {p.name: p for p in (models_dir / "tiny-hf").iterdir() if p.is_file()}
    files["tiny.gguf"] = models_dir / "tiny-gguf.gguf"
    hub.add_repo(REPO, files)
    return files


@pytest.fixture()
def big_weights(tmp_path) -> Path:
    """Over two of huggingface_hub's 10 MiB read chunks, so a resume can start past the first one."""
    path = tmp_path / "big.safetensors"
    path.write_bytes(os.urandom(2 * HF_CHUNK + 123_457))
    return path


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_model_info_lists_every_file_with_size_and_lfs_sha256(hub, tiny_repo):
    info = HfApi().model_info(REPO, files_metadata=True)
    assert info.sha == hub.repos[REPO].commit and not info.gated
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings.keys() == tiny_repo.keys()
    for name, path in tiny_repo.items():
        assert siblings[name].size == path.stat().st_size
        is_weight = name.endswith((".safetensors", ".gguf"))
        assert (siblings[name].lfs is not None) == is_weight, name
        if is_weight:
            assert siblings[name].lfs.sha256 == sha256(path) and siblings[name].lfs.size == path.stat().st_size
    assert hub.requests[-1][:2] == ("GET", f"/api/models/{REPO}")
    plain = HfApi().model_info(REPO)
    assert {s.rfilename for s in plain.siblings} == tiny_repo.keys() and plain.siblings[0].size is None


def test_model_info_lists_files_without_fetching_a_byte(hub, tiny_repo):
    HfApi().model_info(REPO, files_metadata=True)
    pinned = HfApi().model_info(REPO, revision=hub.repos[REPO].commit, expand=["siblings", "sha"])
    assert pinned.sha == hub.repos[REPO].commit and pinned.downloads is None  # expand keeps only those
    assert [(r.method, r.path) for r in hub.requests] == [
        ("GET", f"/api/models/{REPO}"), ("GET", f"/api/models/{REPO}/revision/{hub.repos[REPO].commit}")]


def test_download_to_local_dir_gets_the_exact_bytes(hub, tiny_repo, tmp_path, progress):
    out = tmp_path / "out"
    commit = hub.repos[REPO].commit
    for name, path in tiny_repo.items():
        got = hf_hub_download(REPO, name, revision=commit, local_dir=out, tqdm_class=progress)
        assert Path(got) == out / name and Path(got).read_bytes() == path.read_bytes()
    lfs = hub.repos[REPO].files["model.safetensors"]
    # A regular file comes from /resolve; an LFS file's HEAD stops at the 302, its GET goes to the CDN.
    assert ("GET", f"/{REPO}/resolve/{commit}/config.json", None) in hub.requests
    assert hub.fetched("model.safetensors") == []
    assert [r.path for r in hub.fetched(lfs.sha256)] == [f"/repos/{REPO}/{lfs.sha256}"]
    # The progress hook: one bar per file, its total the file's size, its updates adding up to it.
    assert [(bar.kwargs["total"], sum(bar.updates)) for bar in progress.made] == [
        (p.stat().st_size, p.stat().st_size) for p in tiny_repo.values()]
    # Pulling again costs one HEAD per file and no byte: local_dir/.cache/huggingface keeps the etags.
    gets = len(hub.fetched(""))
    for name in tiny_repo:
        hf_hub_download(REPO, name, revision=commit, local_dir=out)
    assert len(hub.fetched("")) == gets


def test_a_dropped_download_resumes_with_a_range_request(hub, big_weights, tmp_path, progress):
    hub.add_repo(REPO, {"model.safetensors": big_weights})
    hub.drop_after("model.safetensors", HF_CHUNK + MIB)
    got = hf_hub_download(REPO, "model.safetensors", local_dir=tmp_path / "out", tqdm_class=progress)
    assert sha256(got) == sha256(big_weights)
    # Only whole 10 MiB chunks count as received, so the retry, within the same call, asks from there.
    assert [r.range for r in hub.fetched(hub.repos[REPO].files["model.safetensors"].sha256)] == [
        None, f"bytes={HF_CHUNK}-"]
    [bar] = progress.made  # one bar, kept across the retry, updated per 10 MiB chunk
    assert bar.updates == [HF_CHUNK, HF_CHUNK, big_weights.stat().st_size - 2 * HF_CHUNK]


def test_a_reset_connection_fails_the_call_and_the_next_call_starts_over(hub, big_weights, tmp_path):
    import httpx2

    hub.add_repo(REPO, {"model.safetensors": big_weights})
    hub.drop_after("model.safetensors", HF_CHUNK + MIB, reset=True)
    out = tmp_path / "out"
    with pytest.raises(httpx2.ReadError):
        hf_hub_download(REPO, "model.safetensors", local_dir=out)
    assert not list(out.rglob("*.incomplete")), "2.4.0 deletes its per-call temporary file on failure"
    got = hf_hub_download(REPO, "model.safetensors", local_dir=out)
    assert sha256(got) == sha256(big_weights)
    assert [r.range for r in hub.fetched(hub.repos[REPO].files["model.safetensors"].sha256)] == [None, None]


def test_a_corrupt_file_downloads_but_its_sha256_differs(hub, tiny_repo, tmp_path):
    hub.corrupt("model.safetensors")
    listed = {s.rfilename: s for s in HfApi().model_info(REPO, files_metadata=True).siblings}
    got = hf_hub_download(REPO, "model.safetensors", local_dir=tmp_path / "out")
    assert Path(got).stat().st_size == listed["model.safetensors"].size
    assert sha256(got) != listed["model.safetensors"].lfs.sha256  # huggingface_hub checks sizes only
    # And it trusts its local metadata from then on: the puller must delete a bad file itself.
    gets = len(hub.fetched(""))
    assert hf_hub_download(REPO, "model.safetensors", local_dir=tmp_path / "out") == got
    assert len(hub.fetched("")) == gets


def test_a_gated_repo_needs_the_token(hub, tiny_repo, tmp_path):
    hub.add_repo("cortex-test/gated", {"config.json": tiny_repo["config.json"],
                                       "model.safetensors": tiny_repo["model.safetensors"]}, gated=True)
    assert HfApi().model_info("cortex-test/gated", files_metadata=True).gated == "manual"  # info is public
    for token in (None, "hf_wrong"):
        with pytest.raises(GatedRepoError):
            hf_hub_download("cortex-test/gated", "config.json", local_dir=tmp_path / "no", token=token)
    for name in ("config.json", "model.safetensors"):
        got = hf_hub_download("cortex-test/gated", name, local_dir=tmp_path / "yes", token=TOKEN)
        assert Path(got).read_bytes() == tiny_repo[name].read_bytes()


def test_unknown_repo_file_and_revision_raise_the_hubs_errors(hub, tiny_repo, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("cortex-test/missing", files_metadata=True)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("cortex-test/missing", "config.json", local_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.json", local_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="f" * 40, local_dir=tmp_path)


def test_no_request_leaves_loopback(hub, tiny_repo, tmp_path):
    with pytest.raises(RuntimeError, match="only the fake hub"):
        hf_hub_download(REPO, "config.json", local_dir=tmp_path, endpoint="https://huggingface.co")


def test_a_subprocess_reaches_the_fake_through_its_environment_alone(hub, tiny_repo, tmp_path):
    """What a `cortex neuron` needs: HF_ENDPOINT set before huggingface_hub is imported."""
    script = ("import json, sys; from huggingface_hub import HfApi, hf_hub_download as get\n"
              "info = HfApi().model_info(sys.argv[1], files_metadata=True)\n"
              "print(json.dumps([get(sys.argv[1], s.rfilename, revision=info.sha, local_dir=sys.argv[2])"
              " for s in info.siblings]))")
    env = {**os.environ, **hf_env(hub.url, tmp_path / "child-home")}
    done = subprocess.run([sys.executable, "-c", script, REPO, str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    paths = [Path(p) for p in json.loads(done.stdout)]
    assert {p.name: p.read_bytes() for p in paths} == {n: p.read_bytes() for n, p in tiny_repo.items()}


HOSTILE = {"../../escaped/tokenizer.json": b"up", "/abs/config.json": b"abs", "tokenizer\\..\\..\\x.json": b"bs",
           "tokenizer\x1b]0;owned\x07\n.json": b"esc"}


def test_a_hostile_repo_lists_any_name_and_serves_it(hub, tmp_path):
    """The names a client must refuse reach it as they would from a hostile hub: listed verbatim, and
    served (a `..` name at the URL left after the client's dot-segment removal)."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get

    hub.add_repo("cortex-test/hostile", HOSTILE)
    info = HfApi().model_info("cortex-test/hostile", files_metadata=True)
    assert {s.rfilename for s in info.siblings} == HOSTILE.keys()
    for name, body in HOSTILE.items():
        with open(tmp_path / "got", "wb") as out:
            http_get(hf_hub_url("cortex-test/hostile", name, revision=info.sha), out)
        assert (tmp_path / "got").read_bytes() == body, name
    # hf_hub_download checks names itself; a client that downloads with http_get must too.
    with pytest.raises(ValueError, match=r"'\.\.' path segment"):
        hf_hub_download("cortex-test/hostile", "../../escaped/tokenizer.json", local_dir=tmp_path / "out")
    assert not (tmp_path / "escaped").exists()


def test_a_hostile_repo_lists_sizes_it_does_not_serve(hub, tiny_repo, tmp_path):
    import httpx2

    size = tiny_repo["config.json"].stat().st_size
    hub.list_size("config.json", 7)
    assert {s.rfilename: s.size for s in HfApi().model_info(REPO, files_metadata=True).siblings}["config.json"] == 7
    url = f"{hub.url}/{REPO}/resolve/main/config.json"
    hub.serve_extra("config.json", 100_000)
    longer = httpx2.get(url)
    assert len(longer.content) == int(longer.headers["Content-Length"]) == size + 100_000
    hub.serve_endless("config.json")
    with httpx2.stream("GET", url) as endless:
        assert "Content-Length" not in endless.headers
        got = 0
        for chunk in endless.iter_bytes():
            got += len(chunk)
            if got > 10 * MIB:  # far past any size: it would go on
                break
    assert got > 10 * MIB
