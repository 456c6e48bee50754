"""Which flags a model's `engine_args` may pass to an external engine, and why the others are refused.

The neuron owns what an engine listens on (host, port, keys, network peers), what it serves (the
model, its name, its context and slots), where it runs (devices), what it reads and writes (files)
and whether it runs code from outside (remote model code, plugins, tools). A flag that sets any of
these is refused by name, saying what to do instead. Every other flag must be on its engine's list
of flags known to be safe (sampling, batching, cache, placement and performance), so a flag nobody
has looked at, one a newer engine adds included, is refused too; docs/engines.md lists them.

Both spellings are read, `--flag value` and `--flag=value`, with every alias; a long flag is
compared with `_` read as `-`, as vLLM's parser does. Every word that starts with `-` (a negative
number aside) is checked as a flag wherever it stands, so no flag can hide as the value of the one
before it, whatever that one's arity. Pure and light: the neuron's load route, its neuron.toml and
the gateway's models file all use it, and the gateway may import it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from neuron.shared.errors import bad_request

DOCS = "docs/engines.md (\"Which engine_args pass\")"

WHY = {
    "listen": "the engine listens, without keys, on a loopback port the neuron picks, and only the neuron "
              "talks to it; remove it (clients reach the model through the neuron)",
    "model": "the engine serves the model the load names, under its id; load that model instead",
    "context": "the neuron sizes each sequence's context; set the load's context_size instead",
    "slots": "the neuron sizes the engine's slots, and its admission follows them; set the load's parallel "
             "instead",
    "devices": "the engine sees the load's devices only; choose them with the load's devices",
    "files": "it names a file or folder for the engine to read or write, and an engine touches only the "
             "files the neuron gives it; remove it (a model's template and settings belong in its folder)",
    "code": "it runs code from outside the engine (remote model code, plugins, tools, programs), which "
            "cortex never lets an engine do; remove it",
}


@dataclass(frozen=True)
class FlagTable:
    """One engine's flags: those the neuron owns (flag -> a key of WHY), those it lets through, and
    the values allowed for a few whose other values would reach past the neuron."""

    owned: dict[str, str]
    allowed: frozenset[str]
    choices: dict[str, tuple[str, ...]]


def _owned(**groups: str) -> dict[str, str]:
    return {flag: why for why, words in groups.items() for flag in words.split()}


LLAMA_SERVER = FlagTable(
    owned=_owned(
        listen="--host --port --reuse-port --api-key --api-key-file --api-prefix --ssl-key-file --ssl-cert-file "
               "--rpc",
        model="-m --model -mu --model-url -dr --docker-repo -hf -hfr --hf-repo -hff --hf-file -hft --hf-token "
              "-a --alias --lora --lora-scaled --control-vector --control-vector-scaled -mm --mmproj -mmu "
              "--mmproj-url -md --model-draft --spec-draft-model -hfd -hfrd --hf-repo-draft --spec-draft-hf "
              "--models-dir --models-preset",
        context="-c --ctx-size",
        slots="-np --parallel",
        devices="-dev --device -devd --device-draft --spec-draft-device -mmdev --mmproj-device",
        files="--path --log-file --chat-template-file --grammar-file -jf --json-schema-file -lcs "
              "--lookup-cache-static -lcd --lookup-cache-dynamic --slot-save-path --media-path --ui-config-file "
              "--webui-config-file --log-prompts-dir",
        code="--tools --tools-runtime --mcp-servers-config --mcp-servers-json -ag --agent --ui-mcp-proxy "
             "--webui-mcp-proxy --video-ffmpeg-dir",
    ),
    allowed=frozenset("""
        -t --threads -tb --threads-batch -C --cpu-mask -Cr --cpu-range --cpu-strict --prio --poll
        -Cb --cpu-mask-batch -Crb --cpu-range-batch --cpu-strict-batch --prio-batch --poll-batch --threads-http --numa
        -b --batch-size -ub --ubatch-size -cb --cont-batching -nocb --no-cont-batching
        -kvu --kv-unified -no-kvu --no-kv-unified -sps --slot-prompt-similarity --keep -to --timeout
        -ctk --cache-type-k -ctv --cache-type-v -fa --flash-attn -kvo --kv-offload -nkvo --no-kv-offload --swa-full
        --cache-reuse --cache-prompt --no-cache-prompt -cram --cache-ram --context-shift --no-context-shift
        -ctxcp --ctx-checkpoints --swa-checkpoints --mlock --no-mmap
        -ngl --gpu-layers --n-gpu-layers -sm --split-mode -ts --tensor-split -mg --main-gpu -cmoe --cpu-moe
        -ncmoe --n-cpu-moe -ot --override-tensor --repack -nr --no-repack --op-offload --no-op-offload -fit --fit
        --samplers --sampler-seq --sampling-seq -s --seed --ignore-eos --temp --temperature --top-k --top-p --min-p
        --top-nsigma --top-n-sigma --xtc-probability --xtc-threshold --typical --typical-p --repeat-last-n
        --repeat-penalty --presence-penalty --frequency-penalty --dry-multiplier --dry-base --dry-allowed-length
        --dry-penalty-last-n --dry-sequence-breaker --dynatemp-range --dynatemp-exp --mirostat --mirostat-lr
        --mirostat-ent -l --logit-bias -n --predict --n-predict --grammar -j --json-schema
        --rope-scaling --rope-scale --rope-freq-base --rope-freq-scale --yarn-orig-ctx --yarn-ext-factor
        --yarn-attn-factor --yarn-beta-slow --yarn-beta-fast
        --jinja --no-jinja --chat-template --chat-template-kwargs --reasoning-format -rea --reasoning
        --reasoning-budget --prefill-assistant --no-prefill-assistant -sp --special --spm-infill
        --embedding --embeddings --pooling --embd-normalize --override-kv --check-tensors -e --escape --no-escape
        -v --verbose --log-verbose -lv --verbosity --log-verbosity --log-disable --log-colors --log-prefix
        --no-log-prefix --log-timestamps --no-log-timestamps --metrics --no-slots --perf --no-perf
        --warmup --no-warmup --no-webui
    """.split()),
    choices={},
)

VLLM = FlagTable(
    owned=_owned(
        listen="--host --port --uds --api-key --headless --data-parallel-address -dpa --data-parallel-rpc-port -dpp "
               "--ssl-keyfile --ssl-certfile --ssl-ca-certs --kv-transfer-config --kv-events-config "
               "--otlp-traces-endpoint --tool-server",
        model="--model --served-model-name --tokenizer --hf-config-path --revision --code-revision "
              "--tokenizer-revision --load-format --download-dir --model-loader-extra-config --speculative-config "
              "--lora-modules --hf-token --hf-overrides",
        context="--max-model-len",
        slots="--max-num-seqs",
        devices="--device",
        files="--chat-template --allowed-local-media-path --log-config-file --config",
        code="--trust-remote-code --worker-cls --worker-extension-cls --middleware --tool-parser-plugin "
             "--reasoning-parser-plugin --logits-processors --scheduler-cls",
    ),
    allowed=frozenset("""
        -tp --tensor-parallel-size -pp --pipeline-parallel-size --distributed-executor-backend
        --enable-expert-parallel --disable-custom-all-reduce --max-parallel-loading-workers
        --dtype -q --quantization --enforce-eager --max-seq-len-to-capture --disable-sliding-window
        --disable-cascade-attn --rope-scaling --rope-theta --override-attention-dtype --seed --max-logprobs
        --logprobs-mode --generation-config --override-generation-config --limit-mm-per-prompt
        --block-size --gpu-memory-utilization --swap-space --kv-cache-dtype --num-gpu-blocks-override
        --enable-prefix-caching --no-enable-prefix-caching --prefix-caching-hash-algo --cpu-offload-gb
        --calculate-kv-scales --max-num-batched-tokens --max-num-partial-prefills --max-long-partial-prefills
        --long-prefill-token-threshold --cuda-graph-sizes --scheduling-policy --enable-chunked-prefill
        --no-enable-chunked-prefill --async-scheduling --preemption-mode
        --enable-auto-tool-choice --tool-call-parser --reasoning-parser --chat-template-content-format
        --guided-decoding-backend --disable-log-stats --disable-log-requests --enable-log-requests --max-log-len
        --uvicorn-log-level --disable-uvicorn-access-log --enable-prompt-tokens-details --enable-force-include-usage
    """.split()),
    # Ray spreads a model over nodes (docs/engines.md); an executor class by name would be code. A
    # generation config other than the model's own or vLLM's defaults is a folder.
    choices={"--distributed-executor-backend": ("ray", "mp", "uni"), "--generation-config": ("auto", "vllm")},
)

SGLANG = FlagTable(
    owned=_owned(
        listen="--host --port --nccl-port --dist-init-addr --nccl-init-addr --api-key --tool-server",
        model="--model-path --model --tokenizer-path --served-model-name --revision --load-format --download-dir "
              "--model-loader-extra-config --lora-paths --speculative-draft-model-path",
        context="--context-length",
        slots="--max-running-requests",
        devices="--device --base-gpu-id --gpu-id-step",
        files="--chat-template --completion-template --file-storage-path --crash-dump-folder --config "
              "--delete-ckpt-after-loading",
        code="--trust-remote-code --enable-custom-logit-processor --custom-weight-loader",
    ),
    allowed=frozenset("""
        --tp-size --tensor-parallel-size --pp-size --pipeline-parallel-size --dtype --quantization --kv-cache-dtype
        --mem-fraction-static --max-total-tokens --max-prefill-tokens --chunked-prefill-size --schedule-policy
        --schedule-conservativeness --page-size --stream-interval --random-seed --disable-radix-cache
        --disable-cuda-graph --cuda-graph-max-bs --enable-torch-compile --torch-compile-max-bs --enable-mixed-chunk
        --attention-backend --sampling-backend --grammar-backend --reasoning-parser --tool-call-parser --log-level
        --log-requests --enable-metrics --show-time-cost --allow-auto-truncate --skip-server-warmup
        --enable-cache-report --watchdog-timeout
    """.split()),
    choices={},
)

TABLES = {"llama-server": LLAMA_SERVER, "vllm": VLLM, "sglang": SGLANG}
_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def refusal(engine: str, args: Sequence[str], first: int = 0) -> str | None:
    """Why `args` may not be passed to `engine` (`[i]: ...`, for the caller to prefix with where they
    came from; `first` numbers the first word), or None when every flag in them is allowed."""
    table = TABLES[engine]
    for i in range(len(args)):
        if (problem := _word_problem(engine, table, args, i)) is not None:
            return f"[{first + i}]: {problem}"
    return None


def _word_problem(engine: str, table: FlagTable, args: Sequence[str], i: int) -> str | None:
    word = args[i]
    if "\0" in word:
        return "contains a NUL character"
    if not is_flag(word):
        return None if i else f"{word!r} is not a flag; engine_args are flags, each followed by its value if any"
    name, eq, inline = word.partition("=")
    if (problem := _flag_problem(engine, table, name)) is not None:
        return problem
    allowed = table.choices.get(key(name))
    value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
    if allowed is not None and value not in allowed:
        return f"{name} takes one of {', '.join(allowed)} here, not {value!r}"
    return None


def check_engine_args(engine: str, args: Sequence[str]) -> None:
    """A 400 naming the first refused flag of a load's engine_args; nothing when all may pass."""
    if (problem := refusal(engine, args)) is not None:
        raise bad_request(f"engine_args{problem}", param="engine_args", code="engine_flag_refused")


def _flag_problem(engine: str, table: FlagTable, name: str) -> str | None:
    flag = key(name)
    if flag in table.owned:
        return f"{name} is set by the neuron, not by engine_args: {WHY[table.owned[flag]]}"
    if flag not in table.allowed:
        return (f"{name} is not one of the {engine} flags cortex passes on (sampling, batching, cache, placement "
                f"and performance flags, listed in {DOCS}); remove it, or ask for it to be reviewed and listed")
    return None


def is_flag(word: str) -> bool:
    return word.startswith("-") and _NUMBER.fullmatch(word) is None


def key(name: str) -> str:
    """A flag as the tables spell it: a long flag with `_` read as `-` (vLLM's parser reads it so)."""
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def command_flags(words: Sequence[str]) -> list[str]:
    """The engine flags in an [engines] command line: what follows its program, the `-m MODULE` of a
    Python launcher (`python -m sglang.launch_server`) and its subcommand words (`vllm serve`)."""
    rest = list(words[1:])
    if Path(words[0]).name.startswith("python") and rest[:1] == ["-m"]:
        rest = rest[2:]
    first = next((i for i, word in enumerate(rest) if is_flag(word)), len(rest))
    return rest[first:]
