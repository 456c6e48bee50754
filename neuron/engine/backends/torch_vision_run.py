"""One vision request's generation, alone, on the model's device thread.

The vision backend's `batcher`: it takes the engine's `BatchRequest`s as the batch schedulers do, but
runs each whole, through `model.generate` (which knows each architecture's way of feeding pixels on
the first step), one after the other. cortex's sampler picks each token (a logits processor that
leaves one choice to generate's greedy step), its `TextAssembler` makes the text, stop sequences and
the length limit, and generation stops at the next token once the assembler is done or the client
has gone away. A long answer holds the device for its whole length: other models sharing the device
wait for it, as for a load.
"""

from __future__ import annotations

import logging

from neuron.engine.batching import BatchRequest
from neuron.engine.logprobs import logprob_of

log = logging.getLogger("cortex.neuron.engine.backends.torch_vision_run")


class VisionRunner:
    """Runs vision requests one at a time (one slot); the scheduler interface the engine and metrics read."""

    def __init__(self, backend):
        self.backend = backend
        self.slots = [None]  # one sequence at a time
        self.steps = 0  # tokens generated, over all requests (the metrics' batch steps)
        self._running = 0

    def submit(self, request: BatchRequest, worker) -> None:
        worker.submit(_Job(self, request))

    def running(self) -> int:
        return self._running

    def close(self) -> None:
        """Nothing is held between requests."""

    def run(self, req: BatchRequest) -> None:
        self._running += 1
        try:
            self._generate(req)
        except Exception as exc:  # noqa: BLE001 - delivered to the request's reader
            log.exception("vision generation failed")
            req.channel.fail(exc)  # a 500 for its request; the model stays loaded
            return
        finally:
            self._running -= 1
        for delta in req.text.finish():
            req.channel.push(delta)
        req.channel.end()

    def _generate(self, req: BatchRequest) -> None:
        backend, torch = self.backend, self.backend.torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        picker = _Picker(torch, backend.sampler(req.params), req)
        feeder = _Feeder(req, self, picker)
        inputs = _inputs(torch, backend, req.prompt)
        config = GenerationConfig(max_new_tokens=req.text.max_new + 1, do_sample=False, eos_token_id=None,
                                  pad_token_id=backend.tokenizer.pad_token_id or 0)
        with torch.inference_mode():
            backend.model.generate(**inputs, generation_config=config, logits_processor=LogitsProcessorList([picker]),
                                   stopping_criteria=StoppingCriteriaList([feeder]), streamer=feeder)


class _Job:
    def __init__(self, runner: VisionRunner, request: BatchRequest):
        self.runner, self.request = runner, request

    def run(self) -> bool:
        if not self.request.channel.cancelled:
            self.runner.run(self.request)
        return True


def _inputs(torch, backend, prompt) -> dict:
    """generate's arguments: the ids, their mask, and the pixel tensors on the model's device and dtype."""
    device, dtype = backend.device, backend.model.dtype
    ids = torch.tensor([list(prompt)], device=device)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for key, value in getattr(prompt, "media", {}).items():
        out[key] = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
    return out


class _Picker:
    """A logits processor: cortex's sampler (or the scripted tokens) chooses, within the request's grammar if it
    has one (response_format, a forced tool call), and generate's greedy step takes that token. The token's
    logprob, from the model's own distribution, waits in `logprobs` for the feeder."""

    def __init__(self, torch, sampler, req: BatchRequest):
        self.torch, self.sampler, self.req = torch, sampler, req
        self.forced = list(req.forced or [])
        self.logprobs: list = []

    def __call__(self, input_ids, scores):
        raw = scores[0].float()
        token = self.forced.pop(0) if self.forced else self._sampled(raw)
        self.sampler.seen(token)
        if self.req.params.logprobs is not None:
            self.logprobs.append(logprob_of(raw.cpu().numpy(), token, self.req.params.logprobs))
        out = self.torch.full_like(scores, float("-inf"))
        out[0, token] = 0.0
        return out

    def _sampled(self, logits) -> int:
        constraint = self.req.constraint
        if constraint is None:
            return self.sampler.sample(logits)
        allowed = self.torch.from_numpy(constraint.allowed()).to(logits.device)
        if allowed.numel() < logits.numel():  # a vocabulary padded past the tokenizer's
            pad = self.torch.zeros(logits.numel() - allowed.numel(), dtype=self.torch.bool, device=logits.device)
            allowed = self.torch.cat([allowed, pad])
        token = self.sampler.sample(logits.masked_fill(~allowed[:logits.numel()], float("-inf")))
        constraint.accept(token)
        return token


class _Feeder:
    """generate's streamer and stopping criterion at once: each new token goes to the request's text
    assembler, whose deltas go to the client; generation stops once it is done or the client has gone."""

    def __init__(self, req: BatchRequest, runner: VisionRunner, picker: _Picker):
        self.req, self.runner, self.picker = req, runner, picker
        self.prompt_seen = False
        self.done = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate streams the prompt first
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            if self.done:
                return
            logprob = self.picker.logprobs.pop(0) if self.picker.logprobs else None
            delta, self.done = self.req.text.feed(int(token), logprob)
            self.runner.steps += 1
            if delta is not None:
                self.req.channel.push(delta)

    def end(self) -> None:
        """Nothing held back here: the assembler's `finish` ends the text."""

    def __call__(self, input_ids, scores, **kwargs):
        stop = self.done or self.req.channel.cancelled
        return _flags(input_ids, stop)


def _flags(input_ids, stop: bool):
    import torch

    return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
