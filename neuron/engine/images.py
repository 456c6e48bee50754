"""One image generation job: checks against the model, the prompt's tokens, the pipeline on the device
thread with its progress and cancellation, and the images encoded.

The prompt is tokenised on the engine's tokenizer threads (to count it, and to say what the text encoder
reads of a long one); the pipeline runs as one call on the model's device thread, never on the event loop;
the images are encoded off both. A job whose client leaves (aiohttp cancels its handler) sets `cancelled`,
and the next step's callback interrupts the pipeline, so an abandoned job frees the device within a step.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

from neuron.engine.worker import DeviceWorker
from neuron.server.image_schema import MAX_SEED, ImageRequest
from neuron.shared.errors import bad_request

log = logging.getLogger("cortex.neuron.engine.images")
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass
class ImageJob:
    """What the backend's `draw` reads, and the progress it reports through `on_step`."""

    id: str
    prompt: str
    width: int
    height: int
    n: int
    seed: int
    steps: int
    negative_prompt: str | None = None
    guidance_scale: float | None = None
    step: int = 0  # steps done
    cancelled: threading.Event = field(default_factory=threading.Event)

    def on_step(self, pipe, index: int, _timestep, tensors: dict) -> dict:
        """diffusers' callback_on_step_end: log the step; stop the loop when the client has gone."""
        self.step = index + 1
        log.info("image job %s: step %d/%d", self.id, self.step, self.steps)
        if self.cancelled.is_set():
            pipe._interrupt = True  # diffusers' own flag: the loop skips the steps left
        return tensors


@dataclass(frozen=True)
class Drawn:
    """A job's answer: the encoded images, the prompt's tokens, the text read when it was cut."""

    images: list[bytes]
    prompt_tokens: int
    revised_prompt: str | None
    seconds: float


def _drawing(backend, job: ImageJob) -> list:
    """Draw `job` on the device thread, shown meanwhile as the backend's `drawing` (/health's step/steps)."""
    backend.drawing = job
    try:
        return backend.draw(job)
    finally:
        backend.drawing = None


async def generate(backend, worker: DeviceWorker, pool: Executor, model: str, req: ImageRequest,
                   job_id: str) -> Drawn:
    job = plan(backend, model, req, job_id)
    tokens, revised = await asyncio.get_running_loop().run_in_executor(pool, read_prompt, backend, req)
    started = time.perf_counter()
    log.info("image job %s: %d image(s) of %dx%d for %s, %d steps, seed %d", job.id, job.n, job.width, job.height,
             model, job.steps, job.seed)
    try:
        images = await worker.call(lambda: _drawing(backend, job))
    except asyncio.CancelledError:
        job.cancelled.set()
        log.info("image job %s: cancelled by its client at step %d/%d", job.id, job.step, job.steps)
        raise
    seconds = time.perf_counter() - started
    log.info("image job %s: done in %.2fs", job.id, seconds)
    encoded = await asyncio.get_running_loop().run_in_executor(pool, encode_all, images, req.output_format)
    return Drawn(encoded, tokens, revised, seconds)


def plan(backend, model: str, req: ImageRequest, job_id: str) -> ImageJob:
    """The job, once the request fits the model: its size a multiple of the model's step, its fields ones
    the pipeline takes."""
    width, height = req.size or (backend.default_size, backend.default_size)
    step = max(8, backend.scale)  # the VAE's scale: latents are the image's size over it
    if width % step or height % step:
        raise bad_request(f"size: model {model!r} draws sides that are multiples of {step}; got {width}x{height}",
                          param="size")
    for key, value in (("negative_prompt", req.negative_prompt), ("guidance_scale", req.guidance_scale)):
        if value is not None and key not in backend.takes:
            raise bad_request(f"{key}: model {model!r} ({backend.pipeline_name}) takes no {key}; leave it out",
                              param=key)
    seed = req.seed if req.seed is not None else random.randrange(MAX_SEED - 10)
    if seed + req.n - 1 > MAX_SEED:
        raise bad_request(f"seed: image i is drawn from seed + i, so seed must be at most {MAX_SEED - req.n + 1} "
                          f"for n={req.n}", param="seed")
    return ImageJob(job_id, req.prompt, width, height, req.n, seed, req.steps or backend.default_steps(),
                    req.negative_prompt, req.guidance_scale)


def read_prompt(backend, req: ImageRequest) -> tuple[int, str | None]:
    """The tokens the text encoder reads (the prompt's, and the negative prompt's), and the text it reads
    when the prompt is longer than its context (None when it reads it whole)."""
    ids = backend.tokenize(req.prompt)
    negative = len(backend.tokenize(req.negative_prompt)) if req.negative_prompt else 0
    limit = backend.context_size
    if not ids:
        return 0, None
    read = min(len(ids), limit) + min(negative, limit)
    if len(ids) <= limit:
        return read, None
    return read, backend.decode(ids[:limit])


def encode_all(images: list, output_format: str) -> list[bytes]:
    return [encode(image, output_format) for image in images]


def encode(image, output_format: str) -> bytes:
    """One PIL image in the asked format (PNG by default: lossless, the same pixels give the same bytes)."""
    out = io.BytesIO()
    image.save(out, format=PIL_FORMATS[output_format])
    return out.getvalue()
