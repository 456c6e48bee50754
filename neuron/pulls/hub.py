"""The two calls a pull makes to the hub, through huggingface_hub, with its errors turned into ours.

The endpoint is `HF_ENDPOINT` (a mirror, or the tests' fake hub), read when a
call is made rather than when huggingface_hub was imported; the token is
`HF_TOKEN`. Neither call logs the token, and `redact` takes it out of any
message that could carry it.

What the hub lists is checked before it is used (a hub or a mirror is outside
the node): every name is a plain relative path (neuron.pulls.names), every
size a byte count, every sha256 64 hex digits. A download writes no byte past
the listed size, and none once the neuron is stopping.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from neuron.pulls.names import check_name, staged_path
from neuron.pulls.sources import HubSource, RemoteFile
from neuron.shared.errors import ApiError

PART = ".part"  # a download in progress, kept across tries to resume from
_SHA256 = re.compile(r"[0-9a-f]{64}")

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
    return info.sha or source.revision or "main", listed_files(source, info.siblings or [])


def listed_files(source: HubSource, siblings) -> list[RemoteFile]:
    """The hub's file list, each entry checked: its name becomes a path, its size bounds its download (and is
    what the disk check counted). One bad entry, selected or not, refuses the pull: the hub is not to be trusted."""
    files, seen = [], set()
    for sibling in siblings:
        name = check_name(source, sibling.rfilename)
        if name in seen:
            raise _bad_entry(source, name, "it is listed twice")
        seen.add(name)
        size = sibling.size if sibling.size is not None else sibling.lfs.size if sibling.lfs else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _bad_entry(source, name, f"its size is {size!r}, not a byte count")
        sha256 = sibling.lfs.sha256 if sibling.lfs else None
        if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
            raise _bad_entry(source, name, "its sha256 is not 64 hex digits")
        files.append(RemoteFile(name, size, sha256))
    return files


def _bad_entry(source: HubSource, name: str, why: str) -> ApiError:
    return ApiError(502, "api_error", f"{source}: the hub's entry for {name!r} cannot be used ({why}); nothing of "
                    "this pull was written. Check that HF_ENDPOINT points at a hub you trust", code="bad_hub_listing",
                    param="source")


def download(source: HubSource, commit: str, file: RemoteFile, staging: Path, on_bytes: Callable[[int], None],
             stop: threading.Event) -> None:
    """One file into `staging`, reporting bytes as they come, resuming what an earlier try left.

    huggingface_hub's `hf_hub_download` resumes only within one call (and deletes its partial file when a call
    fails), so a pull that dies, or a neuron that restarts, would start over. Here its `http_get` writes to a
    `.part` file of our own, kept across tries: the next pull asks for the rest with a Range request. `stop`
    set (the neuron is stopping) ends the download at its next chunk; the `.part` is kept."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    part = staged_path(source, staging, file.path, PART)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > file.size:  # not the file the hub lists now
        part.unlink()
        have = 0
    on_bytes(0)
    url = hf_hub_url(source.repo, file.path, revision=commit, endpoint=endpoint())
    try:
        with open(part, "ab") as out:
            http_get(url, _Bounded(out, file.size, stop), resume_size=have, headers=build_hf_headers(token=_token()),
                     expected_size=file.size, displayed_filename=file.path, tqdm_class=_progress(on_bytes))
    except _PastListedSize:
        part.unlink(missing_ok=True)  # never kept: it is not the file the hub lists
        raise ApiError(502, "api_error", f"{file.path!r}: the hub serves more than the {file.size} bytes it lists; the "
                       "download was stopped there and what was staged deleted. The hub (or the mirror in "
                       "HF_ENDPOINT) is broken or hostile: pull again later, or from another",
                       code="pull_size_mismatch", param="source") from None
    except _Stopped:
        raise stopped(source) from None
    except Exception as exc:  # noqa: BLE001 - mapped by kind below
        raise _hub_error(source, exc) from None
    part.replace(staged_path(source, staging, file.path))


def stopped(source: HubSource) -> ApiError:
    return ApiError(503, "overloaded_error", f"the pull of {source} was stopped: the neuron is shutting down. Pull it "
                    "again once the node is back: it resumes where it stopped", code="shutting_down", param="source")


class _PastListedSize(Exception):
    pass


class _Stopped(Exception):
    pass


class _Bounded:
    """The `.part` file as `http_get` writes to it: no byte past the listed size, none once the pull is stopped.

    `http_get` writes whatever the body holds and compares sizes only at its end, so a body longer than listed,
    or one that never ends, would be on disk whole first; and nothing else ends a download on a SIGTERM. It
    raises no exception of ours itself, so these pass through it (and its retries) to `download`."""

    def __init__(self, out, limit: int, stop: threading.Event):
        self._out, self._limit, self._stop = out, limit, stop

    def write(self, chunk: bytes) -> int:
        if self._stop.is_set():
            raise _Stopped
        if self._out.tell() + len(chunk) > self._limit:
            raise _PastListedSize
        return self._out.write(chunk)

    def tell(self) -> int:
        return self._out.tell()

    def seek(self, *args) -> int:  # http_get rewinds when a server ignores its Range
        return self._out.seek(*args)

    def truncate(self, *args) -> int:
        return self._out.truncate(*args)


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
