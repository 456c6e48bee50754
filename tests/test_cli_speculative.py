"""`cortex load --speculative`, against a real `cortex serve` over a real `cortex neuron`: the options become
the load's `speculative` object, the node loads the model with it and drafts; a combination the node would
refuse is a usage error before anything is sent; what the node refuses is the CLI's one line."""

from __future__ import annotations

import openai
import pytest
from click.testing import CliRunner

from cortex_cli.main import cli
from tests.helpers import NO_EOS, free_port, http_json, one_node_fleet

CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
REPEATING = [{"role": "user", "content": CODE * 3}]  # text whose n-grams the answer's drafts are found in


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    with one_node_fleet(tmp_path_factory.mktemp("cli-speculative"), models_dir, "--cpu-memory-mb", "4000",
                        name="beast") as (gateway, neuron, _):
        yield gateway, neuron


def cortex(*args, gateway_url: str):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "140", "CORTEX_GATEWAY": gateway_url},
                              catch_exceptions=False)


def test_load_with_prompt_lookup_reaches_the_node_and_drafts(fleet):
    gateway, neuron = fleet
    result = cortex("load", "beast", "tiny-gguf", "--speculative", "ngram", "--max-draft", "4",
                    gateway_url=gateway.url)
    assert result.exit_code == 0, result.output
    assert "loaded tiny-gguf on beast (llama.cpp, cpu):" in result.output and "drafts by ngram" in result.output
    _, listing = http_json("GET", neuron.url + "/models")
    spec = next(m["spec"] for m in listing["models"] if m["id"] == "tiny-gguf")
    speculative = spec["speculative"]
    assert (speculative["method"], speculative["max_draft"], speculative["ngram_max"]) == ("ngram", 4, 3)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    client.chat.completions.create(model="tiny-gguf", messages=REPEATING, max_tokens=32, temperature=0,
                                   logit_bias=NO_EOS)
    _, health = http_json("GET", neuron.url + "/health")
    load = next(m for m in health["models"] if m["id"] == "tiny-gguf")
    assert load["drafted"] > 0 and 0 <= load["draft_accepted"] <= load["drafted"]
    assert cortex("unload", "beast", "tiny-gguf", gateway_url=gateway.url).exit_code == 0


@pytest.mark.parametrize("args, message", [
    (("tiny-hf", "--speculative", "draft", "--draft-model", "tiny-short"), "not torch"),  # no draft model on torch
    (("tiny-gguf", "--speculative", "draft", "--draft-model", "nowhere"), "speculative: draft_model: model 'nowhere'"),
    (("tiny-gguf", "--speculative", "draft", "--draft-model", "tiny-hf"), "must be a GGUF on this node"),
])
def test_what_the_node_refuses_is_one_line(fleet, args, message):
    gateway, neuron = fleet
    result = cortex("load", "beast", *args, gateway_url=gateway.url)
    last = result.output.strip().splitlines()[-1]  # after the progress line, as any refused load
    assert result.exit_code == 1 and last.startswith("Error: speculative: ") and message in last, result.output
    assert "Traceback" not in result.output
    _, listing = http_json("GET", neuron.url + "/models")
    assert args[0] not in {m["id"] for m in listing["models"]}


def test_the_gateway_checks_an_admin_loads_speculative(fleet):
    gateway, _ = fleet
    status, body = http_json("POST", gateway.url + "/admin/load",
                             {"node": "beast", "model": "tiny-gguf", "speculative": {"method": "lookup"}})
    assert status == 400 and "speculative.method: expected one of ngram, draft" in body["error"]["message"], body


@pytest.mark.parametrize("args, message", [
    (("--draft-model", "tiny-short"), "--draft-model tunes drafts: add --speculative ngram"),
    (("--max-draft", "4"), "--max-draft tunes drafts"),
    (("--speculative", "draft"), "--speculative draft needs --draft-model ID"),
    (("--speculative", "ngram", "--draft-model", "tiny-short"), "--draft-model is for --speculative draft, not ngram"),
    (("--speculative", "draft", "--draft-model", "tiny-short", "--ngram-max", "2"),
     "--ngram-max is for --speculative ngram"),
    (("--speculative", "ngram", "--backend", "vllm"), "--speculative: drafts are verified on llama.cpp"),
    (("--speculative", "lookup"), "'lookup' is not one of 'ngram', 'draft'"),
    (("--speculative", "ngram", "--max-draft", "17"), "17 is not in the range 1<=x<=16"),
    (("--speculative", "ngram", "--max-draft", "0"), "0 is not in the range 1<=x<=16"),
    (("--speculative", "ngram", "--ngram-max", "9"), "speculative.ngram_max: expected a whole number from 1 to 8"),
])
def test_a_bad_combination_is_a_usage_error_before_anything_is_sent(args, message):
    # No gateway listens there: a request sent would be "cannot reach the gateway" (exit 1), not a usage error.
    result = cortex("load", "beast", "tiny-gguf", *args, gateway_url=f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 2 and message in result.output, result.output
    assert "load [OPTIONS] NODE MODEL" in result.output and "cannot reach" not in result.output
