"""Validation of image generation requests into typed objects; the field policy is `neuron.shared.image_fields`.

What can be checked without the model is checked here (the size's form and bounds, n, steps); what depends
on the pipeline (its size step, whether it takes a negative prompt) is checked by `neuron.engine.images`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from neuron.shared.errors import bad_request
from neuron.shared.fields import opt_float, opt_int, req_str, require_object
from neuron.shared.image_fields import MAX_N, MAX_PROMPT_CHARS, MAX_SIDE, MAX_STEPS, MIN_SIDE, POLICY

SIZE = re.compile(r"(\d{1,5})x(\d{1,5})")
FORMATS = ("png", "jpeg", "webp")
MAX_SEED = 2**63 - 1


@dataclass
class ImageRequest:
    model: str
    prompt: str
    n: int = 1
    size: tuple[int, int] | None = None  # (width, height); None: the model's own
    output_format: str = "png"
    seed: int | None = None  # None: a random one
    negative_prompt: str | None = None
    steps: int | None = None  # None: the pipeline's default
    guidance_scale: float | None = None


def parse_image_request(body: Any) -> ImageRequest:
    data = require_object(body)
    POLICY.check(data)
    prompt = req_str(data, "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise bad_request(f"prompt: at most {MAX_PROMPT_CHARS} characters, got {len(prompt)}; shorten it",
                          param="prompt")
    check_response_format(data.get("response_format"))
    check_background(data.get("background"))
    negative = data.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise bad_request(f"negative_prompt: expected a string, got {type(negative).__name__}", param="negative_prompt")
    return ImageRequest(model=req_str(data, "model"), prompt=prompt,
                        n=opt_int(data, "n", minimum=1, maximum=MAX_N) or 1,
                        size=parse_size(data.get("size")), output_format=parse_format(data.get("output_format")),
                        seed=opt_int(data, "seed", minimum=0, maximum=MAX_SEED), negative_prompt=negative or None,
                        steps=parse_steps(data),
                        guidance_scale=opt_float(data, "guidance_scale", minimum=0, maximum=30))


def check_response_format(value: Any) -> None:
    if value is None or value == "b64_json":
        return
    if value == "url":
        raise bad_request("response_format: url is not served: the gateway stores no files to link to; send "
                          "response_format b64_json (the default here) and decode data[].b64_json",
                          param="response_format", code="unsupported_parameter")
    raise bad_request(f"response_format: expected b64_json, got {value!r}", param="response_format")


def check_background(value: Any) -> None:
    if value in (None, "auto", "opaque"):
        return
    if value == "transparent":
        raise bad_request("background: transparent is not served: diffusion pipelines draw opaque images; send "
                          "auto or opaque, or leave it out", param="background", code="unsupported_parameter")
    raise bad_request(f"background: expected auto or opaque, got {value!r}", param="background")


def parse_size(value: Any) -> tuple[int, int] | None:
    """(width, height) from "WxH"; None for "auto" or absent (the model's own size)."""
    if value is None or value == "auto":
        return None
    found = SIZE.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise bad_request(f"size: expected \"WIDTHxHEIGHT\" (such as \"512x512\") or \"auto\", got {value!r}",
                          param="size")
    width, height = int(found[1]), int(found[2])
    for side in (width, height):
        if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
            raise bad_request(f"size: each side must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE}, got {value!r}",
                              param="size")
    return width, height


def parse_format(value: Any) -> str:
    if value is None:
        return "png"
    if value not in FORMATS:
        raise bad_request(f"output_format: expected one of {', '.join(FORMATS)}, got {value!r}", param="output_format")
    return value


def parse_steps(data: dict) -> int | None:
    """`steps` or diffusers' `num_inference_steps`: one of the two."""
    steps = opt_int(data, "steps", minimum=1, maximum=MAX_STEPS)
    other = opt_int(data, "num_inference_steps", minimum=1, maximum=MAX_STEPS)
    if steps is not None and other is not None and steps != other:
        raise bad_request("steps and num_inference_steps: the same setting given twice, with different values; "
                          "give one", param="steps")
    return steps if steps is not None else other
