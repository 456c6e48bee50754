"""llama.cpp's own log lines, and the other libraries' (Python warnings, progress bars), in the neuron's format.

Before, `--log-format json` was broken by `llama_context: n_ctx_seq (8192) > n_ctx_train (2048) ...`
written straight to stderr: llama-cpp-python's level table no longer matches ggml's, so its quiet
setting let every warning through. A real neuron loads the tiny GGUF (whose context is longer than
it was trained for: llama.cpp warns) and the tiny HF model, and every line it writes must parse.
"""

from __future__ import annotations

import json
import logging
import threading

import pytest

from neuron.engine.backends.llamacpp_log import CONT, MAX_PENDING, LineJoiner
from tests.helpers import http_json, start_neuron

DEBUG, INFO, WARN, ERROR = 1, 2, 3, 4  # ggml.h's levels today


def joined(pieces: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    joiner = LineJoiner(lambda level, line: out.append((level, line)))
    for level, text in pieces:
        joiner.feed(level, text)
    return out


def test_pieces_and_continuations_make_whole_lines_at_mapped_levels():
    assert joined([(WARN, "llama_context: n_ctx_seq "), (CONT, "(8192) > n_ctx_train"), (CONT, " (2048)\n")]) == \
        [(logging.WARNING, "llama_context: n_ctx_seq (8192) > n_ctx_train (2048)")]
    assert joined([(ERROR, "a\nb\n"), (INFO, "tensors\n"), (DEBUG, "more\n")]) == \
        [(logging.ERROR, "a"), (logging.ERROR, "b"), (logging.DEBUG, "tensors"), (logging.DEBUG, "more")]
    # A message left unfinished is a line of its own once the next one starts; dots of progress are joined.
    assert joined([(INFO, "loading"), (CONT, "."), (CONT, "."), (WARN, "careful\n")]) == \
        [(logging.DEBUG, "loading.."), (logging.WARNING, "careful")]
    assert joined([(INFO, "x" * (MAX_PENDING + 1))]) == [(logging.DEBUG, "x" * (MAX_PENDING + 1))], "bounded"
    assert joined([(WARN, "\n"), (CONT, "  \n")]) == [], "no empty records"


def test_two_threads_logging_at_once_keep_their_own_lines():
    out: list[tuple[int, str]] = []
    joiner = LineJoiner(lambda level, line: out.append((level, line)))
    first_half = threading.Event()
    joiner.feed(WARN, "main: begun ")

    def other():
        joiner.feed(ERROR, "other: whole line\n")
        first_half.set()

    thread = threading.Thread(target=other)
    thread.start()
    assert first_half.wait(10)
    thread.join(10)
    joiner.feed(CONT, "and ended\n")
    assert out == [(logging.ERROR, "other: whole line"), (logging.WARNING, "main: begun and ended")]


@pytest.fixture(scope="module")
def json_neuron(tmp_path_factory, models_dir):
    proc = start_neuron(tmp_path_factory.mktemp("llama_log"), models_dir, "--log-format", "json")
    try:
        yield proc
    finally:
        proc.terminate()


def test_every_line_of_a_json_neuron_parses_after_loads(json_neuron):
    url = json_neuron.url
    for model in ("tiny-gguf", "tiny-hf"):
        status, body = http_json("POST", url + "/models/load", {"model": model})
        assert status == 200, body
        status, body = http_json("POST", url + "/v1/chat/completions", {
            "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert status == 200, body
    assert http_json("POST", url + "/v1/embeddings", {"model": "tiny-gguf", "input": "hi"})[0] == 200
    raw = [line for line in json_neuron.log_path.read_text(errors="replace").split("\n") if line.strip()]
    unparsed = []
    for line in raw:
        try:
            json.loads(line)
        except ValueError:
            unparsed.append(line)
    assert unparsed == [], unparsed[:5]
    records = [json.loads(line) for line in raw]
    warned = [r for r in records if r["logger"] == "cortex.neuron.llama_cpp"]
    assert any(r["level"] == "warning" and r["message"].startswith("llama_init_from_model: model default pooling")
               for r in warned), warned[:5]  # the embedding context's: llama.cpp's warnings stay warnings
    assert all(r["level"] != "debug" for r in warned), "llama.cpp's info lines stay at debug, out of an info log"
