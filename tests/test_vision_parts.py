"""Image parts without servers: the address check of the gateway's fetch, the bounds, the translations."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from cortex_gateway.anthropic.translate_request import to_openai
from cortex_gateway.image_fetch import is_public, public_addresses
from cortex_gateway.responses.input_items import normalize_input, to_messages
from neuron.server.openai_schema import parse_chat
from neuron.shared.errors import ApiError
from neuron.shared.image_parts import ImageBounds, check_image, decode_data_url


def png(width: int = 40, height: int = 30, color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` and holds no pixels: only a header reader copes with it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("1.1.1.1", True), ("2001:4860:4860::8888", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False),  # the cloud metadata service
    ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("255.255.255.255", False),
    ("::1", False), ("::", False), ("fe80::1", False), ("fe80::1%eth0", False), ("fc00::1", False),
    ("fd12:3456::1", False), ("ff02::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:8.8.8.8", True),  # v4-mapped: as the v4 address
    ("64:ff9b::7f00:1", False), ("64:ff9b::808:808", True),  # NAT64: as the v4 address it carries
])
def test_only_global_unicast_addresses_are_fetched_from(address, public):
    assert is_public(address) is public


def test_a_name_that_resolves_to_loopback_is_refused_naming_the_address():
    with pytest.raises(ApiError) as err:
        asyncio.run(public_addresses("localhost", 80, "messages[0].content[0].image_url", "http://localhost/a"))
    assert err.value.status == 400 and "resolves to" in err.value.message and "private" in err.value.message


def test_bounds_read_the_header_only_and_name_the_limit():
    image = check_image(png(40, 30), "p", ImageBounds())
    assert (image.width, image.height, image.media_type) == (40, 30, "image/png")
    with pytest.raises(ApiError) as err:
        check_image(png_header(100_000, 100_000), "p", ImageBounds())  # ten gigapixels: never decoded
    assert err.value.status == 413
    with pytest.raises(ApiError) as err:
        decode_data_url(data_url(b"x" * 4000), "p", ImageBounds(max_bytes=1000))
    assert err.value.status == 413 and "1000" not in err.value.message and "MiB" in err.value.message


def test_the_neuron_reads_image_parts_as_processor_parts_in_place():
    req = parse_chat({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": data_url(png()), "detail": "low"}},
        {"type": "text", "text": "b"}]}]})
    assert req.messages[0]["content"] == [{"type": "text", "text": "a"}, {"type": "image"},
                                          {"type": "text", "text": "b"}]
    assert [i.where for i in req.images] == ["messages[0].content[1].image_url"]


def test_anthropic_image_blocks_become_image_url_parts_named_as_sent():
    data = base64.b64encode(png()).decode()
    body = to_openai({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "see"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": data}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]})
    parts = body["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "see"}
    assert parts[1]["image_url"] == {"url": f"data:image/png;base64,{data}"}
    assert parts[1]["cortex_where"] == "messages.0.content.1.source"
    assert parts[2]["image_url"] == {"url": "https://example.com/a.png"}
    with pytest.raises(ApiError) as err:
        to_openai({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": data}}]}]})
    assert "media_type" in err.value.message


def test_responses_input_images_become_image_url_parts():
    items = normalize_input([{"role": "user", "content": [
        {"type": "input_text", "text": "see"}, {"type": "input_image", "image_url": "data:image/png;base64,AA"}]}])
    assert to_messages(items) == [{"role": "user", "content": [
        {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA",
                                                                            "detail": "auto"}}]}]


def test_a_tool_result_s_image_follows_it_in_the_user_turn():
    """A chat tool message carries text only: a screenshot a tool returned comes right after its result."""
    data = base64.b64encode(png()).decode()
    body = to_openai({"model": "m", "max_tokens": 1, "messages": [
        {"role": "user", "content": "take a screenshot"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "done"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}]}]}]})
    tool, user = body["messages"][-2:]
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "done"}
    assert user["role"] == "user" and user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert user["content"][0]["cortex_where"] == "messages.2.content.0.content.1.source"
    with pytest.raises(ApiError) as err:
        to_openai({"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}]}]})
    assert "user turns only" in err.value.message
