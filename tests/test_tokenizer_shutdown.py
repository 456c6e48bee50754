"""A stop signal does not wait for a tokenizer thread (issue 20, finding 3).

A raw completion prompt is the client's own text, control tokens parsed by
intent, and llama.cpp parses them in time quadratic in their number: 300,000
`<|im_end|>` (3 MB, within the bound of a 131,072-token context) hold a
tokenizer thread for minutes. SIGTERM must still stop the neuron promptly
(within its drain, plus the unload), not once that thread is done.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
import urllib.request

import psutil
import pytest

from neuron.engine.tokenizer_pool import TokenizerPool
from tests.helpers import http_json, make_tiny, start_neuron

CONTEXT = 131_072
PROMPT = "<|im_end|>" * 300_000  # minutes of llama.cpp's special-token parsing, under CONTEXT x 32 characters


def _post_in_background(url: str, body: dict) -> threading.Thread:
    def post() -> None:
        try:
            http_json("POST", url, body, timeout=900)
        except OSError:
            pass  # the neuron stops under it: no answer is expected

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def _cpu_s(proc) -> float:
    times = psutil.Process(proc.proc.pid).cpu_times()
    return times.user + times.system


def _wait_busy(proc, since: float, busy_s: float = 3, deadline_s: float = 120) -> None:
    """Until the neuron has spent `busy_s` more CPU seconds than at `since`: reading and checking the
    body take milliseconds, so that is its tokenizer thread at work."""
    deadline = time.monotonic() + deadline_s
    while _cpu_s(proc) - since < busy_s:
        assert time.monotonic() < deadline, proc.log_tail()
        time.sleep(0.1)


def test_sigterm_does_not_wait_for_a_busy_tokenizer(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    make_tiny(models / "long.gguf", "gguf", "--context", str(CONTEXT))
    (tmp_path / "neuron.toml").write_text("[neuron]\nshutdown_grace_s = 1\n")
    neuron = start_neuron(tmp_path, models, "--config", str(tmp_path / "neuron.toml"))
    try:
        status, body = http_json("POST", neuron.url + "/models/load", {"model": "long", "context_size": CONTEXT})
        assert status == 200, body
        idle = _cpu_s(neuron)
        client = _post_in_background(neuron.url + "/v1/completions",
                                     {"model": "long", "prompt": PROMPT, "max_tokens": 1})
        _wait_busy(neuron, idle)  # the prompt passed check_bounds and is on a tokenizer thread, for minutes
        urllib.request.urlopen(neuron.url + "/health", timeout=30).read()  # the event loop is free meanwhile
        neuron.proc.send_signal(signal.SIGTERM)
        try:
            code = neuron.proc.wait(timeout=120)  # a drain of 1 s, the unload, the exit: far less than this
        except subprocess.TimeoutExpired:
            raise AssertionError("the neuron still runs 120 s after SIGTERM: it waits for its tokenizer "
                                 "thread\n" + neuron.log_tail()) from None
        assert code == 0, neuron.log_tail()
        client.join(timeout=30)
    finally:
        neuron.kill()


def test_a_tokenisation_whose_caller_left_is_told_to_stop():
    """A client that leaves (its handler cancelled) frees the thread at the next segment; a closed pool
    refuses new work and cancels what waits."""
    pool = TokenizerPool(workers=1)
    started, release, seen = threading.Event(), threading.Event(), []

    def work(stop) -> None:
        started.set()
        release.wait(60)
        seen.append(stop())

    async def leave() -> None:
        task = asyncio.ensure_future(pool.call(work))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()

    asyncio.run(leave())
    pool.submit(lambda: None).result(60)  # one worker: `work` is done once this has run
    assert seen == [True]
    release.clear()
    running = threading.Event()

    def hold() -> bool:
        running.set()
        return release.wait(60)

    busy = pool.submit(hold)
    assert running.wait(60)
    queued = pool.submit(lambda: None)
    pool.shutdown()
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="shutting down"):
        pool.submit(lambda: None)
    release.set()
    assert busy.result(60) is True
