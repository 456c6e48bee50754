"""A load that cannot succeed on retry is a non-retryable error, and the gateway stops asking for it.

A profile whose path was a symlink in the models directory pointing outside it got `503 overloaded_error`
with `Retry-After: 10` (and "is not in this node's models directory", although the link is): Claude Code
retried 11 times in 3.5 minutes, each time a cold load the node could only refuse again.
"""

from __future__ import annotations

import shutil
import time

import anthropic
import openai
import pytest

from cortex_gateway.load_failures import (
    FORGET_AFTER_S,
    Failure,
    LoadFailures,
    catalog_version,
    gives_up,
    is_permanent,
    still_failing,
)
from neuron.shared.errors import ApiError
from neuron.shared.protocol import AvailableModel
from tests.helpers import http_json, one_node_fleet, start_neuron

PROFILE = '[[models]]\nid = "linked"\npath = "escape.gguf"\n'
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture()
def layout(tmp_path, models_dir):
    """models/escape.gguf is a symlink to a real model outside the models directory (and any root)."""
    models, outside = tmp_path / "models", tmp_path / "outside"
    models.mkdir()
    outside.mkdir()
    shutil.copy(models_dir / "tiny-short.gguf", outside / "secret.gguf")
    (models / "escape.gguf").symlink_to(outside / "secret.gguf")
    return tmp_path


def loads_tried(neuron) -> int:
    """How many loads the neuron was asked for: its access log has a line per request."""
    return neuron.log().count("POST /models/load ")


def test_the_neuron_says_what_is_wrong_with_the_link_and_how_to_fix_it(layout):
    neuron = start_neuron(layout, layout / "models", "--cpu-memory-mb", "4000")
    try:
        for name in ("escape.gguf", str(layout / "models" / "escape.gguf")):
            status, body = http_json("POST", neuron.url + "/models/load", {"model": name})
            assert (status, body["error"]["code"]) == (422, "model_outside_roots"), body
            message = body["error"]["message"]
            assert "symlink" in message and "--model-root" in message and "'escape'" in message, message
            assert str(layout) not in message, "the target's location is not shown"
    finally:
        neuron.terminate()


def test_a_link_into_a_model_root_loads(layout):
    neuron = start_neuron(layout, layout / "models", "--cpu-memory-mb", "4000",
                          "--model-root", str(layout / "outside"))
    try:
        status, body = http_json("POST", neuron.url + "/models/load", {"model": "escape.gguf"})
        assert status == 200, body
    finally:
        neuron.terminate()


def test_clients_get_a_non_retryable_error_and_the_load_is_not_retried_until_the_catalog_changes(layout):
    with one_node_fleet(layout, layout / "models", "--cpu-memory-mb", "4000",
                        models_toml=PROFILE) as (gateway, neuron, _):
        chat = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")  # the SDK's own retries (2)
        with pytest.raises(openai.UnprocessableEntityError) as err:
            chat.chat.completions.create(model="linked", messages=ASK, max_tokens=2)
        error = err.value.body
        assert error["code"] == "model_outside_roots" and error["type"] == "invalid_request_error", error
        assert "--model-root" in error["message"] and "n1" in error["message"], error
        assert "retry-after" not in err.value.response.headers
        assert gateway.log().count("POST /v1/chat/completions ") == 1, "the SDK did not retry it"
        assert loads_tried(neuron) == 1

        messages = anthropic.Anthropic(base_url=gateway.url, api_key="unused")
        with pytest.raises(anthropic.UnprocessableEntityError) as err:
            messages.messages.create(model="linked", max_tokens=2, messages=ASK)
        assert err.value.body["error"]["type"] == "invalid_request_error"
        assert "--model-root" in err.value.body["error"]["message"]
        with pytest.raises(anthropic.UnprocessableEntityError):
            with messages.messages.stream(model="linked", max_tokens=2, messages=ASK) as stream:
                stream.get_final_message()
        assert loads_tried(neuron) == 1, "known to fail there: the node was not asked again"

        shutil.copy(layout / "outside" / "secret.gguf", layout / "models" / "another.gguf")
        wait_listed(gateway, "another")
        with pytest.raises(openai.UnprocessableEntityError):
            chat.chat.completions.create(model="linked", messages=ASK, max_tokens=2)
        assert loads_tried(neuron) == 2, "the node's models changed: it was tried again"


def wait_listed(gateway, model: str, timeout: float = 60) -> None:
    """Until the gateway's poll has seen `model` in the node's listing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if model in {m["id"] for m in http_json("GET", gateway.url + "/v1/models")[1]["data"]}:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{model} never listed")


# -- the pure decisions -----------------------------------------------------------------------------
def _err(status: int, code: str) -> ApiError:
    return ApiError(status, "invalid_request_error", "x", code=code)


@pytest.mark.parametrize("status, code, permanent", [
    (422, "model_outside_roots", True),
    (404, "model_not_found", True),
    (422, "load_failed", True),  # the backend could not read the file: corrupt, unsupported architecture
    (400, "backend_unavailable", True),
    (400, "engine_unavailable", True),
    (400, "engine_flag_refused", True),
    (400, "backend_format_mismatch", True),
    (400, "unknown_device", True),
    (400, "pulls_disabled", True),
    (403, "gated_repo", True),
    (507, "insufficient_memory", False),
    (409, "model_busy", False),
    (503, "model_loading", False),
    (503, "hub_offline", False),
    (502, "pull_failed", False),
    (502, "model_not_found", False),  # a 5xx is the node's or the hub's side failing: never permanent
    (422, "engine_failed", False),  # an engine that exited while starting may have lacked memory
    (504, "engine_timeout", False),
    (500, "load_interrupted", False),
    (0, "node_unreachable", False),
    (400, "some_new_code", False),  # unknown codes keep the old, retryable answer
])
def test_which_failures_are_permanent(status, code, permanent):
    assert is_permanent(_err(status, code)) is permanent


LISTING = {"a": AvailableModel("a", "gguf", "a.gguf", 1.0)}
CHANGED = {**LISTING, "b": AvailableModel("b", "gguf", "b.gguf", 1.0)}
RESIZED = {"a": AvailableModel("a", "gguf", "a.gguf", 2.0)}


@pytest.mark.parametrize("listing, uptime_s, age_s, failing", [
    (LISTING, 100.0, 0.0, True),
    (LISTING, 160.0, 60.0, True),  # the same node, later
    (CHANGED, 100.0, 0.0, False),  # a model added
    ({}, 100.0, 0.0, False),  # removed
    (RESIZED, 100.0, 0.0, False),  # replaced
    (LISTING, 5.0, 0.0, False),  # the node restarted (its flags may have changed)
    (LISTING, 100.0 + FORGET_AFTER_S, FORGET_AFTER_S, False),  # a change no listing shows: tried again at times
])
def test_a_failure_stands_until_the_node_changes(listing, uptime_s, age_s, failing):
    failure = Failure(_err(422, "model_outside_roots"), catalog_version(LISTING), 100.0, 1000.0)
    assert still_failing(failure, catalog_version(listing), uptime_s, 1000.0 + age_s) is failing
    assert not still_failing(None, catalog_version(LISTING), 100.0, 1000.0)


def test_the_memory_is_per_node_and_model_and_forgets_what_no_longer_stands():
    memory = LoadFailures()
    version = catalog_version(LISTING)
    memory.record("n1", "m", _err(422, "load_failed"), version, 10.0, now=0.0)
    assert memory.blocking("n1", "m", version, 11.0, now=1.0).code == "load_failed"
    assert memory.blocking("n2", "m", version, 11.0, now=1.0) is None
    assert memory.blocking("n1", "other", version, 11.0, now=1.0) is None
    assert memory.blocking("n1", "m", catalog_version(CHANGED), 11.0, now=1.0) is None
    assert memory.blocking("n1", "m", version, 11.0, now=1.0) is None, "forgotten once it no longer stood"
    memory.record("n1", "m", _err(422, "load_failed"), version, 10.0, now=0.0)
    memory.clear("n1", "m")  # a load that succeeded (an admin load, say)
    assert memory.blocking("n1", "m", version, 11.0, now=1.0) is None


@pytest.mark.parametrize("candidates, failed, give_up", [
    ({"n1"}, {"n1"}, True),
    ({"n1", "n2"}, {"n1", "n2"}, True),
    ({"n1", "n2"}, {"n1"}, False),  # n2 may load it once it has room: a retry can succeed
    (set(), {"n1"}, False),  # it is no candidate now (down, draining): the old 503 says why
    (set(), set(), False),  # nothing failed permanently: the old 503
])
def test_when_the_gateway_gives_up(candidates, failed, give_up):
    assert gives_up(candidates, dict.fromkeys(failed, _err(422, "x"))) is give_up


def test_running_out_of_memory_while_loading_is_told_apart_from_a_model_that_cannot_load():
    """A backend's out-of-memory is 507 insufficient_memory (the gateway evicts and retries), not the permanent
    422 load_failed of a file the backend cannot read."""
    from neuron.engine.registry import _out_of_memory

    class OutOfMemoryError(RuntimeError):  # torch's, known by name: torch is not imported by the registry
        pass

    assert _out_of_memory(MemoryError()) and _out_of_memory(OutOfMemoryError("CUDA out of memory"))
    assert not _out_of_memory(ValueError("Failed to load model from file"))
