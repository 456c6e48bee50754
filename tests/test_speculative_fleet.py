"""Speculative decoding through the fleet (issue 28), real `cortex serve` over a real `cortex neuron`: a
models.toml profile's `speculative` reaches the node's load when the gateway loads the model on demand, and
a bad one stops the gateway naming the file and the field; Predicted Outputs (`prediction`) pass through the
gateway with their usage details; the Anthropic and Responses routes, which have no prediction, answer
from a prompt-lookup model as from the same model without it; and the operator sees the drafts kept:
`/admin/status` `drafts`, `cortex top`'s and `cortex status`'s draft column."""

from __future__ import annotations

import subprocess

import anthropic
import openai
import pytest
from click.testing import CliRunner

from cortex_cli.main import cli
from cortex_cli.top.data import COLUMNS, format_row, rows_from_status
from tests.helpers import CORTEX, NO_EOS, http_json, one_node_fleet, wait_for

PLAIN, LOOKUP = "tiny-gguf", "tiny-lookup"  # one GGUF under two names: the second with prompt lookup
MODELS_TOML = f'[[models]]\nid = "{LOOKUP}"\nspeculative = {{method = "ngram", max_draft = 6}}\n'
CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
REPEATING = [{"role": "user", "content": CODE * 3}]  # text the answer's n-grams are found in
GREEDY = {"max_tokens": 48, "temperature": 0, "logit_bias": NO_EOS}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    models = tmp_path_factory.mktemp("speculative-fleet-models")
    for name in (PLAIN, LOOKUP):
        (models / f"{name}.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    root = tmp_path_factory.mktemp("speculative-fleet")
    with one_node_fleet(root, models, "--cpu-memory-mb", "4000", models_toml=MODELS_TOML) as (gateway, neuron, _):
        yield gateway, neuron


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=fleet[0].url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def drafted(fleet, client):
    """Both models loaded on demand through the gateway, the lookup one having drafted over a repeating
    prompt; the two answers (they must be the same)."""
    plain = client.chat.completions.create(model=PLAIN, messages=REPEATING, **GREEDY)
    looked = client.chat.completions.create(model=LOOKUP, messages=REPEATING, **GREEDY)
    return plain, looked


def health_drafts(neuron) -> dict[str, tuple[int, int]]:
    _, health = http_json("GET", neuron.url + "/health")
    return {m["id"]: (m["drafted"], m["draft_accepted"]) for m in health["models"]}


def gateway_status(gateway) -> dict:
    status, body = http_json("GET", gateway.url + "/admin/status")
    assert status == 200, body
    return body


def status_showing(gateway, neuron) -> dict:
    """/admin/status once the gateway has polled the neuron's current draft counts."""
    drafted, accepted = health_drafts(neuron)[LOOKUP]

    def caught_up():
        body = gateway_status(gateway)
        return body if body["nodes"][0]["drafts"].get(LOOKUP) == {"drafted": drafted, "accepted": accepted} else None

    return wait_for(caught_up, what="the gateway's status to show the neuron's draft counts")


def rate(neuron) -> str:
    drafted, accepted = health_drafts(neuron)[LOOKUP]
    return f"{100 * accepted / drafted:.0f}%"


def test_a_profile_loads_on_demand_with_prompt_lookup_and_the_answer_is_unchanged(fleet, drafted):
    gateway, neuron = fleet
    plain, looked = drafted
    assert looked.choices[0].message.content == plain.choices[0].message.content
    assert looked.usage.completion_tokens == plain.usage.completion_tokens
    assert looked.usage.completion_tokens_details is None  # no prediction: nothing to tell the client
    _, listing = http_json("GET", neuron.url + "/models")
    specs = {m["id"]: m["spec"] for m in listing["models"]}
    speculative = specs[LOOKUP]["speculative"]
    assert (speculative["method"], speculative["max_draft"], speculative["ngram_max"]) == ("ngram", 6, 3)
    assert "speculative" not in specs[PLAIN]
    counts = health_drafts(neuron)
    assert counts[LOOKUP][0] > 0 and 0 <= counts[LOOKUP][1] <= counts[LOOKUP][0]
    assert counts[PLAIN] == (0, 0), "a model without speculative drafts only from predictions"


def test_admin_status_carries_each_models_drafts(fleet, drafted):
    gateway, neuron = fleet
    node = status_showing(gateway, neuron)["nodes"][0]
    drafts = node["drafts"]
    assert set(drafts) == {LOOKUP}, "a model that never drafted has no entry"
    assert 0 <= drafts[LOOKUP]["accepted"] <= drafts[LOOKUP]["drafted"]


def test_top_rows_and_status_show_the_acceptance_rate(fleet, drafted):
    gateway, neuron = fleet
    status = status_showing(gateway, neuron)
    rows = {r.model: dict(zip(COLUMNS, (c.plain for c in format_row(r)), strict=True))
            for r in rows_from_status(status)}
    assert rows[LOOKUP]["draft"] == rate(neuron) and rows[PLAIN]["draft"] == "-"
    result = CliRunner().invoke(cli, ["status", "--gateway", gateway.url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    models = result.output[result.output.index("Models"):result.output.index("Replicas")]
    header = next(line for line in models.splitlines() if "model" in line and "draft" in line)
    row = next(line for line in models.splitlines() if f"│ {LOOKUP}" in line)
    cells = dict(zip((c.strip() for c in header.strip("┃ ").split("┃")),
                     (c.strip() for c in row.strip("│ ").split("│")), strict=True))
    assert cells["draft"] == rate(neuron)


async def test_top_shows_the_draft_column(fleet, drafted):
    from cortex_cli.top.app import make_top_app

    gateway, neuron = fleet
    status_showing(gateway, neuron)
    expected = rate(neuron)
    app = make_top_app(gateway.url, interval=0.3)
    async with app.run_test(size=(200, 40)) as pilot:
        for _ in range(200):
            if any(r.model == LOOKUP and r.draft == expected for r in app.rows):
                break
            await pilot.pause(0.1)
        table = app.query_one("#models")
        labels = [str(c.label) for c in table.columns.values()]
        shown = {str(row[0]): dict(zip(labels, (str(c) for c in row), strict=True))
                 for row in (table.get_row_at(i) for i in range(table.row_count))}
        assert shown[LOOKUP]["draft"] == expected and shown[PLAIN]["draft"] == "-"
        assert labels.index("draft") == labels.index("tok/s") + 1
        await pilot.press("q")


def test_predicted_outputs_pass_through_the_gateway(client, drafted):
    plain = drafted[0].choices[0].message.content
    guessed = client.chat.completions.create(model=PLAIN, messages=REPEATING, **GREEDY,
                                             extra_body={"prediction": {"type": "content", "content": plain}})
    assert guessed.choices[0].message.content == plain
    details = guessed.usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 0 and details.rejected_prediction_tokens >= 0
    assert guessed.usage.completion_tokens == drafted[0].usage.completion_tokens, "rejected tokens are not billed"
    stream = client.chat.completions.create(model=PLAIN, messages=REPEATING, **GREEDY, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"prediction": {"type": "content", "content": plain}})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert chunks[-1].usage.completion_tokens_details.accepted_prediction_tokens > 0


def test_a_bad_prediction_through_the_gateway_is_the_nodes_400(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=PLAIN, messages=REPEATING, max_tokens=2,
                                       extra_body={"prediction": {"type": "text", "content": "x"}})
    assert 'prediction: expected {"type": "content"' in refused.value.message


def test_anthropic_and_responses_answer_from_a_lookup_model_as_without_it(fleet, drafted):
    gateway, neuron = fleet
    before = health_drafts(neuron)[LOOKUP][0]
    messages = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    answers = {m: messages.messages.create(model=m, max_tokens=32, messages=REPEATING,
                                        extra_body={"temperature": 0})
               for m in (PLAIN, LOOKUP)}
    assert answers[LOOKUP].content[0].text == answers[PLAIN].content[0].text
    assert answers[LOOKUP].stop_reason == answers[PLAIN].stop_reason
    assert answers[LOOKUP].usage.output_tokens == answers[PLAIN].usage.output_tokens > 0
    responses = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    said = {m: responses.responses.create(model=m, input=CODE * 3, max_output_tokens=32, temperature=0, store=False)
            for m in (PLAIN, LOOKUP)}
    assert said[LOOKUP].output_text == said[PLAIN].output_text and said[LOOKUP].status == said[PLAIN].status
    assert said[LOOKUP].usage.output_tokens == said[PLAIN].usage.output_tokens > 0
    assert health_drafts(neuron)[LOOKUP][0] > before, "the lookup model drafted for them too"


@pytest.mark.parametrize(("value", "says"), [
    ('{method = "eagle"}', "models.toml: [[models]] #1.speculative.method: expected one of ngram"),
    ('{method = "ngram", max_draft = 17}', "[[models]] #1.speculative.max_draft: expected a whole number from 1 to 16"),
    ('{ngram = true}', "[[models]] #1.speculative: unknown field 'ngram'"),
    ('"ngram"', "[[models]] #1.speculative: expected an object"),
    ('{method = "draft"}', '[[models]] #1.speculative.draft_model: method "draft" needs the id of a GGUF'),
    ('{method = "ngram"}\nbackend = "vllm"', "[[models]] #1.speculative: drafts are verified on the llama.cpp "
                                              "and torch backends, not vllm"),
    ('{method = "draft", draft_model = "x"}\nbackend = "torch"', "[[models]] #1.speculative: a draft model runs "
                                                                 "beside the target on llama.cpp, not torch"),
])
def test_a_bad_speculative_profile_stops_the_gateway_naming_file_and_field(tmp_path, value, says):
    (tmp_path / "cortex.toml").write_text('models_config = "models.toml"\n[gateway]\nlisten = "127.0.0.1:0"\n')
    (tmp_path / "models.toml").write_text(f'[[models]]\nid = "{LOOKUP}"\nspeculative = {value}\n')
    result = subprocess.run(CORTEX + ["serve", "--config", str(tmp_path / "cortex.toml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
