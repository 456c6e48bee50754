"""The web console (`GET /ui`) in a real browser: Debian's Chromium driven by Playwright, against a real
`cortex serve` over a real `cortex neuron` with tiny models loaded, one of them named as an attack
(`<img src=x onerror=alert(1)>`): it must show as text, with no element made of it and no dialog.

Set CORTEX_CONSOLE_SHOTS=DIR to keep each view's screenshot there (docs/console/ holds the ones the
docs show, taken so)."""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.request

import pytest

from tests.browser import browser_page, shot, sign_in
from tests.fake_hub import FakeHub, hf_env
from tests.helpers import NO_EOS, free_port, http_json, one_node_fleet, start_gateway, start_neuron, wait_for

playwright_api = pytest.importorskip("playwright.async_api", reason="needs playwright (pip install playwright)")
expect = playwright_api.expect

ADMIN, USER = "console-admin-key", "console-user-key"
HOSTILE = "<img src=x onerror=alert(1)>"
AUTH = f'[auth]\nadmin_keys = ["{ADMIN}"]\nkeys = ["{USER}"]'
LOOKUP = "tiny-lookup"  # the tiny GGUF again, loaded with prompt lookup (speculative decoding)
CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


@pytest.fixture(scope="module")
def console_models(tmp_path_factory, models_dir):
    models = tmp_path_factory.mktemp("console-models")
    (models / "tiny-gguf.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    (models / f"{HOSTILE}.gguf").symlink_to(models_dir / "tiny-short.gguf")
    (models / f"{LOOKUP}.gguf").symlink_to(models_dir / "tiny-gguf.gguf")
    return models


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, console_models):
    with one_node_fleet(tmp_path_factory.mktemp("console"), console_models, "--cpu-memory-mb", "4000",
                        load=("tiny-gguf", HOSTILE, {"model": LOOKUP, "speculative": {"method": "ngram"}}),
                        extra_toml=AUTH) as (gateway, neuron, _):
        yield gateway, neuron


@pytest.fixture
async def page():
    async with browser_page() as view:
        yield view


def not_the_admin_probe(messages: list[str]) -> list[str]:
    """The page's errors less the browser's line for the 401 a plain key gets: sign-in asks /admin/status first
    (an admin key sees the fleet), then /v1/models."""
    return [m for m in messages if "status of 401" not in m]


def loaded_on(neuron) -> set[str]:
    with urllib.request.urlopen(neuron.url + "/models") as answer:
        return {m["id"] for m in json.load(answer)["models"]}


def test_the_page_loads_without_a_key_under_a_policy_that_forbids_inline_script(fleet):
    gateway, _ = fleet
    with urllib.request.urlopen(gateway.url + "/ui") as answer:
        html, policy = answer.read().decode(), answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert '<script src="/ui/console.js"' in html and "<script>" not in html  # no inline script
    assert re.search(r"\son\w+=", html) is None and "style=" not in html  # no inline handler or style
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(gateway.url + "/ui/secrets.txt")
    assert missing.value.code == 404


async def test_an_admin_sees_the_fleet_and_a_hostile_name_as_text(fleet, page):
    gateway, _ = fleet
    await sign_in(page, gateway, ADMIN)
    node = page.get_by_role("article", name="node n1")
    await expect(node.locator(".state")).to_have_text("up")
    await expect(node.get_by_role("rowheader", name="tiny-gguf", exact=True)).to_be_visible()
    await expect(node.get_by_role("rowheader", name=HOSTILE, exact=True)).to_be_visible()  # its text, shown
    await expect(page.get_by_role("meter", name="memory used on cpu")).to_be_visible()
    await expect(page.get_by_role("button", name=f"Unload {HOSTILE} from n1")).to_be_visible()
    assert await page.locator("main img").count() == 0  # the name made no element
    await shot(page, "fleet")
    assert page.errors.messages == []


async def test_a_wrong_key_is_refused_in_words_and_a_plain_key_reads_the_models(fleet, page):
    gateway, _ = fleet
    await sign_in(page, gateway, "not-a-key")
    await expect(page.get_by_role("alert")).to_contain_text("that key was refused")
    await page.get_by_label("API key").fill(USER)
    await page.get_by_role("button", name="Sign in").click()
    catalog = page.get_by_role("table", name="Models this key may use")
    await expect(catalog.get_by_role("rowheader", name=HOSTILE, exact=True)).to_be_visible()
    await expect(page.get_by_role("button", name="Unload", exact=False)).to_have_count(0)
    await expect(page.get_by_role("article")).to_have_count(0)  # no fleet for a plain key
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API key")).to_be_focused()
    assert not_the_admin_probe(page.errors.messages) == []


async def test_unload_asks_first_and_really_unloads_on_the_neuron(fleet, page):
    gateway, neuron = fleet
    await sign_in(page, gateway, ADMIN)
    unload = page.get_by_role("button", name=f"Unload {HOSTILE} from n1")
    await unload.click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text(f"Really unload {HOSTILE} from n1?")
    await dialog.get_by_role("button", name="Cancel").click()
    assert HOSTILE in loaded_on(neuron)  # cancelled: nothing happened
    await unload.click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("rowheader", name=HOSTILE, exact=True)).to_have_count(0)
    assert HOSTILE not in loaded_on(neuron) and "tiny-gguf" in loaded_on(neuron)
    await page.get_by_label("Load a model on n1").select_option(HOSTILE)  # and back, from the node's disk
    await page.get_by_role("button", name="Load the chosen model on n1").click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("rowheader", name=HOSTILE, exact=True).first).to_be_visible()
    assert HOSTILE in loaded_on(neuron)
    assert page.errors.messages == []


async def test_pin_and_drain_ask_first_and_act_on_every_gateway_view(fleet, page):
    """Pin and Drain through the admin API (what `cortex status` then shows), and the key kept for the tab: a
    reload stays signed in."""
    import openai

    gateway, _ = fleet
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=USER, max_retries=0)
    client.chat.completions.create(model="tiny-gguf", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    await sign_in(page, gateway, ADMIN)
    requests = page.get_by_role("table", name="This gateway's last API requests")
    answered = requests.get_by_role("row").filter(has_text="tiny-gguf").filter(has_text="200").first
    await expect(answered).to_contain_text("POST /v1/chat/completions")
    await expect(answered).to_contain_text("n1")
    await expect(answered).to_contain_text(" + 2")  # its completion tokens
    refused = requests.get_by_role("row").filter(has_text="no-such-model").first
    await expect(refused).to_contain_text("404")
    used = page.get_by_role("table", name="Tokens per key and model").get_by_role("row").filter(has_text="tiny-gguf")
    await expect(used.first).to_be_visible()  # the key's usage of the model, from the state database
    assert int(await used.first.locator("td").nth(1).text_content()) >= 1  # its requests
    figures = page.get_by_role("table", name="Per model").get_by_role("row").filter(
        has=page.get_by_role("rowheader", name="tiny-gguf", exact=True))
    await expect(figures).to_contain_text("s")  # its TTFT p50, from the request just made
    assert int(await figures.locator("td").first.text_content()) >= 1  # requests in the last minute
    await page.get_by_role("button", name="Pin tiny-gguf on n1").click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="tiny-gguf", exact=True)).first
    await expect(row).to_contain_text("loaded, pinned")
    await page.reload()
    await page.get_by_role("button", name="Drain n1").click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("article", name="node n1").locator(".state")).to_have_text("draining")
    with urllib.request.urlopen(urllib.request.Request(gateway.url + "/admin/status",
                                                       headers={"Authorization": f"Bearer {ADMIN}"})) as answer:
        status = json.load(answer)
    assert status["pins"].get("tiny-gguf") == ["n1"] and status["nodes"][0]["draining"] is True
    await page.get_by_role("button", name="Undrain n1").click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    await expect(page.get_by_role("article", name="node n1").locator(".state")).to_have_text("up")
    await page.get_by_role("button", name="Unpin tiny-gguf on n1").click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm").click()
    await expect(row).not_to_contain_text("pinned")
    events = page.get_by_role("table", name="The fleet's newest events")
    for kind in ("pin", "drain", "undrain", "unpin"):  # each action, in the activity view's event log
        await expect(events.get_by_role("rowheader", name=kind, exact=True)).to_have_count(1)
    await expect(events.get_by_role("row").nth(1)).to_contain_text("unpin")  # newest first
    await shot(page, "activity")
    assert page.errors.messages == []


async def test_a_speculative_models_row_shows_its_drafts(fleet, page):
    """After a request that drafted, the prompt-lookup model's row shows its draft tokens and the share accepted,
    as /admin/status's `drafts` has them (`cortex top`'s draft column); a model that never drafted, a dash."""
    import openai

    gateway, neuron = fleet
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=USER, max_retries=0, timeout=300)
    client.chat.completions.create(model=LOOKUP, messages=[{"role": "user", "content": CODE * 3}], max_tokens=32,
                                   temperature=0, logit_bias=NO_EOS)
    load = next(m for m in http_json("GET", neuron.url + "/health")[1]["models"] if m["id"] == LOOKUP)
    drafted, accepted = load["drafted"], load["draft_accepted"]
    assert drafted > 0, "a prompt-lookup model drafts over a repeating prompt"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    wait_for(lambda: http_json("GET", gateway.url + "/admin/status", headers=admin)[1]["nodes"][0]["drafts"]
             .get(LOOKUP) == {"drafted": drafted, "accepted": accepted}, what="the gateway to poll the drafts")
    await sign_in(page, gateway, ADMIN)
    node = page.get_by_role("article", name="node n1")
    row = node.get_by_role("row").filter(has=page.get_by_role("rowheader", name=LOOKUP, exact=True))
    percent = math.floor(100 * accepted / drafted + 0.5)  # Math.round's halves, up
    await expect(row.locator('td[data-label="Drafts"]')).to_have_text(f"{drafted} drafted, {percent}% accepted")
    plain = node.get_by_role("row").filter(has=page.get_by_role("rowheader", name="tiny-gguf", exact=True))
    await expect(plain.locator('td[data-label="Drafts"]')).to_have_text("-")
    assert page.errors.messages == []


async def test_the_playground_streams_the_models_answer_with_its_figures(fleet, page):
    """A plain key chats: the streamed answer is the one the openai client gets for the same messages (greedy),
    the second turn carries the first, and the answer's time to first token and decode rate are shown."""
    import openai

    gateway, _ = fleet
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=USER, max_retries=0)
    await sign_in(page, gateway, USER)
    await page.get_by_label("Model", exact=True).select_option("tiny-gguf")
    await page.get_by_label("Temperature").fill("0")
    await page.get_by_label("Max tokens").fill("12")
    await page.get_by_label("System prompt").fill("Be brief.")
    history = [{"role": "system", "content": "Be brief."}]
    for question in ("Hello there", "And then?"):
        history.append({"role": "user", "content": question})
        expected = client.chat.completions.create(model="tiny-gguf", messages=history, temperature=0,
                                                  max_tokens=12).choices[0].message.content
        await page.get_by_label("Message").fill(question)
        await page.get_by_role("button", name="Send").click()
        await expect(page.locator("#pg-stats")).to_contain_text("answered in")
        answers = page.get_by_role("list", name="Conversation").locator("li.assistant .text")
        await expect(answers.last).to_have_text(expected)
        history.append({"role": "assistant", "content": expected})
    await expect(page.get_by_role("list", name="Conversation").get_by_role("listitem")).to_have_count(4)
    await expect(page.locator("#pg-stats")).to_contain_text("first token after")
    await expect(page.locator("#pg-stats")).to_contain_text("12 tokens")
    await shot(page, "playground")
    assert not_the_admin_probe(page.errors.messages) == []


async def test_a_killed_node_shows_as_down(tmp_path, console_models, page):
    with start_neuron(tmp_path, console_models, name="n2") as neuron, \
            start_gateway(tmp_path, {"n2": neuron.url}, extra_toml=AUTH) as gateway:
        await sign_in(page, gateway, ADMIN)
        state = page.get_by_role("article", name="node n2").locator(".state")
        await expect(state).to_have_text("up")
        await expect(page.locator("#fleet-updated")).to_contain_text("live")  # pushed: /admin/status/stream
        neuron.kill()  # a crash: no goodbye on its health stream
        await expect(state).to_have_text("down")
        await shot(page, "node-down")
    assert page.errors.messages == []


async def test_a_gateway_restart_loses_the_live_view_and_it_comes_back(tmp_path, console_models, page):
    """The stream ends with its gateway: the page says so, keeps trying, and is live again once a gateway
    listens there again (its key still in the tab)."""
    port = free_port()
    with start_neuron(tmp_path, console_models, name="n4") as neuron:
        with start_gateway(tmp_path, {"n4": neuron.url}, extra_toml=AUTH, port=port) as gateway:
            await sign_in(page, gateway, ADMIN)
            await expect(page.locator("#fleet-updated")).to_contain_text("live")
        await expect(page.locator("#fleet-error")).to_contain_text("the live view was lost")
        await expect(page.locator("#fleet-updated")).to_have_text("not live: reconnecting")
        with start_gateway(tmp_path, {"n4": neuron.url}, extra_toml=AUTH, port=port):
            await expect(page.locator("#fleet-error")).to_have_text("")
            await expect(page.get_by_role("article", name="node n4").locator(".state")).to_have_text("up")
            await expect(page.locator("#fleet-updated")).to_contain_text("live")
    refused = [m for m in page.errors.messages if "ERR_CONNECTION_REFUSED" not in m]  # the tries meanwhile
    assert refused == []


async def test_a_pull_shows_its_progress(tmp_path, models_dir, page):
    """A pull under way (a fake hub on loopback trickling a file listed at 64 MiB) shows as a progress bar with
    its phase and bytes, on the node that pulls."""
    source = "cortex/slow-GGUF:Q4_K_M"
    with FakeHub() as hub:
        hub.add_repo("cortex/slow-GGUF", {"slow-Q4_K_M.gguf": models_dir / "tiny-gguf.gguf"})
        hub.list_size("slow-Q4_K_M.gguf", 64 * 2**20)
        hub.serve_endless("slow-Q4_K_M.gguf", trickle=True)
        with start_neuron(tmp_path, tmp_path / "models", "--cpu-memory-mb", "4000", name="n3",
                          env=hf_env(hub.url, tmp_path / "hf-home")) as neuron, \
                start_gateway(tmp_path, {"n3": neuron.url}, extra_toml=AUTH) as gateway:
            started = urllib.request.Request(gateway.url + "/admin/pull", method="POST",
                                             data=json.dumps({"node": "n3", "source": source}).encode(),
                                             headers={"Authorization": f"Bearer {ADMIN}",
                                                      "Content-Type": "application/json"})
            with urllib.request.urlopen(started) as answer:
                assert answer.status == 202
            await sign_in(page, gateway, ADMIN)
            bar = page.get_by_role("progressbar", name=f"pull of {source}")
            await expect(bar).to_have_attribute("max", str(64 * 2**20))
            await expect(bar).to_have_attribute("value", re.compile(r"^[1-9]"))  # bytes have come
            await expect(page.get_by_role("article", name="node n3")).to_contain_text(f"{source} (downloading)")
            await shot(page, "pull")
            neuron.kill()  # the download never ends: no graceful stop to wait for
    assert page.errors.messages == []


async def test_on_a_phone_in_dark_mode_nothing_scrolls_sideways(fleet, page):
    """Readable on a phone (tables become stacked rows) and dark when the system is."""
    gateway, _ = fleet
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.emulate_media(color_scheme="dark")
    await sign_in(page, gateway, ADMIN)
    await expect(page.get_by_role("article", name="node n1").locator(".state")).to_have_text("up")
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)", background  # the dark scheme's
    await shot(page, "phone-dark")
    await page.get_by_role("button", name="Sign out").focus()  # the keyboard reaches the controls
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("API key")).to_be_focused()
    assert page.errors.messages == []
