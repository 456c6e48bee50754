"""Images in chat messages: `image_url` parts as data URLs, decoded and bounded before a model sees them.

The gateway checks every part of a chat body it forwards (and turns an http(s) URL it may fetch into a
data URL first, `cortex_gateway.image_fetch`), and the neuron checks again what it is sent, with the
same code: so a client of either gets the same 400 or 413 naming the part and the limit, and the
neuron never fetches anything. Pixels are read from the image's header (Pillow opens lazily), so an
image of a billion pixels is refused without being decoded.

Light, as the gateway imports it: Pillow is imported on first use.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from neuron.shared.errors import ApiError, bad_request

DEFAULT_MAX_MB = 20.0  # decoded bytes of one image (OpenAI's own limit per image is 20 MB)
DEFAULT_MAX_MEGAPIXELS = 50.0
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.ASCII)


@dataclass(frozen=True)
class ImageBounds:
    """What one image may be: decoded bytes and pixels (width x height)."""

    max_bytes: int = int(DEFAULT_MAX_MB * 1024 * 1024)
    max_pixels: int = int(DEFAULT_MAX_MEGAPIXELS * 1_000_000)


@dataclass
class ImageInput:
    """One image of a request, checked: where it was sent, its bytes and its size."""

    where: str
    data: bytes
    width: int
    height: int
    media_type: str


def image_parts(messages: Any) -> Iterator[tuple[str, dict]]:
    """(`messages[i].content[j].image_url`, the part) for each image_url part of OpenAI chat messages."""
    if not isinstance(messages, list):
        return
    for i, msg in enumerate(messages):
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                yield f"messages[{i}].content[{j}].image_url", part


def url_of(part: dict, where: str) -> str:
    """The part's URL: `{"image_url": {"url": ..., "detail"?}}` (a bare string is accepted too)."""
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise bad_request(f"{where}.url: required, a data URL (data:image/png;base64,...)", param=where)
    detail = value.get("detail") if isinstance(value, dict) else None
    if detail not in (None, "auto", "low", "high"):
        raise bad_request(f"{where}.detail: expected 'auto', 'low' or 'high', got {detail!r}", param=where)
    return url


def is_remote(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def remote_refused(where: str) -> ApiError:
    """An http(s) URL where the gateway may not fetch (or at the neuron, which never fetches).

    The fix is said in the client's dialect: an Anthropic url source (named `....source` by its
    translation) has no data URLs, its inline form is a base64 source."""
    inline = ("as a base64 source ({type: base64, media_type, data})" if where.endswith(".source")
              else "as a data URL (data:image/png;base64,...)")
    return bad_request(f"{where}: http(s) image URLs are not fetched here (the operator has not set [gateway] "
                       f"image_fetch = true); send the image inline {inline}",
                       param=where, code="image_url_not_allowed")


def decode_data_url(url: str, where: str, bounds: ImageBounds) -> ImageInput:
    """A `data:image/...;base64,` URL's image, bounded in bytes before decoding and in pixels by its header."""
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        kind = "an http(s) URL" if is_remote(url) else "not a data URL"
        raise bad_request(f"{where}: expected a base64 data URL (data:image/png;base64,...), got {kind}",
                          param=where, code="invalid_image")
    payload = url[match.end():]
    if len(payload) * 3 // 4 > bounds.max_bytes + 2:  # refused before decoding: base64 is 4 chars per 3 bytes
        raise too_large(where, f"{_mb(len(payload) * 3 // 4)} MiB", f"{_mb(bounds.max_bytes)} MiB of image data")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where}: the data URL's base64 does not decode", param=where,
                          code="invalid_image") from None
    return check_image(data, where, bounds)


def check_image(data: bytes, where: str, bounds: ImageBounds) -> ImageInput:
    """Bytes that must be a PNG, JPEG, GIF or WebP within `bounds`; only the header is read."""
    if len(data) > bounds.max_bytes:
        raise too_large(where, f"{_mb(len(data))} MiB", f"{_mb(bounds.max_bytes)} MiB of image data")
    width, height, fmt = _header(data, where)
    if width * height > bounds.max_pixels:
        raise too_large(where, f"{width}x{height} ({width * height / 1e6:.1f} megapixels)",
                        f"{bounds.max_pixels / 1e6:g} megapixels")
    return ImageInput(where, data, width, height, FORMATS[fmt])


def _header(data: bytes, where: str) -> tuple[int, int, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header, decodes nothing
            width, height, fmt = img.width, img.height, img.format
    except Image.DecompressionBombError:  # Pillow's own bomb guard, past 2x its MAX_IMAGE_PIXELS
        raise too_large(where, "more pixels than Pillow will open", "the pixel limit") from None
    except (UnidentifiedImageError, OSError, ValueError):
        fmt = None
    if fmt not in FORMATS:
        raise bad_request(f"{where}: the data is not an image this server reads (PNG, JPEG, GIF or WebP)",
                          param=where, code="invalid_image")
    return width, height, fmt


def too_large(where: str, size: str, limit: str) -> ApiError:
    return ApiError(413, "invalid_request_error", f"{where}: the image is too large: {size}, over the limit of "
                    f"{limit}; send a smaller image (scale it down, or compress it as JPEG)",
                    code="image_too_large", param=where)


def to_data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def text_only(model: str, where: str) -> ApiError:
    """The 400 for an image sent to a model that reads text only (the wording clients already met here)."""
    return ApiError(400, "invalid_request_error", f"Invalid content type. image_url is only supported by certain "
                    f"models: model {model!r} is text-only. Pick a vision model from /v1/models (one whose "
                    f"`kind` is `vision`), or send text parts only. ({where})",
                    code="unsupported_content", param=where)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}"
