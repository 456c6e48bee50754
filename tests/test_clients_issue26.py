"""What the clients tried against issue 26's endpoints (docs/api.md, "Real clients") found wrong, pinned.

A real `cortex neuron` with the tiny vision model on disk (never loaded: these refusals come before any
load) and a real `cortex serve`, driven by the official SDKs.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.helpers import make_tiny, start_gateway, start_neuron

REMOTE = "https://example.com/cat.png"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("clients26")
    models = root / "models"
    make_tiny(models / "tiny-vision", "hf", "--kind", "vision")
    with start_neuron(root, models) as neuron, start_gateway(root, {"n1": neuron.url}) as gw:
        yield gw


def test_an_anthropic_url_source_is_told_to_send_a_base64_source_not_a_data_url(gateway):
    """Anthropic has no data URLs: the fix a refused url source is given must be a block it can send."""
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    image = {"type": "image", "source": {"type": "url", "url": REMOTE}}
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="tiny-vision", max_tokens=4,
                               messages=[{"role": "user", "content": [image, {"type": "text", "text": "what"}]}])
    message = err.value.body["error"]["message"]
    assert message.startswith("messages.0.content.0.source: http(s) image URLs are not fetched"), message
    assert "base64 source ({type: base64, media_type, data})" in message and "data URL" not in message


def test_an_openai_http_image_url_is_still_told_to_send_a_data_url(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    part = {"type": "image_url", "image_url": {"url": REMOTE}}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-vision", max_tokens=4,
                                       messages=[{"role": "user", "content": [part]}])
    assert err.value.code == "image_url_not_allowed"
    assert "as a data URL (data:image/png;base64,...)" in err.value.message, err.value.message
