"""Running one inference request: prompt, admission, generation on the device thread.

The handlers in `openai_routes` only shape the answer; everything about
getting tokens out of a model for a request lives here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from neuron.engine import embeddings
from neuron.engine.batching import BatchRequest
from neuron.engine.constraints import check_grammar, grammar_for, new_constraint
from neuron.engine.faults import FaultInjector
from neuron.engine.generation import Delta, DeviceFault, GenerationStats, TextAssembler
from neuron.engine.prompt import (
    Segment,
    check_bounds,
    context_exceeded,
    prompt_segments,
    tokenize_segments,
)
from neuron.engine.registry import ModelEntry, Registry
from neuron.engine.tokenizer_pool import TokenizerPool
from neuron.engine.worker import END, Channel
from neuron.server.embedding_schema import EmbeddingRequest
from neuron.server.openai_schema import InferenceRequest, SamplingParams, logprob_tokens
from neuron.shared.errors import ApiError


@dataclass
class Generation:
    """A request admitted and running; iterate `batches()` for its deltas."""

    entry: ModelEntry
    job: Channel
    stats: GenerationStats
    started: float
    registry: Registry
    finish_reason: str | None = None
    stop_sequence: str | None = None

    async def batches(self, keepalive_s: float | None = None) -> AsyncIterator[list[Delta] | None]:
        """Lists of deltas as they come; None after `keepalive_s` of silence (time for a ping)."""
        try:
            while True:
                batch = await self.job.next_batch(keepalive_s)
                if batch is None:
                    yield None
                    continue
                done = batch[-1] is END
                deltas = batch[:-1] if done else batch
                for d in deltas:
                    if d.finish_reason:
                        self.finish_reason, self.stop_sequence = d.finish_reason, d.stop_sequence
                if deltas:
                    yield deltas
                if done:
                    self._record()
                    return
        except DeviceFault as exc:
            self.registry.poison(self.entry, exc)
            raise ApiError(503, "overloaded_error", f"model {self.entry.id!r} hit a device error and is "
                           "being reloaded; retry shortly", code="model_recovering", retry_after=5) from exc
        finally:
            self.job.cancelled = True  # a client that went away stops the decode loop

    def _record(self) -> None:
        s = self.stats
        if s.first_token_at and s.finished_at:
            self.entry.record_decode_rate(s.completion_tokens, s.finished_at - s.first_token_at)

    @property
    def ttft_s(self) -> float | None:
        return None if self.stats.first_token_at is None else self.stats.first_token_at - self.started


@dataclass
class Prepared:
    """A request checked and tokenised (`InferenceEngine.prepare`), ready to run once admitted."""

    prompt: list[int]
    max_new: int
    forced: list[int] | None
    constraints: list
    seconds: float  # spent preparing
    prediction: list[int] | None = None  # the request's prediction, tokenised, where the model can draft

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)


class InferenceEngine:
    def __init__(self, registry: Registry, faults: FaultInjector):
        self.registry = registry
        self.faults = faults
        # Prompts are rendered and tokenised here, not on a device thread (which would stall every
        # model sharing the device) nor on the event loop. Two threads: one long prompt (bounded by
        # `check_bounds`) does not hold up the others. Daemon threads: a stop never waits for them.
        self.tokenizer_pool = TokenizerPool(workers=2)

    def close(self) -> None:
        """Cancel queued tokenisations and refuse new ones; running ones stop at their next segment."""
        self.tokenizer_pool.shutdown()

    async def prompt_tokens(self, entry: ModelEntry, req: InferenceRequest) -> list[int]:
        """The request's prompt as tokens: bounded first, client text never parsed as control tokens."""
        backend = entry.backend
        check_bounds(req, backend.context_size, entry.id)

        def work(stop) -> list[int]:
            if getattr(backend, "reads_images", False):  # a vision model's processor: images become tokens
                return backend.prompt_of(req, entry.id, stop)
            return tokenize_segments(backend, prompt_segments(backend, req, entry.id), stop)

        return await self.tokenizer_pool.call(work)

    async def prepare(self, entry: ModelEntry, req: InferenceRequest) -> Prepared:
        """Every check a request can fail before it runs (its output format, its prompt against the
        context, a script), made before it queues for a slot: a refusal is then an HTTP status, not an
        error inside a stream already opened for keep-alives, even on a busy node."""
        started = time.perf_counter()
        constraints = await self._constraints(entry, req)
        prompt = await self.prompt_tokens(entry, req)
        ctx = entry.backend.context_size
        if len(prompt) >= ctx:
            raise context_exceeded(len(prompt), ctx, "messages" if req.messages else "prompt")
        check_max_tokens(req.sampling, ctx, entry.id)
        # Without max_tokens, an answer with logprobs stops where they would outgrow one answer
        # (finish_reason "length"); with it, parsing refused what could not fit.
        max_new = min(req.sampling.max_tokens or ctx, ctx - len(prompt), logprob_tokens(req.sampling) or ctx)
        forced = await self._forced_tokens(entry, req)
        prediction = await self._prediction_tokens(entry, req)
        return Prepared(prompt, max_new, forced, constraints, time.perf_counter() - started, prediction)

    async def start(self, entry: ModelEntry, req: InferenceRequest, prepared: Prepared | None = None
                    ) -> list[Generation]:
        """Start decoding `n` choices (prepared here unless `prepared` is given). Call inside an admission slot."""
        p = prepared or await self.prepare(entry, req)
        started = time.perf_counter() - p.seconds  # time to first token counts the checks, not the queue
        gens, leader = [], None
        for choice in range(req.sampling.n):
            params = _choice_params(req.sampling, choice)
            stats = GenerationStats(prompt_tokens=len(p.prompt), predicted=req.prediction is not None)
            channel, leader = self._launch(entry, p.prompt, params, req, p.max_new, stats, p.forced, leader,
                                           p.constraints[choice], p.prediction)
            gens.append(Generation(entry, channel, stats, started, self.registry))
        return gens

    def _launch(self, entry, prompt, params, req, max_new, stats, forced, leader, constraint, prediction):
        """One choice as a sequence of the model's batch; later choices share the first one's prompt."""
        backend = entry.backend
        channel = Channel(asyncio.get_running_loop())
        piece = backend.token_bytes if params.logprobs is not None else None
        text = TextAssembler(backend.detokenizer(params.skip_special), backend.is_end, params, max_new, stats,
                             time.perf_counter, piece)
        request = BatchRequest(prompt, params, forced, text, channel, follows=leader, constraint=constraint,
                               prediction=prediction, **self.faults.for_batch(entry.id))
        backend.batcher.submit(request, self.registry.worker_for(entry))
        return channel, leader or request

    async def _constraints(self, entry: ModelEntry, req: InferenceRequest) -> list:
        """One grammar matcher per choice (None each when the output is free), built and checked on a
        tokenizer thread: a large schema compiles in milliseconds, but not on the event loop."""
        n = req.sampling.n
        if req.output_format is None and not req.tool_choice.forced:
            return [None] * n

        def work() -> list:
            grammar = grammar_for(req)
            check_grammar(grammar, req)
            return [new_constraint(entry.backend, grammar) for _ in range(n)]

        return await asyncio.get_running_loop().run_in_executor(self.tokenizer_pool, work)

    async def _prediction_tokens(self, entry: ModelEntry, req: InferenceRequest) -> list[int] | None:
        """The prediction's tokens, as the answer would spell them (no control tokens), on a tokenizer thread;
        None where there is none or the model cannot draft (its answer is the same either way)."""
        batcher = getattr(entry.backend, "batcher", None)
        if req.prediction is None or not getattr(batcher, "can_draft", False):
            return None
        return await asyncio.get_running_loop().run_in_executor(
            self.tokenizer_pool, lambda: entry.backend.tokenize(req.prediction, special=False))

    async def _forced_tokens(self, entry: ModelEntry, req: InferenceRequest) -> list[int] | None:
        """Scripted output, for tests: tiny models only, never a real model."""
        if req.script is None:
            return None
        if not entry.backend.is_tiny:
            raise ApiError(400, "invalid_request_error", "cortex_script is a test feature of "
                           "`cortex tiny-model` models only", code="script_not_allowed", param="cortex_script")
        backend = entry.backend
        segments = [Segment(req.script + backend.eos_token, True)]  # scripts may name control tokens
        return await asyncio.get_running_loop().run_in_executor(
            self.tokenizer_pool, tokenize_segments, backend, segments)

    async def embed(self, entry: ModelEntry, req: EmbeddingRequest) -> tuple[np.ndarray, int]:
        """The request's vectors and the tokens read; see `neuron.engine.embeddings`."""
        return await embeddings.embed(entry.backend, self.registry.worker_for(entry), self.tokenizer_pool,
                                      entry.id, req)


def check_max_tokens(sampling: SamplingParams, context: int, model: str) -> None:
    """Refuse a max_tokens no answer could reach, more than the whole context, as OpenAI and Anthropic
    refuse one over a model's limit; one beyond the room the prompt leaves is clamped instead (the answer
    ends with finish_reason "length"). Checked after the prompt, so that a prompt too long gets the
    overflow error clients compact on first (Claude Code sends max_tokens 32000 whatever the model)."""
    asked, field = sampling.max_tokens, sampling.max_tokens_param
    if asked is None or asked <= context:
        return
    raise ApiError(400, "invalid_request_error", f"{field} is too large: {asked}. Model {model!r} has a context "
                   f"of {context} tokens, for the prompt and the answer together, so it supports at most {context} "
                   f"completion tokens, whereas you provided {asked}. Ask for fewer, or load the model with a "
                   "larger context_size.", code="invalid_value", param=field)


def _choice_params(params: SamplingParams, choice: int) -> SamplingParams:
    """Choice i of a seeded request uses seed + i: choice 0 is what n=1 gives, and the choices differ."""
    if choice == 0 or params.seed is None:
        return params
    return dataclasses.replace(params, seed=params.seed + choice)
