"""Images in a chat body on its way to a neuron: refused for a text-only model, checked, fetched if allowed.

Every dialect's chat (OpenAI's as sent, Anthropic's and Responses' once translated) comes here before
dispatch. A model the catalog knows as text-only gets the clear 400 before anything is placed or
loaded; each image part is bounded in bytes and pixels (`neuron.shared.image_parts`, which the neuron
applies again); an http(s) URL is refused unless `[gateway] image_fetch` is on, and then fetched
(`cortex_gateway.image_fetch`) and forwarded as a data URL. A translation may name a part in its own
dialect (`cortex_where`, taken off here): errors then say `messages.1.content.0` to an Anthropic client.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from cortex_gateway.exchange import InferenceCall
from cortex_gateway.image_fetch import FetchSettings, fetch_image
from cortex_gateway.state import LIFECYCLE
from neuron.shared.http import parse_json
from neuron.shared.image_parts import (
    ImageBounds,
    decode_data_url,
    image_parts,
    is_remote,
    remote_refused,
    text_only,
    url_of,
)
from neuron.shared.protocol import ModelKind

WHERE_KEY = "cortex_where"  # a translation's name for the part, in its client's dialect


async def checked_call(request: web.Request, call: InferenceCall) -> InferenceCall:
    """An OpenAI chat call as sent: the body is read again only if it may hold an image part."""
    if b"image_url" not in call.body:
        return call
    data = parse_json(call.body)
    if not await check_images(request.app, data):
        return call
    return InferenceCall(call.path, call.endpoint, call.model, orjson.dumps(data), call.stream)


async def check_images(app: web.Application, body: dict) -> bool:
    """Check `body`'s image parts in place; True when it changed (a URL fetched, a dialect's name taken off)."""
    parts = list(image_parts(body.get("messages")))
    if not parts:
        return False
    config = app[LIFECYCLE].config
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    names = [part.pop(WHERE_KEY, None) or where for where, part in parts]
    changed = any(name != where for name, (where, _) in zip(names, parts, strict=True))
    kind = app[LIFECYCLE].kind_of(config.resolve_alias(model))
    if kind is not None and kind != ModelKind.VISION:
        raise text_only(model, names[0])
    bounds = ImageBounds(int(config.image_max_mb * 2**20), int(config.image_max_megapixels * 1e6))
    for name, (_, part) in zip(names, parts, strict=True):
        url = url_of(part, name)
        if not is_remote(url):
            await asyncio.to_thread(decode_data_url, url, name, bounds)  # off the loop: megabytes of base64
            continue
        if not config.image_fetch:
            raise remote_refused(name)
        settings = FetchSettings(int(config.image_fetch_max_mb * 2**20), config.image_fetch_timeout_s, bounds)
        part["image_url"] = {**_detail(part), "url": await fetch_image(url, name, settings)}
        changed = True
    return changed


def _detail(part: dict) -> dict:
    value = part.get("image_url")
    return {"detail": value["detail"]} if isinstance(value, dict) and "detail" in value else {}
