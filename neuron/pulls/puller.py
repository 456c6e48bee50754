"""Pulling a model from the Hugging Face hub onto this node: checked first, resumable, verified, atomic.

A pull reads the hub's metadata (file list, sizes, LFS sha256) and refuses,
before a byte of weights moves, what the disk cannot hold or no device of this
node could load. It then downloads with `huggingface_hub` into a staging
folder under the models directory (`.pulls/NAME`, invisible to the catalog),
where an interrupted download leaves its `.incomplete` file to resume from;
checks every LFS file's sha256; and only then moves the model into place
(a folder renamed whole; the parts of a split GGUF with the first, the one the
catalog sees, last). So a failed pull never leaves a half file that looks
like a model. Pulls of the same source are single-flight; progress (bytes, rate,
time left) is kept for /models/pulls, `cortex pull` and `cortex top`.

`HF_TOKEN` (gated repositories), `HF_ENDPOINT` (mirrors) and `HF_HUB_OFFLINE`
are read from the environment as huggingface_hub reads them; the token is never
logged nor echoed in an error.

What the hub lists is not trusted: a name becomes a path only through
`staged_path` (checked, resolved inside the staging folder), a download stops
at the listed size. A pull runs in a daemon thread and the neuron's shutdown
stops it (its waiting clients get a 503 at once, its thread stops at its next
chunk): a download that never ends must not hold a SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from neuron.pulls import hub
from neuron.pulls.checks import check_disk, check_fits
from neuron.pulls.disk import INDEX, STAGING
from neuron.pulls.names import staged_path
from neuron.pulls.sources import HubSource, RemoteFile, check_source, local_name, select_files
from neuron.shared.errors import ApiError
from neuron.shared.files import write_atomic
from neuron.shared.protocol import PullPhase, PullState

log = logging.getLogger("cortex.neuron.pulls.puller")

KEEP_FINISHED = 32  # finished pulls shown in /models/pulls, newest first
MAX_RUNNING = 2  # pulls downloading at once; more wait their turn
MAX_CONFIG_BYTES = 16 << 20  # a config.json is kilobytes; parsed for the fit check only up to this


@dataclass
class PullJob:
    source: HubSource
    state: PullState
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = None

    def advance(self, n: int) -> None:
        """Called from the download thread with each chunk written."""
        state = self.state
        state.done_bytes += n
        elapsed = max(time.monotonic() - self.started, 1e-6)
        state.rate_bps = state.done_bytes / elapsed
        left = state.total_bytes - state.done_bytes
        state.eta_s = round(left / state.rate_bps, 1) if state.rate_bps > 0 and left > 0 else None


class Puller:
    """The node's pulls: start or join one, list them, map a source to the model it became."""

    def __init__(self, models_dir: Path, devices, *, on_cpu: bool):
        self.models_dir = models_dir
        self.devices = devices
        self.on_cpu = on_cpu
        self.jobs: dict[str, PullJob] = {}
        self._running = asyncio.Semaphore(MAX_RUNNING)
        self._stop = threading.Event()  # seen by the pull threads
        self._stopping = asyncio.Event()  # seen by the loop's side

    def stop(self) -> None:
        """Stop every pull (the neuron is stopping): each fails with `shutting_down`; its `.part` is kept."""
        self._stop.set()
        self._stopping.set()

    async def on_shutdown(self, _app) -> None:
        """aiohttp's on_shutdown: at the start of the shutdown grace, so a waiting client is answered in it."""
        self.stop()

    def close(self) -> None:
        self.stop()

    # -- the event loop's side ----------------------------------------------------------
    def start(self, text: str) -> PullJob:
        """Start a pull, or join the one running for the same source."""
        source = check_source(text)
        job = self.jobs.get(str(source))
        if job is not None and not job.state.finished:
            return job
        job = PullJob(source, PullState(str(source)))
        self.jobs[str(source)] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        job.task.add_done_callback(lambda t: t.cancelled() or t.exception())  # reported on the job itself
        self._forget_old()
        return job

    async def pull(self, text: str) -> str:
        """Pull (or join the pull of) `text`; the model id it has here once done."""
        job = self.start(text)
        await asyncio.shield(job.task)
        return job.task.result()

    def states(self) -> list[PullState]:
        return [job.state for job in reversed(self.jobs.values())]

    def pulled_id(self, text: str) -> str | None:
        """The local model a source was pulled into before (read from the index), if it is still there."""
        source = check_source(text)
        name = self._index().get(str(source))
        if name is None or not (self.models_dir / name).exists():
            return None
        return _catalog_id(name)

    async def _run(self, job: PullJob) -> str:
        try:
            async with self._running:
                return await self._in_thread(job)
        except ApiError as err:
            job.state.phase, job.state.error = PullPhase.FAILED, err.message
            log.warning("pull of %s failed: %s", job.source, err.message)
            raise
        except Exception as exc:  # noqa: BLE001 - reported on the job; the message is redacted
            err = ApiError(502, "api_error", f"pulling {job.source} failed: {hub.redact(str(exc))}",
                           code="pull_failed")
            job.state.phase, job.state.error = PullPhase.FAILED, err.message
            log.warning("pull of %s failed: %s", job.source, err.message)
            raise err from None

    async def _in_thread(self, job: PullJob) -> str:
        """`_pull(job)` in a daemon thread, given up at once when the neuron stops: a thread blocked reading a
        stalled body sees the stop only at its next chunk, and the process must not wait for it to exit."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def work() -> None:
            try:
                result, error = self._pull(job), None
            except Exception as exc:  # noqa: BLE001 - handed to the loop's side
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: the neuron is exiting
                loop.call_soon_threadsafe(_settle, done, result, error)

        threading.Thread(target=work, name=f"pull {job.source}", daemon=True).start()
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({done, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not done.done():
            raise hub.stopped(job.source)
        return done.result()

    def _forget_old(self) -> None:
        finished = [k for k, j in self.jobs.items() if j.state.finished]
        for key in finished[:-KEEP_FINISHED]:
            self.jobs.pop(key, None)

    # -- the pull thread's side ---------------------------------------------------------
    def _pull(self, job: PullJob) -> str:
        state, source = job.state, job.source
        if self._stop.is_set():
            raise hub.stopped(source)
        commit, files = hub.list_files(source)
        wanted = select_files(source, files)
        name = local_name(source, wanted)
        state.id = _catalog_id(name)
        state.total_bytes, state.files_total = sum(f.size for f in wanted), len(wanted)
        if (self.models_dir / name).exists():
            state.done_bytes, state.files_done, state.phase = state.total_bytes, len(wanted), PullPhase.DONE
            self._record(source, name)
            return state.id
        staging = self.models_dir / STAGING / name
        check_disk(self.models_dir, state.total_bytes - _staged_bytes(staging))
        config = self._small_files_first(job, wanted, commit, staging)
        check_fits(source, wanted, config, self.devices, self.on_cpu)
        state.phase = PullPhase.DOWNLOADING
        for f in wanted:
            if not staged_path(source, staging, f.path).is_file():
                hub.download(source, commit, f, staging, job.advance, self._stop)
                state.files_done += 1
        state.phase = PullPhase.VERIFYING
        for f in wanted:
            _verify(source, staged_path(source, staging, f.path), f, self._stop)
        self._install(source, name, staging, wanted)
        state.phase, state.eta_s = PullPhase.DONE, None
        log.info("pulled %s into <models>/%s (%.1f MiB)", source, name, state.total_bytes / 2**20)
        return state.id

    def _small_files_first(self, job: PullJob, wanted: list[RemoteFile], commit: str, staging: Path) -> dict:
        """config.json (and other small files) before the weights: the fit check reads the config."""
        state = job.state
        state.done_bytes = _staged_bytes(staging)
        for f in wanted:
            if f.sha256 is None and not staged_path(job.source, staging, f.path).is_file():
                hub.download(job.source, commit, f, staging, job.advance, self._stop)
                state.files_done += 1
        config = next((f for f in wanted if f.path == "config.json"), None)
        if config is None or config.size > MAX_CONFIG_BYTES:  # a config that large is none: no fit check from it
            return {}
        try:
            return json.loads(staged_path(job.source, staging, config.path).read_text())
        except (OSError, ValueError):
            return {}

    def _install(self, source: HubSource, name: str, staging: Path, files: list[RemoteFile]) -> None:
        """Into the catalog, atomically: nothing looks like a model until all of it is in place."""
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's resume metadata
        if source.is_gguf:
            first, *rest = files
            for f in [*rest, first]:  # the first part last: the catalog sees a split GGUF by it
                os.replace(staged_path(source, staging, f.path), self.models_dir / Path(f.path).name)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, self.models_dir / name)
        self._record(source, name)

    def _index(self) -> dict[str, str]:
        try:
            return json.loads((self.models_dir / STAGING / INDEX).read_text())
        except (OSError, ValueError):
            return {}

    def _record(self, source: HubSource, name: str) -> None:
        index = self._index()
        index[str(source)] = name
        path = self.models_dir / STAGING / INDEX
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(index, indent=1, sort_keys=True))


def _catalog_id(name: str) -> str:
    """The id the catalog's scan gives a file or folder of this name (see neuron.server.catalog)."""
    from neuron.server.catalog import gguf_id

    return gguf_id(name) if name.endswith(".gguf") else name


def _staged_bytes(staging: Path) -> int:
    if not staging.is_dir():
        return 0
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())


def _settle(future: asyncio.Future, result, error: Exception | None) -> None:
    if future.done():  # given up on: the neuron is stopping
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _verify(source: HubSource, path: Path, expected: RemoteFile, stop: threading.Event) -> None:
    size = path.stat().st_size
    if size != expected.size:
        path.unlink(missing_ok=True)
        raise ApiError(502, "api_error", f"{expected.path}: {size} bytes downloaded, the hub lists {expected.size}; "
                       "the download was cut or corrupted: pull again", code="pull_corrupted")
    if expected.sha256 is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            if stop.is_set():  # tens of GB take minutes to hash
                raise hub.stopped(source)
            digest.update(chunk)
    if digest.hexdigest() != expected.sha256:
        path.unlink(missing_ok=True)  # never kept: a resume would build on the bad bytes
        raise ApiError(502, "api_error", f"{expected.path}: its sha256 does not match the hub's; the download was "
                       "corrupted and has been deleted: pull again", code="pull_corrupted")
