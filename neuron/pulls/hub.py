"""The two calls a pull makes to the hub, through huggingface_hub, with its errors turned into ours.

The endpoint is `HF_ENDPOINT` (a mirror, or the tests' fake hub), read when a
call is made rather than when huggingface_hub was imported; the token is
`HF_TOKEN`. Neither call logs the token, and `redact` takes it out of any
message that could carry it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from neuron.errors import ApiError
from neuron.pulls.sources import HubSource, RemoteFile

DEFAULT_ENDPOINT = "https://huggingface.co"


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def redact(text: str) -> str:
    token = _token()
    return text.replace(token, "<HF_TOKEN>") if token else text


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def list_files(source: HubSource) -> tuple[str, list[RemoteFile]]:
    """(the commit the revision points at, every file of the repository with its size and LFS sha256)."""
    if offline():
        raise ApiError(503, "overloaded_error", f"cannot pull {source}: HF_HUB_OFFLINE is set on this node; copy "
                       "the model into its models directory instead", code="hub_offline")
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint(), token=_token()).model_info(
            source.repo, revision=source.revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - mapped by kind below
        raise _hub_error(source, exc) from None
    files = [RemoteFile(s.rfilename, int(s.size or (s.lfs.size if s.lfs else 0) or 0),
                        s.lfs.sha256 if s.lfs else None) for s in info.siblings or []]
    return info.sha or source.revision or "main", files


def download(source: HubSource, commit: str, file: RemoteFile, staging: Path, on_bytes: Callable[[int], None]) -> None:
    """One file into `staging`, reporting bytes as they come, resuming what an earlier try left.

    huggingface_hub's `hf_hub_download` resumes only within one call (and deletes its partial file when a call
    fails), so a pull that dies, or a neuron that restarts, would start over. Here its `http_get` writes to a
    `.part` file of our own, kept across tries: the next pull asks for the rest with a Range request."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    part = staging / (file.path + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > file.size:  # not the file the hub lists now
        part.unlink()
        have = 0
    on_bytes(0)
    url = hf_hub_url(source.repo, file.path, revision=commit, endpoint=endpoint())
    try:
        with open(part, "ab") as out:
            http_get(url, out, resume_size=have, headers=build_hf_headers(token=_token()), expected_size=file.size,
                     displayed_filename=file.path, tqdm_class=_progress(on_bytes))
    except Exception as exc:  # noqa: BLE001 - mapped by kind below
        raise _hub_error(source, exc) from None
    part.replace(staging / file.path)


def _progress(on_bytes: Callable[[int], None]):
    """A tqdm stand-in for huggingface_hub: it calls `cls(total=..., initial=...)` and `update(n)` per chunk."""

    class Progress:
        def __init__(self, *args, **kwargs):
            pass

        def update(self, n: int = 1) -> None:
            on_bytes(int(n))

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> bool:
            return False

        def close(self) -> None:
            pass

    return Progress


def _hub_error(source: HubSource, exc: Exception) -> ApiError:
    from huggingface_hub import errors

    where = endpoint()
    if isinstance(exc, errors.GatedRepoError):
        how = "the token in HF_TOKEN has no access to it: accept its terms on the hub with that account" if _token() \
            else "give the neuron a token with access to it in HF_TOKEN (after accepting its terms on the hub)"
        return ApiError(403, "permission_error", f"{source.repo} is a gated repository: {how}", code="gated_repo",
                        param="source")
    if isinstance(exc, errors.RevisionNotFoundError):
        return ApiError(404, "not_found_error", f"{source.repo} has no revision {source.revision!r}",
                        code="revision_not_found", param="source")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return ApiError(404, "not_found_error", f"{source.repo}: no such repository on {where} (or it is private "
                        "and HF_TOKEN does not reach it)", code="model_not_found", param="source")
    if isinstance(exc, errors.EntryNotFoundError):
        return ApiError(404, "not_found_error", f"{source}: a file the hub listed is missing: "
                        f"{redact(str(exc))[:200]}", code="model_not_found", param="source")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return ApiError(503, "overloaded_error", f"cannot pull {source}: HF_HUB_OFFLINE is set on this node",
                        code="hub_offline")
    return ApiError(502, "api_error", f"pulling {source} from {where} failed: {exc.__class__.__name__}: "
                    f"{redact(str(exc))[:300]}; it resumes where it stopped when pulled again", code="pull_failed")
