"""The console's playground for the other kinds, in a real browser (tests/browser.py) against real processes:
a rerank model ranks the documents as `/v1/rerank` does, an image model draws a PNG of the asked size into
the page, the real all-MiniLM-L6-v2 (from PyPI) embeds a text into its 384 dimensions, and the tiny Whisper
transcribes an uploaded WAV into the text and segments the openai client gets for it.

The fleet takes keys, so an admin signed in cannot call the API with the admin key: the playground key (an
API key entered in the playground) is used for its calls, the chat's stream and each kind's call alike."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import openai
import pytest

from tests.browser import browser_page, shot, sign_in
from tests.embedding_models import MINILM, NO_MINILM
from tests.helpers import http_json, make_tiny, one_node_fleet

playwright_api = pytest.importorskip("playwright.async_api", reason="needs playwright (pip install playwright)")
expect = playwright_api.expect

DOCUMENTS = ["Paris is the capital of France.", "Bananas are yellow.", "The Louvre is in Paris."]
ADMIN, USER = "playground-admin-key", "playground-user-key"
AUTH = f'[auth]\nadmin_keys = ["{ADMIN}"]\nkeys = ["{USER}"]'
RATE = 16000


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    models = tmp_path_factory.mktemp("playground-models")
    make_tiny(models / "ranker", "hf", "--kind", "rerank")
    make_tiny(models / "painter", "hf", "--kind", "image")
    make_tiny(models / "whisper", "hf", "--kind", "transcribe")
    (models / "tiny-gguf.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    load = ["ranker", "painter", "whisper", "tiny-gguf"]
    if MINILM is not None:
        (models / "minilm").symlink_to(MINILM)
        load.append("minilm")
    with one_node_fleet(tmp_path_factory.mktemp("playground"), models, "--cpu-memory-mb", "6000",
                        load=tuple(load), extra_toml=AUTH) as (gateway, _, _):
        yield gateway


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=fleet.url + "/v1", api_key=USER, max_retries=0)


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    """One second of a tone with some noise, as soundfile writes a WAV."""
    import soundfile as sf

    t = np.arange(RATE) / RATE
    noise = 0.05 * np.random.default_rng(0).standard_normal(RATE)
    path = tmp_path_factory.mktemp("clips") / "clip.wav"
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t) + noise).astype(np.float32), RATE)
    return path


@pytest.fixture
async def page():
    async with browser_page() as view:
        yield view


def refusals_aside(messages: list[str], *statuses: int) -> list[str]:
    """The page's errors less the browser's own line for each refusal the test makes happen (a plain key's 401
    from /admin/status at sign-in, which asks it first; a bad request's 400; a wrong key's 401)."""
    return [m for m in messages if not any(f"status of {s}" in m for s in statuses)]


async def as_admin_with_the_playground_key(page, gateway) -> None:
    """Signed in with the admin key, the user's API key entered as the playground key (Enter submits it)."""
    await sign_in(page, gateway, ADMIN)
    await page.get_by_label("Playground key").fill(USER)
    await page.get_by_label("Playground key").press("Enter")
    await expect(page.get_by_label("Model", exact=True).locator("option[value=tiny-gguf]")).to_have_count(1)


async def test_rerank_ranks_as_the_api_does(fleet, page):
    await sign_in(page, fleet, USER)
    await page.get_by_label("Model", exact=True).select_option("ranker")
    await page.get_by_label("Query").fill("Where is the Louvre?")
    await page.get_by_label("Documents, one a line").fill("\n".join(DOCUMENTS))
    await page.get_by_role("button", name="Rerank").click()
    status, expected = http_json("POST", fleet.url + "/v1/rerank", {"model": "ranker", "query": "Where is the Louvre?",
                                                                     "documents": DOCUMENTS},
                                 headers={"Authorization": f"Bearer {USER}"})
    assert status == 200
    ranked = page.get_by_role("list", name="Ranked documents").locator(".text")
    await expect(ranked).to_have_text([DOCUMENTS[r["index"]] for r in expected["results"]])
    assert refusals_aside(page.errors.messages, 401) == []


async def test_an_image_is_drawn_into_the_page_at_the_asked_size(fleet, page):
    from PIL import Image

    await as_admin_with_the_playground_key(page, fleet)
    await page.get_by_label("Model", exact=True).select_option("painter")
    await page.get_by_label("Image prompt").fill("a red square")
    await page.get_by_label("Size").fill("64x64")
    await page.get_by_role("button", name="Generate").click()
    picture = page.get_by_role("img", name="generated: a red square")
    await expect(picture).to_be_visible()
    src = await picture.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == (64, 64)
    await shot(page, "playground-image")
    assert page.errors.messages == []


async def test_a_bad_size_is_the_apis_message_in_the_page(fleet, page):
    await as_admin_with_the_playground_key(page, fleet)
    await page.get_by_label("Model", exact=True).select_option("painter")
    await page.get_by_label("Image prompt").fill("x")
    await page.get_by_label("Size").fill("65x64")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#pg-error")).to_contain_text("the request failed: ")
    await expect(page.locator("#pg-error")).to_contain_text("size")
    assert refusals_aside(page.errors.messages, 400) == []


@pytest.mark.skipif(MINILM is None, reason=NO_MINILM)
async def test_a_real_embedding_model_embeds_into_its_dimensions(fleet, page):
    await sign_in(page, fleet, USER)
    await page.get_by_label("Model", exact=True).select_option("minilm")
    await page.get_by_label("Text to embed").fill("The Louvre is in Paris.")
    await page.get_by_role("button", name="Embed").click()
    status, expected = http_json("POST", fleet.url + "/v1/embeddings", {"model": "minilm",
                                                                         "input": "The Louvre is in Paris."},
                                 headers={"Authorization": f"Bearer {USER}"})
    head = ", ".join(f"{x:.4f}" for x in expected["data"][0]["embedding"][:8])
    await expect(page.locator("#pg-embed-out")).to_have_text(f"384 dimensions: [{head}, ...]")
    assert refusals_aside(page.errors.messages, 401) == []


async def test_an_uploaded_wav_is_transcribed_as_the_api_does(fleet, client, wav, page):
    """The text and each segment (its start-end, its text) the openai client gets for the same file and
    language, shown as text, with the audio's duration and the time taken."""
    with open(wav, "rb") as f:
        expected = client.audio.transcriptions.create(model="whisper", file=f, language="en",
                                                      response_format="verbose_json")
    await sign_in(page, fleet, USER)
    await page.get_by_label("Model", exact=True).select_option("whisper")
    await expect(page.get_by_role("button", name="Send")).to_be_hidden()  # the transcription panel, not a chat
    await page.get_by_label("Audio file").set_input_files(str(wav))
    await page.get_by_label("Language").fill("en")
    await page.get_by_role("button", name="Transcribe").click()
    took = re.escape(f"{expected.duration:.2f} s of audio, answered in ") + r"\d+\.\d\d s"
    await expect(page.locator("#pg-stats")).to_have_text(re.compile(took))
    await expect(page.locator("#pg-heard")).to_have_text(expected.text)
    segments = page.get_by_role("list", name="Segments")
    assert expected.segments
    spans = [f"{s.start:.2f}\u2013{s.end:.2f} s" for s in expected.segments]
    await expect(segments.locator(".who")).to_have_text(spans)
    await expect(segments.locator(".text")).to_have_text([s.text for s in expected.segments])
    await shot(page, "playground-transcription")
    assert refusals_aside(page.errors.messages, 401) == []


async def test_a_file_that_is_not_audio_is_the_apis_400_in_the_page(fleet, client, page):
    """Through the playground key, multipart too: a text named x.wav is refused with the API's own message."""
    notes = b"these are not the samples you are looking for"
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model="whisper", file=("x.wav", notes))
    message = refused.value.response.json()["error"]["message"]
    await as_admin_with_the_playground_key(page, fleet)
    await page.get_by_label("Model", exact=True).select_option("whisper")
    await page.get_by_role("button", name="Transcribe").click()  # no file chosen yet: said, not sent
    await expect(page.locator("#pg-error")).to_have_text("choose an audio file to transcribe")
    await expect(page.get_by_label("Audio file")).to_be_focused()
    await page.get_by_label("Audio file").set_input_files({"name": "x.wav", "mimeType": "audio/wav",
                                                           "buffer": notes})
    await page.get_by_role("button", name="Transcribe").click()
    await expect(page.locator("#pg-error")).to_have_text("the request failed: " + message)
    await expect(page.get_by_role("list", name="Segments").get_by_role("listitem")).to_have_count(0)
    assert refusals_aside(page.errors.messages, 400) == []


async def test_an_admin_chats_with_the_playground_key_and_a_wrong_one_is_refused(fleet, client, page):
    """An admin key is not an API key: the playground says it needs one; an empty key is said to be missing, a
    wrong one shows the API's 401 message, the user's key lists its models and streams the answer the openai
    client gets (greedy); a reload keeps the playground key for the tab, and signing out forgets it."""
    await sign_in(page, fleet, ADMIN)
    await expect(page.get_by_role("article", name="node n1")).to_be_visible()  # the admin's fleet view
    error = page.locator("#pg-error")
    await expect(error).to_contain_text("needs an API key, and an admin key is not one")
    await expect(page.get_by_role("button", name="Send")).to_be_disabled()
    await page.get_by_role("button", name="Use key").click()
    await expect(error).to_contain_text("enter an API key as the playground key")
    status, wrong = http_json("GET", fleet.url + "/v1/models", headers={"Authorization": "Bearer not-a-key"})
    assert status == 401
    await page.get_by_label("Playground key").fill("not-a-key")
    await page.get_by_role("button", name="Use key").click()
    await expect(error).to_have_text(f"the playground key was refused ({wrong['error']['message']}): "
                                     "enter an API key")
    await expect(page.get_by_role("button", name="Send")).to_be_disabled()
    await expect(page.get_by_label("Playground key")).to_be_focused()  # to type another
    await page.get_by_label("Playground key").fill(USER)
    await page.get_by_role("button", name="Use key").click()
    await expect(error).to_be_empty()
    await page.get_by_label("Model", exact=True).select_option("tiny-gguf")
    await page.get_by_label("Temperature").fill("0")
    await page.get_by_label("Max tokens").fill("8")
    expected = client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "Hello"}],
                                              temperature=0, max_tokens=8).choices[0].message.content
    await page.get_by_label("Message").fill("Hello")
    await page.get_by_label("Message").press("Control+Enter")
    await expect(page.locator("#pg-stats")).to_contain_text("answered in")
    answer = page.get_by_role("list", name="Conversation").locator("li.assistant .text")
    await expect(answer).to_have_text(expected)
    await shot(page, "playground-key")
    await page.reload()
    await expect(page.get_by_label("Model", exact=True).locator("option[value=tiny-gguf]")).to_have_count(1)
    await expect(page.get_by_label("Playground key")).to_have_value(USER)
    await page.get_by_role("button", name="Sign out").click()
    assert await page.evaluate("sessionStorage.length") == 0
    assert refusals_aside(page.errors.messages, 401) == []
