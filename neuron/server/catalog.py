"""What a neuron can load: its models directory, files under its model roots, and hub ids.

A path is loaded only when it resolves (symlinks followed) inside the models
directory or a configured model root: an open port must not be a way to make
the node read any file it can. A path outside, a missing file and a file that
is no model get the same 404, so answers do not reveal what exists (but for a
symlink inside a root to a model outside them all: the operator made it, and
is told what to change, 422 model_outside_roots); answers
show paths relative to their root, never absolute ones. A model loaded by a
path outside the models directory gets the id `file:RELATIVE/PATH`, which no
catalog id can take (`scan` skips names with a colon), so it cannot shadow
a catalog model. Also sizes a model before loading it, so a load that
cannot fit is refused before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from neuron.pulls.names import split_parts
from neuron.pulls.sources import parse_source
from neuron.server.diffusers_layout import is_pipeline, pipeline_weight_files
from neuron.server.gguf_projector import is_projector, projector_for
from neuron.shared.errors import ApiError
from neuron.shared.protocol import ModelKind

_SPLIT_GGUF = re.compile(r"-0*1-of-\d+$")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Compute buffers, scratch space, the CUDA context: measured overhead beyond weights and KV cache.
OVERHEAD_MB = 32.0
# Without an explicit context_size, a model gets its trained context up to this: a 128k-token
# KV cache would dwarf the weights of most models.
DEFAULT_MAX_CONTEXT = 8192
# Architectures whose weights generate text; a Hugging Face folder naming none of them is an encoder.
GENERATIVE_ARCHITECTURES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
RANK_POOLING = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK (gguf.PoolingType.RANK): a reranker's score head
# Kinds that keep no cache between requests: one context stands for a batch's activations.
CACHELESS = (ModelKind.EMBEDDING, ModelKind.RERANK, ModelKind.TRANSCRIPTION)
TRANSCRIPTION_ARCHITECTURES = ("WhisperForConditionalGeneration",)  # speech to text (Whisper, distil-whisper)


@dataclass(frozen=True)
class ModelRef:
    id: str
    format: str  # "gguf" | "hf"
    path: str  # local path, or a hub id when `remote`
    size_mb: float
    remote: bool = False
    shown_path: str = ""  # relative to its root: what clients may see
    kind: ModelKind = ModelKind.GENERATION


def scan(models_dir: Path) -> list[ModelRef]:
    """Every loadable model directly inside `models_dir`, sorted by id."""
    if not models_dir.is_dir():
        return []
    refs = [ref for entry in sorted(models_dir.iterdir())
            if ":" not in entry.name and (ref := _ref_for(entry, entry.name)) is not None]
    return sorted(refs, key=lambda r: r.id)


def _ref_for(path: Path, shown: str) -> ModelRef | None:
    if path.is_file() and path.suffix == ".gguf":
        stem = path.stem
        if re.search(r"-\d+-of-\d+$", stem) and not _SPLIT_GGUF.search(stem):
            return None  # later parts of a split GGUF: llama.cpp opens them through the first
        if is_projector(path):  # a vision model's multimodal projector: served with its model, never alone
            return None
        projector = projector_for(path)
        size = _size_mb(path) + (projector.stat().st_size / 2**20 if projector is not None else 0.0)
        return ModelRef(gguf_id(path.name), "gguf", str(path), size, shown_path=shown,
                        kind=ModelKind.VISION if projector is not None else gguf_kind(path))
    if path.is_dir() and (path / "config.json").is_file() and _weight_files(path):
        return ModelRef(path.name, "hf", str(path), _size_mb(path), shown_path=shown, kind=hf_kind(path))
    if is_pipeline(path) and (weights := pipeline_weight_files(path)):  # diffusers' layout: text to image
        return ModelRef(path.name, "hf", str(path), sum(p.stat().st_size for p in weights) / 2**20,
                        shown_path=shown, kind=ModelKind.IMAGE)
    return None


def hf_kind(path: Path) -> ModelKind:
    """A reranker: a sequence classifier with one label (a cross-encoder, as sentence-transformers' CrossEncoder
    saves one). An embedding model: a sentence-transformers folder (`modules.json`: its maker says how to pool
    it, whatever the architecture), or a config naming only encoder architectures (BertModel, ...)."""
    try:
        config = json.loads((path / "config.json").read_text())
        architectures = [str(a) for a in config.get("architectures") or []]
    except (OSError, ValueError, AttributeError, TypeError):
        config, architectures = {}, []
    if any(a in TRANSCRIPTION_ARCHITECTURES for a in architectures):
        return ModelKind.TRANSCRIPTION
    if is_cross_encoder(config, architectures):
        return ModelKind.RERANK
    if reads_images(path, config, architectures):
        return ModelKind.VISION
    if (path / "modules.json").is_file():
        return ModelKind.EMBEDDING
    if architectures and not any(a.endswith(GENERATIVE_ARCHITECTURES) for a in architectures):
        return ModelKind.EMBEDDING
    return ModelKind.GENERATION


def reads_images(path: Path, config: dict, architectures: list[str]) -> bool:
    """A vision chat model (image-text-to-text, as AutoModelForImageTextToText loads it): a generative
    architecture with a vision tower in its config and an image processor saved beside it."""
    return (isinstance(config.get("vision_config"), dict) and any(a.endswith(GENERATIVE_ARCHITECTURES)
                                                                  for a in architectures)
            and any((path / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")))


def is_cross_encoder(config: dict, architectures: list[str]) -> bool:
    """One relevance score per (query, document) pair: a `*ForSequenceClassification` head of one label.
    transformers reads the labels from `id2label` (or `num_labels`), and takes two when neither is given."""
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return False
    labels = config.get("id2label")
    count = len(labels) if isinstance(labels, dict) and labels else config.get("num_labels", 2)
    return count == 1


def gguf_kind(path: Path) -> ModelKind:
    """A rerank GGUF: its pooling is rank (llama.cpp's LLAMA_POOLING_TYPE_RANK, which convert_hf_to_gguf.py
    writes for cross-encoders). An embedding GGUF: any other pooling (written for embedding models only) or
    non-causal attention (BERT and kin). A vision GGUF is told by its projector file (`gguf_projector`)."""
    try:
        meta = gguf_metadata(path)
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the load itself
        return ModelKind.GENERATION
    arch = meta.get("general.architecture", "llama")
    pooling = meta.get(f"{arch}.pooling_type")
    if pooling == RANK_POOLING:
        return ModelKind.RERANK
    if pooling is not None or meta.get(f"{arch}.attention.causal") is False:
        return ModelKind.EMBEDDING
    return ModelKind.GENERATION


def gguf_id(file_name: str) -> str:
    """A GGUF file's id: its stem, without the part number of a split file's first part."""
    return _SPLIT_GGUF.sub("", Path(file_name).stem)


def _weight_files(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]


def _size_mb(path: Path) -> float:
    if path.is_file():
        parts = split_parts(path.name) or [path.name]  # by exact name: a glob reached other models' files
        return sum(p.stat().st_size for name in parts if (p := path.parent / name).is_file()) / 2**20
    return sum(p.stat().st_size for p in _weight_files(path)) / 2**20


def resolve(name: str, models_dir: Path, roots: tuple[Path, ...] = ()) -> ModelRef:
    """An id in the models dir, a path inside the models dir or a model root, or a hub id ("org/name")."""
    for ref in scan(models_dir):
        if ref.id == name:
            return ref
    if (ref := _path_ref(name, models_dir, roots)) is not None:
        return ref
    if (link := _link_out_of_roots(name, models_dir, roots)) is not None:  # a path, though "org/name" in form
        raise _outside_roots(*link, models_dir)
    if (source := parse_source(name)) is not None:  # on the hub: the registry pulls it first
        return ModelRef(str(source), "gguf" if source.is_gguf else "hf", str(source), 0.0, remote=True,
                        shown_path=str(source))
    raise ApiError(404, "not_found_error",
                   f"model {name!r} is not in this node's models directory or model roots; "
                   "GET /models/available lists what this node can load", code="model_not_found", param="model")


def _path_ref(name: str, models_dir: Path, roots: tuple[Path, ...]) -> ModelRef | None:
    """A model at a path that resolves inside an allowed root; None for anything else, alike."""
    try:
        candidate = Path(name).expanduser()
        resolved = (candidate if candidate.is_absolute() else models_dir / candidate).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return None
    for root in (models_dir, *roots):
        try:
            relative = resolved.relative_to(root.resolve())
        except (OSError, ValueError):
            continue
        if not relative.parts:
            return None
        ref = _ref_for(resolved, relative.as_posix())
        if ref is None:
            return None
        if root == models_dir and len(relative.parts) == 1:
            return ref  # the catalog model itself, under its own id
        return dataclasses.replace(ref, id="file:" + relative.with_suffix("").as_posix()
                                   if ref.format == "gguf" else "file:" + relative.as_posix())
    return None


def _link_out_of_roots(name: str, models_dir: Path, roots: tuple[Path, ...]) -> tuple[Path, Path] | None:
    """(the link, its root) when `name` is a symlink inside an allowed root to a model outside all of them.

    Only then is the answer not the common 404: the operator made the link and it names a model, so
    saying so tells a client nothing of the disk (a direct entry is listed by /models/available
    anyway), while the common answer sent operators looking for a file that is there."""
    try:
        candidate = Path(name).expanduser()
        candidate = candidate if candidate.is_absolute() else models_dir / candidate
        if candidate.name in ("", ".", "..") or not candidate.is_symlink():
            return None
        link, target = candidate.parent.resolve() / candidate.name, candidate.resolve()
        allowed = [(root.resolve(), root) for root in (models_dir, *roots)]
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return None
    if any(target.is_relative_to(real) for real, _ in allowed) or _ref_for(target, "") is None:
        return None
    return next(((link, root) for real, root in allowed if link.is_relative_to(real)), None)


def _outside_roots(link: Path, root: Path, models_dir: Path) -> ApiError:
    shown = link.relative_to(root.resolve()).as_posix()
    where = "models directory" if root == models_dir else "model root"
    # A direct entry of the models directory is a catalog model: its id loads it (the operator's own link).
    listed = [r.id for r in scan(models_dir) if Path(r.path).name == shown] if root == models_dir else []
    by_id = f", or load it by its id {listed[0]!r}" if listed else ""
    return ApiError(422, "invalid_request_error",
                    f"{shown!r} in this node's {where} is a symlink whose target is outside the models directory "
                    "and every model root, so a load by path will not read it; start the neuron with --model-root "
                    "naming the directory that holds the target (model_roots in neuron.toml), or copy the model "
                    f"into the models directory{by_id}", code="model_outside_roots", param="model")


def default_parallel(on_gpu: bool) -> int:
    """Decoding slots when a load names none: 8 on a GPU, where a batch costs little more than one
    sequence; 4 on a CPU, where each sequence in a step costs real compute and more only adds latency."""
    return 8 if on_gpu else 4


def estimate_mb(ref: ModelRef, context_size: int | None, on_cpu: bool, parallel: int | None = None,
                config: dict | None = None) -> float:
    """Weights + KV cache + overhead, in MiB; what the load will need on its devices.

    Every slot may hold a whole context of KV cache (llama.cpp allocates them up front; torch's
    batch and the caches its slots keep for prefix reuse grow to as much), so `parallel` contexts
    are counted. `config` is a Hugging Face model's config.json when it is not on disk yet (a pull)."""
    slots = 1 if ref.kind in CACHELESS else parallel or default_parallel(not on_cpu)
    if ref.format == "gguf":
        weights, kv = ref.size_mb, slots * _gguf_kv_mb(Path(ref.path), context_size)
    else:
        config = config if config is not None else _hf_config(ref)
        if isinstance(config.get("text_config"), dict):  # a vision model: its language model holds the cache
            config = {**config, **config["text_config"]}
        weights = ref.size_mb * _dtype_growth(config, on_cpu)
        kv = slots * _kv_mb(config.get("num_hidden_layers", 0), config.get("num_key_value_heads")
                            or config.get("num_attention_heads", 0), _head_dim(config),
                            context_size or min(config.get("max_position_embeddings", 2048), DEFAULT_MAX_CONTEXT),
                            4 if on_cpu else 2)
        if ref.kind == ModelKind.TRANSCRIPTION:
            kv = _whisper_mb(config, 4 if on_cpu else 2)
    return weights + kv + OVERHEAD_MB


def _whisper_mb(config: dict, elem_bytes: int) -> float:
    """One Whisper request beyond its weights: the decoder's self- and cross-attention caches (its positions and
    the encoder's) and one encoder layer's attention scores over a 30-second window."""
    d, layers = config.get("d_model", 0), config.get("decoder_layers", 0)
    source, target = config.get("max_source_positions", 1500), config.get("max_target_positions", 448)
    heads = config.get("encoder_attention_heads", 0)
    return (2 * layers * d * (source + target) + heads * source * source + 4 * source * d) * elem_bytes / 2**20


def _kv_mb(layers: int, kv_heads: int, head_dim: int, ctx: int, elem_bytes: int) -> float:
    return 2 * layers * kv_heads * head_dim * ctx * elem_bytes / 2**20


def _head_dim(config: dict) -> int:
    heads = config.get("num_attention_heads") or 1
    return config.get("head_dim") or config.get("hidden_size", 0) // heads


def _hf_config(ref: ModelRef) -> dict:
    if ref.remote:
        return {}
    try:
        return json.loads((Path(ref.path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _dtype_growth(config: dict, on_cpu: bool) -> float:
    # On the CPU we load float32 (half-precision matmuls are slow there), doubling 16-bit checkpoints.
    stored = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    return 2.0 if on_cpu and stored in ("float16", "bfloat16") else 1.0


def _gguf_kv_mb(path: Path, context_size: int | None) -> float:
    try:
        meta = gguf_metadata(path)
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the load itself
        return 0.0
    arch = meta.get("general.architecture", "llama")
    layers = meta.get(f"{arch}.block_count", 0)
    heads = meta.get(f"{arch}.attention.head_count", 1) or 1
    kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
    head_dim = meta.get(f"{arch}.embedding_length", 0) // heads
    return _kv_mb(layers, kv_heads, head_dim, context_size or default_context(path), 2)


def default_context(path: Path) -> int:
    """The context a GGUF model gets when the load does not name one."""
    try:
        meta = gguf_metadata(path)
        trained = meta.get(f"{meta.get('general.architecture', 'llama')}.context_length", 2048)
    except Exception:  # noqa: BLE001 - llama.cpp will report an unreadable file itself
        trained = 2048
    return min(int(trained), DEFAULT_MAX_CONTEXT)


def gguf_metadata(path: Path) -> dict:
    """Scalar metadata of a GGUF file (arrays such as the vocabulary are skipped).

    Cached by the file's identity: the gateway's poller asks for estimates every few seconds.
    """
    st = path.stat()
    return _gguf_metadata(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=256)
def _gguf_metadata(path: str, _mtime_ns: int, _size: int) -> dict:
    import gguf

    reader = gguf.GGUFReader(path, "r")
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key not in ("tokenizer.ggml.model",):
            continue
        try:
            value = field.contents()
        except Exception:  # noqa: BLE001 - exotic field types are not needed here
            continue
        if not isinstance(value, list):
            out[key] = value
    return out
