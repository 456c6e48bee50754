"""A key's image requests are metered (real processes, the official openai client): the gateway bills the usage
the neuron reports, the prompt's tokens as the text encoder reads them, once a request whatever its n, and a key
with a budget is held and settled like any other."""

from __future__ import annotations

import uuid

import openai

from tests.helpers import http_json, load_models, make_tiny, start_gateway, start_neuron

ADMIN = "admin-key-images-01"


def test_a_keys_images_are_billed_their_prompt_tokens(tmp_path):
    models = tmp_path / "models"
    make_tiny(models / "img", "hf", "--kind", "image")
    with start_neuron(tmp_path, models, "--cpu-memory-mb", "4000") as neuron:
        load_models(neuron, ("img",))
        with start_gateway(tmp_path, {"n1": neuron.url}, extra_toml=f'[auth]\nadmin_keys = ["{ADMIN}"]') as gateway:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            name = f"i-{uuid.uuid4().hex[:8]}"
            status, body = http_json("POST", gateway.url + "/admin/keys",
                                     {"name": name, "budget_tokens": 10_000, "budget_window": "1d"}, headers=admin)
            assert status == 201, body
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=body["key"], max_retries=0)
            answers = [client.images.generate(model="img", prompt="a sunny city", size="64x64", n=n,
                                              extra_body={"steps": 2, "seed": 1}) for n in (1, 2)]
            assert [len(a.data) for a in answers] == [1, 2]
            tokens = answers[0].usage.input_tokens
            assert tokens > 0 and answers[1].usage.input_tokens == tokens  # the prompt is read once for the batch
            status, billed = http_json("GET", gateway.url + f"/admin/usage?key={name}", headers=admin)
            assert status == 200, billed
            assert sum(r["requests"] for r in billed["usage"]) == 2
            assert sum(r["total_tokens"] for r in billed["usage"]) == 2 * tokens
            (key,) = billed["keys"]
            assert key["reserved_tokens"] == 0 and key["budget_left"] == 10_000 - 2 * tokens
