"""Text-to-image models on torch: a diffusers pipeline folder (model_index.json), opened with diffusers'
`AutoPipelineForText2Image`, which picks the pipeline class the folder names (Stable Diffusion, SDXL, ...).

The whole denoising loop of one job runs as one call on the device thread (`neuron.engine.images`), so
one image job holds the device at a time; the model's admission queues the rest (`slots` is 1). Each step
calls back into the job, which logs its progress and, when the client has left, sets the pipeline's
`_interrupt` (diffusers' own way to stop a loop early from `callback_on_step_end`).
"""

from __future__ import annotations

import inspect

from neuron.engine.backends.base import Backend, BackendSpec, BackendUnavailable
from neuron.engine.backends.torch_place import torch_place

DEFAULT_SIDE = 512  # a pipeline whose config says no sample size (none of the common ones)


def _import_diffusers():
    try:
        import diffusers
    except ImportError as exc:
        raise BackendUnavailable("image models need diffusers and Pillow: pip install 'cortex-fleet[images]'") from exc
    return diffusers


class DiffusersImageBackend(Backend):
    name = "torch"
    slots = 1  # one image job per device at a time: a batch of n images already fills it
    drawing = None  # the ImageJob on the device now (neuron.engine.images): its step shows in /health

    def __init__(self, spec: BackendSpec):
        if spec.gguf_file:
            raise ValueError("torch opens image models from diffusers folders (model_index.json)")
        place = torch_place(spec)
        diffusers = _import_diffusers()
        self.torch, self.device, torch = place.torch, place.device, place.torch
        # Half precision on a GPU (bfloat16 where it runs: fp16 VAEs overflow to black images); float32 on a CPU.
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if place.gpus else torch.float32
        diffusers.utils.logging.disable_progress_bar()  # a load's bars are not log lines; the registry logs it
        place.transformers.utils.logging.disable_progress_bar()
        self.pipe = diffusers.AutoPipelineForText2Image.from_pretrained(str(spec.path), dtype=dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.to(self.device)
        self.takes = frozenset(inspect.signature(self.pipe.__call__).parameters)
        self.tokenizer = getattr(self.pipe, "tokenizer", None)
        self.context_size = getattr(self.tokenizer, "model_max_length", 0) or 77
        self.vocab_size = len(self.tokenizer) if self.tokenizer is not None else 0
        self.scale = int(getattr(self.pipe, "vae_scale_factor", 8) or 8)
        self.default_size = self._default_side()

    def _default_side(self) -> int:
        """The side the model was trained at: its denoiser's sample size in latents, times the VAE's scale."""
        denoiser = getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)
        sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
        if isinstance(sample, (list, tuple)):
            sample = sample[0]
        return int(sample) * self.scale if isinstance(sample, int) else DEFAULT_SIDE

    @property
    def pipeline_name(self) -> str:
        return type(self.pipe).__name__

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """The prompt's ids as the first text encoder reads them, uncut (the pipeline cuts at context_size)."""
        if self.tokenizer is None:
            return []
        return self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""

    def draw(self, job) -> list:
        """Run one job's pipeline (`neuron.engine.images.ImageJob`): n PIL images, image i from seed + i."""
        generators = [self.torch.Generator("cpu").manual_seed(job.seed + i) for i in range(job.n)]
        kwargs = {"prompt": job.prompt, "height": job.height, "width": job.width, "num_images_per_prompt": job.n,
                  "generator": generators, "output_type": "pil", "callback_on_step_end": job.on_step}
        for key, value in (("negative_prompt", job.negative_prompt), ("num_inference_steps", job.steps),
                           ("guidance_scale", job.guidance_scale)):
            if value is not None:
                kwargs[key] = value
        with self.torch.inference_mode():
            return self.pipe(**kwargs).images

    def default_steps(self) -> int:
        default = inspect.signature(self.pipe.__call__).parameters.get("num_inference_steps")
        return default.default if default is not None and isinstance(default.default, int) else 50

    def detokenizer(self, skip_special: bool = True):
        raise RuntimeError("an image model does not generate text")  # refused before this, by the registry

    def is_end(self, token: int) -> bool:
        return False

    def embed(self, inputs):
        raise RuntimeError("an image model does not embed")  # refused before this, by the registry

    def close(self) -> None:
        del self.pipe
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
