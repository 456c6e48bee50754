"""Loading, unloading, admission limits, poison recovery and shutdown of a real neuron."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import NO_EOS, http_json, start_neuron, wait_for


def models(proc) -> dict:
    return {m["id"]: m for m in http_json("GET", proc.url + "/models")[1]["models"]}


def health_model(proc, model) -> dict:
    return next(m for m in http_json("GET", proc.url + "/health")[1]["models"] if m["id"] == model)


def arm(proc, **fault):
    status, body = http_json("POST", proc.url + "/debug/faults", fault)
    assert status == 200, body


class StreamReader:
    """A streaming request read on a thread; `first_chunk` is set once data has arrived."""

    def __init__(self, url: str, body: dict):
        self.first_chunk = threading.Event()
        self.lines: list[str] = []
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(url, body), daemon=True)
        self.thread.start()

    def _run(self, url, body):
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                for line in resp:
                    if line.strip():
                        self.lines.append(line.decode().strip())
                        self.first_chunk.set()
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc
            self.first_chunk.set()

    def join(self, timeout=60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "stream did not finish"


@pytest.fixture()
def fresh_neuron(tmp_path, models_dir):
    with start_neuron(tmp_path, models_dir, "--cpu-memory-mb", "4000") as proc:
        yield proc


def chat_body(model, **kw):
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **kw}


def test_available_lists_the_models_dir(fresh_neuron):
    status, body = http_json("GET", fresh_neuron.url + "/models/available")
    ids = {m["id"]: m for m in body["models"]}
    assert status == 200 and {"tiny-gguf", "tiny-hf", "tiny-short"} <= set(ids)
    assert ids["tiny-gguf"]["format"] == "gguf" and ids["tiny-hf"]["format"] == "hf"
    assert ids["tiny-gguf"]["size_mb"] > 0


def test_concurrent_loads_are_single_flight(fresh_neuron):
    url = fresh_neuron.url + "/models/load"
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: http_json("POST", url, {"model": "tiny-gguf"}), range(6)))
    assert all(status == 200 for status, _ in results), results
    assert len({body["load_time_s"] for _, body in results}) == 1, "all callers share one load"
    metrics = urllib.request.urlopen(fresh_neuron.url + "/metrics").read().decode()
    assert 'cortex_neuron_model_load_seconds_count{model="tiny-gguf"} 1.0' in metrics


def test_load_reports_measured_memory_and_unload_frees_it(fresh_neuron):
    status, body = http_json("POST", fresh_neuron.url + "/models/load", {"model": "tiny-hf", "backend": "torch"})
    assert status == 200 and body["status"] == "loaded" and body["backend"] == "torch"
    assert body["memory_mb"] > 0 and body["devices"] == ["cpu"]
    used = http_json("GET", fresh_neuron.url + "/health")[1]["devices"][0]["used_mb"]
    assert used >= body["memory_mb"]
    status, body = http_json("POST", fresh_neuron.url + "/models/unload", {"model": "tiny-hf"})
    assert status == 200 and "tiny-hf" not in models(fresh_neuron)
    assert http_json("GET", fresh_neuron.url + "/health")[1]["devices"][0]["used_mb"] == 0


@pytest.mark.parametrize("body, status, code", [
    ({"model": "no-such-model"}, 404, "model_not_found"),
    ({"model": "tiny-hf", "backend": "llama.cpp"}, 400, "backend_format_mismatch"),
    ({"model": "tiny-gguf", "backend": "tensorrt"}, 400, "invalid_request"),
    ({"model": "tiny-gguf", "devices": ["cuda:3"]}, 400, "unknown_device"),
    ({"model": "tiny-gguf", "context_size": "big"}, 400, "invalid_request"),
    ({}, 400, "missing_field"),
])
def test_bad_loads_are_refused_clearly(fresh_neuron, body, status, code):
    got, resp = http_json("POST", fresh_neuron.url + "/models/load", body)
    assert (got, resp["error"]["code"]) == (status, code), resp
    assert resp["error"]["message"]


def test_load_that_does_not_fit_is_refused_before_it_is_tried(tmp_path, models_dir):
    proc = start_neuron(tmp_path, models_dir, "--cpu-memory-mb", "20")
    try:
        status, body = http_json("POST", proc.url + "/models/load", {"model": "tiny-gguf"})
        assert status == 507 and body["error"]["code"] == "insufficient_memory"
        assert "MiB" in body["error"]["message"] and models(proc) == {}
    finally:
        proc.terminate()


def test_admission_queue_full_and_wait_timeout(fresh_neuron):
    url = fresh_neuron.url
    status, _ = http_json("POST", url + "/models/load", {"model": "tiny-gguf", "max_in_flight": 1,
                                                         "max_queue_depth": 1, "max_wait_s": 60})
    assert status == 200
    arm(fresh_neuron, model="tiny-gguf", fault="slow", delay_ms=100, count=1)
    running = StreamReader(url + "/v1/chat/completions", chat_body("tiny-gguf", max_tokens=60,
                                                                  logit_bias=NO_EOS))
    running.first_chunk.wait(30)
    wait_for(lambda: health_model(fresh_neuron, "tiny-gguf")["in_flight"] == 1, what="one in flight")
    queued = StreamReader(url + "/v1/chat/completions", chat_body("tiny-gguf", max_tokens=2))
    wait_for(lambda: health_model(fresh_neuron, "tiny-gguf")["queue_depth"] == 1, what="one queued")
    started = time.monotonic()
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(chat_body("tiny-gguf")).encode())
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert time.monotonic() - started < 5, "a full queue answers at once, it does not hang"
    assert err.value.code == 429 and err.value.headers["Retry-After"]
    assert json.loads(err.value.read())["error"]["code"] == "queue_full"
    running.join()
    queued.join()
    assert queued.lines[-1] == "data: [DONE]", "the queued request ran once the slot was free"


def test_admission_wait_is_bounded(fresh_neuron):
    url = fresh_neuron.url
    http_json("POST", url + "/models/load", {"model": "tiny-gguf", "max_in_flight": 1, "max_wait_s": 0.3})
    arm(fresh_neuron, model="tiny-gguf", fault="slow", delay_ms=100, count=1)
    running = StreamReader(url + "/v1/chat/completions", chat_body("tiny-gguf", max_tokens=30,
                                                                  logit_bias=NO_EOS))
    running.first_chunk.wait(30)
    status, body = http_json("POST", url + "/v1/chat/completions", chat_body("tiny-gguf"))
    assert status == 503 and body["error"]["code"] == "queue_timeout"
    running.join()


@pytest.mark.parametrize("model", ["tiny-gguf", "tiny-hf"])
def test_device_fault_poisons_then_recovers(fresh_neuron, model):
    url = fresh_neuron.url
    assert http_json("POST", url + "/models/load", {"model": model})[0] == 200
    arm(fresh_neuron, model=model, fault="device_error", after_tokens=3)
    stream = StreamReader(url + "/v1/chat/completions", chat_body(model, max_tokens=50, logit_bias=NO_EOS))
    stream.join()
    error_events = [json.loads(line[6:]) for line in stream.lines if line.startswith("data: {\"error\"")]
    assert error_events and error_events[0]["error"]["code"] == "model_recovering"
    assert stream.lines[-1] == "data: [DONE]"
    seen = set()

    def recovered():
        state = models(fresh_neuron).get(model, {}).get("status")
        seen.add(state)
        return state == "loaded"

    wait_for(recovered, what="model reloaded")
    status, body = http_json("POST", url + "/v1/chat/completions", chat_body(model, max_tokens=4))
    assert status == 200 and body["usage"]["completion_tokens"] > 0


def test_recovering_model_answers_503_and_failed_reload_leaves_it_unloaded(fresh_neuron):
    url = fresh_neuron.url
    http_json("POST", url + "/models/load", {"model": "tiny-gguf"})
    arm(fresh_neuron, model="tiny-gguf", fault="load_error")
    arm(fresh_neuron, model="tiny-gguf", fault="device_error", after_tokens=0)
    status, body = http_json("POST", url + "/v1/chat/completions", chat_body("tiny-gguf", max_tokens=5))
    assert status == 503 and body["error"]["code"] == "model_recovering"
    wait_for(lambda: "tiny-gguf" not in models(fresh_neuron), what="failed reload to unload the model")
    failures = http_json("GET", url + "/models")[1]["failures"]
    assert "injected load failure" in failures["tiny-gguf"]
    assert http_json("POST", url + "/models/load", {"model": "tiny-gguf"})[0] == 200, "it can be loaded again"


def test_sigterm_lets_streams_finish_then_exits_zero(tmp_path, models_dir):
    proc = start_neuron(tmp_path, models_dir)
    try:
        http_json("POST", proc.url + "/models/load", {"model": "tiny-gguf"})
        arm(proc, model="tiny-gguf", fault="slow", delay_ms=40, count=2)
        streams = [StreamReader(proc.url + "/v1/chat/completions",
                                chat_body("tiny-gguf", max_tokens=25, logit_bias=NO_EOS)) for _ in range(2)]
        for s in streams:
            s.first_chunk.wait(30)
        proc.proc.send_signal(signal.SIGTERM)
        for s in streams:
            s.join()
            assert s.error is None and s.lines[-1] == "data: [DONE]"
            usage = json.loads(s.lines[-2][6:])["usage"]
            assert usage["completion_tokens"] == 25, "in-flight streams run to completion"
        assert proc.proc.wait(30) == 0
        assert "unloading 1 model(s)" in proc.log()
    finally:
        proc.kill()


def test_unload_if_idle_refuses_a_busy_model_and_frees_an_idle_one(fresh_neuron):
    """The gateway's evictor unloads with if_idle: the neuron alone knows every request in flight."""
    url = fresh_neuron.url
    assert http_json("POST", url + "/models/load", {"model": "tiny-gguf"})[0] == 200
    arm(fresh_neuron, model="tiny-gguf", fault="slow", delay_ms=100, count=1)
    running = StreamReader(url + "/v1/chat/completions", chat_body("tiny-gguf", max_tokens=30, logit_bias=NO_EOS))
    running.first_chunk.wait(30)
    status, body = http_json("POST", url + "/models/unload", {"model": "tiny-gguf", "if_idle": True})
    assert status == 409 and body["error"]["code"] == "model_busy", body
    assert models(fresh_neuron)["tiny-gguf"]["status"] == "loaded"
    running.join()
    assert running.lines[-1] == "data: [DONE]", "the busy model kept serving"
    status, body = http_json("POST", url + "/models/unload", {"model": "tiny-gguf", "if_idle": True})
    assert status == 200 and "tiny-gguf" not in models(fresh_neuron)
    status, body = http_json("POST", url + "/models/unload", {"model": "x", "if_idle": "yes"})
    assert status == 400 and body["error"]["param"] == "if_idle"
