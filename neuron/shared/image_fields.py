"""The field policy of image generation requests (`POST /v1/images/generations`): what each field does here.

OpenAI's request (every field its SDK's `images.generate` sends), and the diffusers knobs cortex adds
(`seed`, `negative_prompt`, `steps`, `guidance_scale`); apart from the schema (`neuron.server.image_schema`)
so that the gateway's field tables (`cortex_gateway.field_tables`) and docs/api.md read it without importing
the neuron's server.
"""

from __future__ import annotations

from neuron.shared.field_policy import FieldPolicy, honoured, ignored, refused

MAX_N = 10  # as OpenAI bounds it
MAX_SIDE = 2048
MIN_SIDE = 64
MAX_PROMPT_CHARS = 4000  # dall-e-3's bound; a CLIP text encoder reads 77 tokens of it
MAX_STEPS = 150

POLICIES = [FieldPolicy("OpenAI images", {
    "model": honoured("an image generation model (`kind: image` in /v1/models): a diffusers text-to-image folder"),
    "prompt": honoured(f"a non-empty string of at most {MAX_PROMPT_CHARS} characters; what the text encoder "
                       "cannot read (past 77 tokens for CLIP) is cut, as diffusers cuts it, and the text read is "
                       "then the answer's `revised_prompt`"),
    "n": honoured(f"1 to {MAX_N} images, generated as one batch; image i is drawn from seed + i"),
    "size": honoured(f"\"WxH\", each side {MIN_SIDE} to {MAX_SIDE} and a multiple of 8 (of the model's own step "
                     "where larger); \"auto\" or absent: the size the model was trained at"),
    "response_format": honoured("`b64_json` (the default here): each image as base64 in `data[].b64_json`; `url` "
                                "is refused: the gateway stores no files"),
    "output_format": honoured("png (the default), jpeg or webp"),
    "seed": honoured("cortex's: an integer from 0 to 2^63-1; the same seed, prompt, size and steps give the same "
                     "image; absent: a random one"),
    "negative_prompt": honoured("cortex's: what the image should not show, where the pipeline takes one (a "
                                "400 names the field where it takes none)"),
    "steps": honoured(f"cortex's: denoising steps, 1 to {MAX_STEPS}; absent: the pipeline's default"),
    "num_inference_steps": honoured("diffusers' name for `steps`; give one of the two"),
    "guidance_scale": honoured("cortex's: classifier-free guidance, 0 to 30; absent: the pipeline's default"),
    "quality": ignored("OpenAI's model tiers (standard, hd, low, high): a diffusers model has one; set `steps` "
                       "for more work per image"),
    "style": ignored("dall-e-3's vivid or natural: no such switch in a diffusers model; say it in the prompt"),
    "user": ignored("an end-user id for a provider's abuse monitoring; nothing here monitors users"),
    "safety_identifier": ignored("an end-user id for a provider's abuse monitoring; nothing here monitors users"),
    "moderation": ignored("OpenAI's content filter level; the operator chooses the models, no filter runs here"),
    "output_compression": ignored("jpeg and webp are written at Pillow's default quality"),
    "background": honoured("`auto` or `opaque`: what every image here is; `transparent` is refused (diffusion "
                           "pipelines draw opaque images)"),
    "stream": refused("images are answered whole; leave stream out"),
    "partial_images": refused("images are answered whole, without partial images; leave it out"),
    "svg": refused("diffusion models draw pixels, not SVG; leave it out"),
    "complexity": refused("an SVG setting; diffusion models draw pixels; leave it out"),
    "frame_count": refused("animations are not generated here; leave it out"),
    "frame_duration_ms": refused("animations are not generated here; leave it out"),
})]
POLICY = POLICIES[0]
