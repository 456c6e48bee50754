"""The thread counts of one model's llama.cpp contexts, tuned from the decodes they time (`thread_tuner`).

llama.cpp takes one count for steps of a single token (`n_threads`) and one for larger batches
(`n_threads_batch`); each has its own tuner, since a lone stream and a batch of eight want different
counts. Every context of the model (the draft model's too) runs with the counts chosen.
CORTEX_THREAD_TUNING=0 keeps the configured counts (what the benchmarks compare against).
"""

from __future__ import annotations

import logging
import os
import time

from neuron.engine.thread_tuner import ThreadTuner, ladder

log = logging.getLogger("cortex.neuron.engine.backends.llamacpp")


class StepThreads:
    def __init__(self, llama_cpp, ctx):
        self.lib, self.contexts = llama_cpp, [ctx]
        single, batch = llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)
        rungs = 1 if os.environ.get("CORTEX_THREAD_TUNING") == "0" else 3
        self.tuners = {True: ThreadTuner(ladder(single, rungs)), False: ThreadTuner(ladder(batch, rungs))}
        self.applied = (single, batch)
        self.seconds = 0.0  # the last decode's, for the batcher's step cost too

    def follow(self, ctx) -> None:
        """Another context of the model (its draft model's) takes the same counts."""
        self.contexts.append(ctx)
        self.lib.llama_set_n_threads(ctx, *self.applied)

    def decode(self, ctx, batch) -> int:
        """llama_decode, with the counts the tuners choose, timed for them."""
        wanted = (self.tuners[True].choice(), self.tuners[False].choice())
        if wanted != self.applied:
            for each in self.contexts:
                self.lib.llama_set_n_threads(each, *wanted)
            self.applied = wanted
        single = batch.n_tokens == 1
        started = time.perf_counter()
        ret = self.lib.llama_decode(ctx, batch)
        self.seconds = time.perf_counter() - started
        tuner, threads = self.tuners[single], wanted[0 if single else 1]
        if ret == 0 and tuner.observe(threads, batch.n_tokens, self.seconds):
            rates = ", ".join(f"{n} threads {tuner.rate(n):.0f} tok/s" for n in tuner.counts)
            log.info("llama.cpp %s steps now run on %d threads (measured: %s)",
                     "single-token" if single else "batched", tuner.current, rates)
        return ret
