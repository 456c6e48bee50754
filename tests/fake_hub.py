"""A fake Hugging Face Hub on loopback that huggingface_hub 2.4.0 talks to as to the real one.

Machines here reach no hub, so `cortex pull` is tested against this. It answers the calls that
`HfApi.model_info` and `hf_hub_download` make (read off huggingface_hub's source):

- `GET /api/models/{repo}[/revision/{rev}]`: `?blobs=True` (files_metadata) adds sizes, blob ids
  and `lfs.sha256`; `?expand=...` keeps only the named fields.
- `HEAD|GET /{repo}/resolve/{rev}/{file}`: a regular file is served there with `X-Repo-Commit`,
  `ETag` (its git blob id) and `Content-Length`; an LFS file answers 302 with `Location` on the
  CDN, `X-Linked-Etag` (its sha256) and `X-Linked-Size`, as the real hub does.
- The CDN listens on a second port. huggingface_hub follows a HEAD redirect only within one
  origin and strips the token before a GET to another, so a CDN on its own origin makes it take
  the very path it takes against huggingface.co: the HEAD stops at the 302, the GET goes to the
  CDN without the token.
- Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo), which
  alone picks huggingface_hub's exception class, and a JSON `{"error": ...}` body.

No `X-Xet-*` header or `xet-auth` link is ever sent, so hf-xet is never used: every byte goes
over plain HTTP, with Range. The server runs in a thread on its own event loop, so in-process
code and `cortex neuron` subprocesses reach it alike. `snapshot_download` (the tree API) is not
served.

A hostile hub, for the tests of what a client must not trust: a repo may list any name at all
(`../x`, `/abs/x`, backslashes, control characters), and a file listed under a name with `..`
is still served at the path a client's URL normalisation makes of it; `list_size` lists a size
other than the file's, `serve_extra` sends bytes past its end, `serve_endless` a body that never
ends. The environment helpers live in tests/fake_hub_env.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import posixpath
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from aiohttp import web

from tests.fake_hub_env import hf_env, huggingface_hub_pointed_at  # noqa: F401 - re-exported for tests

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin")
LFS_THRESHOLD = 10_000_000  # the real hub refuses plain git files over 10 MB
CHUNK = 1 << 20
DATE = "2025-01-01T00:00:00.000Z"
INVERT = bytes(255 - b for b in range(256))  # corrupt(): every byte flipped, the size kept
FILLER = b"\0" * (64 << 10)  # what serve_extra and serve_endless send past a file's end
TRICKLE_S = 0.01  # serve_endless(trickle=True): one FILLER per this (about 6 MiB/s)
REPO_ID = r"{repo_id:[^/]+(?:/[^/]+)?}"  # "name" or "namespace/name"


class Request(NamedTuple):
    """One request the fake received, for tests to assert on (e.g. that no weight byte was fetched)."""

    method: str
    path: str
    range: str | None


@dataclass(frozen=True)
class HubFile:
    """A file of a repo; its bytes stay where they are (memory or disk) and are read in chunks."""

    name: str
    source: bytes | Path
    size: int
    sha256: str
    blob_id: str  # git's id of the blob: of the content, or of the LFS pointer for an LFS file
    lfs: bool


@dataclass(frozen=True)
class Repo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]
    gated: bool


def _chunks(source: bytes | Path, start: int, end: int):
    """The bytes [start, end) in chunks, so weights of tens of MB are never held whole."""
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as f:
        f.seek(start)
        while start < end and (data := f.read(min(CHUNK, end - start))):
            start += len(data)
            yield data


def _pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _hub_file(name: str, source: bytes | Path, lfs_threshold: int) -> HubFile:
    source = source if isinstance(source, bytes) else Path(source)
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    sha256, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    for chunk in _chunks(source, 0, size):
        sha256.update(chunk)
        git.update(chunk)
    lfs = size > lfs_threshold or name.endswith(WEIGHT_SUFFIXES)
    if lfs:
        pointer = _pointer(sha256.hexdigest(), size)
        git = hashlib.sha1(b"blob %d\0%s" % (len(pointer), pointer))
    return HubFile(name, source, size, sha256.hexdigest(), git.hexdigest(), lfs)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status,
                             headers={"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) that `Range: bytes=a-[b]` asks for (all without one); None if unsatisfiable."""
    if not header:
        return 0, size
    first, _, last = header.removeprefix("bytes=").partition("-")
    start, end = int(first or 0), min(int(last) + 1 if last else size, size)
    return (start, end) if start < end else None


class FakeHub:
    """The hub (`.url`: what HF_ENDPOINT must be) and its CDN (`.cdn_url`), started and stopped together.

    `token` is the one token that opens gated repos. `requests` logs every request to either
    port in order, as (method, path, Range header).
    """

    def __init__(self, *, token: str | None = None, lfs_threshold: int = LFS_THRESHOLD):
        self.token, self.lfs_threshold = token, lfs_threshold
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self._drops: dict[str, tuple[int, bool]] = {}
        self._corrupt: set[str] = set()
        self._listed: dict[str, int] = {}
        self._extra: dict[str, int] = {}
        self._endless: dict[str, bool] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-hub", daemon=True)
        self._runners: list[web.AppRunner] = []
        self.url = self.cdn_url = ""

    def add_repo(self, repo_id: str, files: dict[str, bytes | Path], *, gated: bool = False,
                 revision: str | None = None) -> Repo:
        """Publish a repo; `revision` is its commit sha (40 hex), derived from the content if not given.

        It answers to that sha and to "main"; files over `lfs_threshold` or with a weight suffix are LFS.
        """
        hub_files = {name: _hub_file(name, src, self.lfs_threshold) for name, src in files.items()}
        listing = repr((repo_id, sorted((f.name, f.sha256) for f in hub_files.values())))
        commit = revision or hashlib.sha1(listing.encode()).hexdigest()
        if len(commit) != 40 or commit.strip("0123456789abcdef"):
            raise ValueError(f"revision: expected a 40-hex commit sha, got {commit!r}")
        self.repos[repo_id] = Repo(repo_id, commit, hub_files, gated)
        return self.repos[repo_id]

    def drop_after(self, filename: str, n_bytes: int, *, reset: bool = False) -> None:
        """The next GET of `filename` (in any repo) sends `n_bytes` of its body, then the connection goes.

        By default the socket is closed cleanly (FIN): huggingface_hub sees a RemoteProtocolError
        and retries with a Range request within the same call. `reset=True` sends a TCP RST
        (bytes still buffered may be lost): it sees a ReadError, which it does not retry.
        """
        self._drops[filename] = (n_bytes, reset)

    def corrupt(self, filename: str) -> None:
        """From now on, serve other bytes (same size) than the sha256 listed for `filename` says."""
        self._corrupt.add(filename)

    def list_size(self, filename: str, size: int) -> None:
        """List `filename` (in any repo) at `size` bytes, whatever its bytes are."""
        self._listed[filename] = size

    def serve_extra(self, filename: str, n_bytes: int) -> None:
        """Serve `n_bytes` more than `filename` holds (its Content-Length says so), from offset 0."""
        self._extra[filename] = n_bytes

    def serve_endless(self, filename: str, *, trickle: bool = False) -> None:
        """Serve `filename` as a body that never ends (chunked, no length) until the client goes.

        `trickle` paces what follows the file's own bytes (a FILLER per TRICKLE_S), so a download
        stays under way long enough for a test to act on it and no broken client fills a disk."""
        self._endless[filename] = trickle

    def fetched(self, path_part: str) -> list[Request]:
        """The GETs whose path contains `path_part` (a file name; a sha256 for the CDN's paths)."""
        return [r for r in self.requests if r.method == "GET" and path_part in r.path]

    def start(self) -> FakeHub:
        self._thread.start()
        self.url, self.cdn_url = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(30)
        return self

    def stop(self) -> None:
        async def cleanup():
            for runner in self._runners:
                await runner.cleanup()
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop.close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _serve(self) -> tuple[str, str]:
        hub, cdn = web.Application(middlewares=[self._log]), web.Application(middlewares=[self._log])
        hub.router.add_get("/api/agent-harnesses", self._agent_harnesses)
        hub.router.add_get(f"/api/models/{REPO_ID}", self._model_info)
        hub.router.add_get(f"/api/models/{REPO_ID}/revision/{{revision}}", self._model_info)
        hub.router.add_route("*", f"/{REPO_ID}/resolve/{{revision}}/{{filename:[\\s\\S]+}}", self._resolve)
        cdn.router.add_route("*", r"/repos/{repo_id:.+}/{sha256:[0-9a-f]{64}}", self._cdn)
        hub.router.add_route("*", r"/{tail:[\s\S]*}", self._normalised)
        urls = []
        for app in (hub, cdn):
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
            await runner.setup()
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            await web.SockSite(runner, sock).start()
            self._runners.append(runner)
            urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
        return urls[0], urls[1]

    # The handlers below run on the fake's own loop.

    @web.middleware
    async def _log(self, request: web.Request, handler):
        self.requests.append(Request(request.method, request.path, request.headers.get("Range")))
        return await handler(request)

    async def _agent_harnesses(self, request: web.Request) -> web.Response:
        """Fetched daily for the user agent unless telemetry is off; an empty registry detects no agent."""
        return web.json_response({"standardEnvVars": [], "harnesses": {}})

    def _find(self, request: web.Request) -> Repo | web.Response:
        repo = self.repos.get(request.match_info["repo_id"])
        if repo is None:  # the real hub answers 401 to anonymous callers, so as not to confirm a private repo
            return _error(404 if "Authorization" in request.headers else 401, "RepoNotFound", "Repository not found")
        revision = request.match_info.get("revision", "main")
        if revision not in ("main", repo.commit):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo

    def _gate(self, request: web.Request, repo: Repo) -> web.Response | None:
        """A gated repo's files need `Authorization: Bearer <token>`; its info stays public, as on the real hub."""
        sent = request.headers.get("Authorization")
        if not repo.gated or (self.token is not None and sent == f"Bearer {self.token}"):
            return None
        if sent is None:
            return _error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have access "
                                            "to it and be authenticated to access it. Please log in.")
        return _error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted and you are not in the "
                                        "authorized list.")

    async def _model_info(self, request: web.Request) -> web.Response:
        repo = self._find(request)
        if isinstance(repo, web.Response):
            return repo
        blobs = request.query.get("blobs", "").lower() == "true"
        info = {"_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id,
                "author": repo.repo_id.partition("/")[0], "sha": repo.commit, "lastModified": DATE,
                "createdAt": DATE, "private": False, "gated": "manual" if repo.gated else False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                "usedStorage": sum(f.size for f in repo.files.values()),
                "siblings": [_sibling(f, self._listed.get(f.name, f.size), blobs) for f in repo.files.values()]}
        if expand := request.query.getall("expand", []) + request.query.getall("expand[]", []):
            info = {k: v for k, v in info.items() if k in ("_id", "id", *expand)}
        return web.json_response(info)

    async def _normalised(self, request: web.Request) -> web.StreamResponse:
        """A file listed under a name with `..`: a client's URL for it has had its dot segments removed."""
        for repo in self.repos.values():
            for name in repo.files:
                for revision in ("main", repo.commit):
                    if posixpath.normpath(f"/{repo.repo_id}/resolve/{revision}/{name}") == request.path:
                        return await self._resolve(request, repo, name)
        return web.Response(status=404, text="404: Not Found")

    async def _resolve(self, request: web.Request, repo: Repo | None = None,
                       name: str | None = None) -> web.StreamResponse:
        repo = repo or self._find(request)
        if isinstance(repo, web.Response):
            return repo
        if denied := self._gate(request, repo):
            return denied
        name, commit = name or request.match_info["filename"], {"X-Repo-Commit": repo.commit}
        hub_file = repo.files.get(name)
        if hub_file is None:
            return _error(404, "EntryNotFound", f"{name} does not exist on \"{request.match_info['revision']}\"",
                          commit)
        if not hub_file.lfs:
            return await self._send(request, hub_file, {**commit, "ETag": f'"{hub_file.blob_id}"'})
        location = f"{self.cdn_url}/repos/{repo.repo_id}/{hub_file.sha256}?filename={quote(name)}"
        return web.Response(status=302, text=f"Found. Redirecting to {location}", headers={
            **commit, "Location": location, "ETag": f'"{hub_file.blob_id}"',
            "X-Linked-Etag": f'"{hub_file.sha256}"', "X-Linked-Size": str(self._listed.get(name, hub_file.size))})

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        """A signed URL in spirit: only an authorised resolve hands it out, so it checks no token."""
        repo = self.repos.get(request.match_info["repo_id"])
        hub_file = next((f for f in (repo.files.values() if repo else ())
                         if f.lfs and f.sha256 == request.match_info["sha256"]), None)
        if hub_file is None:
            return web.Response(status=403, text="AccessDenied")
        return await self._send(request, hub_file, {"ETag": f'"{hub_file.sha256}"'})

    async def _send(self, request: web.Request, hub_file: HubFile, headers: dict) -> web.StreamResponse:
        """The file's bytes, or the range asked for, in chunks: inverted if corrupt, cut short if told to drop."""
        if hub_file.name in self._endless or hub_file.name in self._extra:
            return await self._send_too_much(request, hub_file, headers)
        asked = request.headers.get("Range")
        span = _byte_range(asked, hub_file.size)
        if span is None:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{hub_file.size}"})
        start, end = span
        base = hub_file.name.rsplit("/", 1)[-1]
        plain = "".join(c if c.isprintable() and c != '"' else "_" for c in base)  # a hostile name's, too
        response = web.StreamResponse(status=206 if asked else 200, headers={
            **headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(base)}; filename=\"{plain}\";"})
        if asked:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{hub_file.size}"
        response.content_length = end - start
        await response.prepare(request)
        if request.method != "GET":
            return response
        drop = self._drops.pop(hub_file.name, None)
        budget = end - start if drop is None else drop[0]
        for chunk in _chunks(hub_file.source, start, start + min(budget, end - start)):
            await response.write(chunk.translate(INVERT) if hub_file.name in self._corrupt else chunk)
        if drop is not None:
            _hang_up(request, reset=drop[1])
        return response

    async def _send_too_much(self, request: web.Request, hub_file: HubFile, headers: dict) -> web.StreamResponse:
        """The whole file (a Range is ignored, as some CDNs do), then FILLER: `serve_extra`'s bytes or no end."""
        response = web.StreamResponse(status=200, headers={**headers, "Content-Type": "application/octet-stream"})
        endless, extra = hub_file.name in self._endless, self._extra.get(hub_file.name, 0)
        if endless:
            response.enable_chunked_encoding()
        else:
            response.content_length = hub_file.size + extra
        await response.prepare(request)
        if request.method != "GET":
            return response
        for chunk in _chunks(hub_file.source, 0, hub_file.size):
            await response.write(chunk)
        try:
            while endless or extra > 0:
                await response.write(FILLER[:extra] if not endless else FILLER)
                extra -= len(FILLER)
                if endless and self._endless[hub_file.name]:
                    await asyncio.sleep(TRICKLE_S)
        except ConnectionError:  # the client stopped reading and left: what a careful one does
            pass
        return response


def _sibling(hub_file: HubFile, size: int, blobs: bool) -> dict:
    if not blobs:
        return {"rfilename": hub_file.name}
    sibling = {"rfilename": hub_file.name, "size": size, "blobId": hub_file.blob_id}
    if hub_file.lfs:
        pointer_size = len(_pointer(hub_file.sha256, size))
        sibling["lfs"] = {"size": size, "sha256": hub_file.sha256, "pointerSize": pointer_size}
    return sibling


def _hang_up(request: web.Request, *, reset: bool) -> None:
    """Close mid-body: a FIN once the bytes written are flushed, or an RST (SO_LINGER 0) at once."""
    if (transport := request.transport) is None:
        return
    if reset:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
