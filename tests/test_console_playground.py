"""The console's playground for the other kinds, in a real browser (tests/browser.py) against real processes:
a rerank model ranks the documents as `/v1/rerank` does, an image model draws a PNG of the asked size into
the page, and the real all-MiniLM-L6-v2 (from PyPI) embeds a text into its 384 dimensions."""

from __future__ import annotations

import base64
import io

import pytest

from tests.browser import browser_page, shot, sign_in
from tests.embedding_models import MINILM, NO_MINILM
from tests.helpers import http_json, make_tiny, one_node_fleet

playwright_api = pytest.importorskip("playwright.async_api", reason="needs playwright (pip install playwright)")
expect = playwright_api.expect

DOCUMENTS = ["Paris is the capital of France.", "Bananas are yellow.", "The Louvre is in Paris."]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    models = tmp_path_factory.mktemp("playground-models")
    make_tiny(models / "ranker", "hf", "--kind", "rerank")
    make_tiny(models / "painter", "hf", "--kind", "image")
    load = ["ranker", "painter"]
    if MINILM is not None:
        (models / "minilm").symlink_to(MINILM)
        load.append("minilm")
    with one_node_fleet(tmp_path_factory.mktemp("playground"), models, "--cpu-memory-mb", "6000",
                        load=tuple(load)) as (gateway, _, _):
        yield gateway


@pytest.fixture
async def page():
    async with browser_page() as view:
        yield view


async def test_rerank_ranks_as_the_api_does(fleet, page):
    await sign_in(page, fleet, "")
    await page.get_by_label("Model", exact=True).select_option("ranker")
    await page.get_by_label("Query").fill("Where is the Louvre?")
    await page.get_by_label("Documents, one a line").fill("\n".join(DOCUMENTS))
    await page.get_by_role("button", name="Rerank").click()
    status, expected = http_json("POST", fleet.url + "/v1/rerank", {"model": "ranker", "query": "Where is the Louvre?",
                                                                     "documents": DOCUMENTS})
    assert status == 200
    ranked = page.get_by_role("list", name="Ranked documents").locator(".text")
    await expect(ranked).to_have_text([DOCUMENTS[r["index"]] for r in expected["results"]])
    assert page.errors.messages == []


async def test_an_image_is_drawn_into_the_page_at_the_asked_size(fleet, page):
    from PIL import Image

    await sign_in(page, fleet, "")
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
    await sign_in(page, fleet, "")
    await page.get_by_label("Model", exact=True).select_option("painter")
    await page.get_by_label("Image prompt").fill("x")
    await page.get_by_label("Size").fill("65x64")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#pg-error")).to_contain_text("the request failed: ")
    await expect(page.locator("#pg-error")).to_contain_text("size")
    assert [m for m in page.errors.messages if "status of 400" not in m] == []  # the refusal's own line


@pytest.mark.skipif(MINILM is None, reason=NO_MINILM)
async def test_a_real_embedding_model_embeds_into_its_dimensions(fleet, page):
    await sign_in(page, fleet, "")
    await page.get_by_label("Model", exact=True).select_option("minilm")
    await page.get_by_label("Text to embed").fill("The Louvre is in Paris.")
    await page.get_by_role("button", name="Embed").click()
    status, expected = http_json("POST", fleet.url + "/v1/embeddings", {"model": "minilm",
                                                                         "input": "The Louvre is in Paris."})
    head = ", ".join(f"{x:.4f}" for x in expected["data"][0]["embedding"][:8])
    await expect(page.locator("#pg-embed-out")).to_have_text(f"384 dimensions: [{head}, ...]")
    assert page.errors.messages == []
