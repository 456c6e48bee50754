"""What the gateway has sent where: a bounded map from a request's prefix keys to the node that last served them.

A neuron keeps the prompt of a request it served in cache, so the next request that starts the same way is
cheaper there. The gateway cannot see those caches; it remembers instead what it sent. A chat request's keys
are a chain over its messages: k1 = hash(message 1), k2 = hash(k1, message 2), ... (each message as
canonical JSON, sorted keys), so a key stands for the whole conversation up to that message and the deepest
key found says how many leading messages a node has seen. A completion's prompt is cut into chunks of
`CHUNK_CHARS` characters chained the same way. Session hints a client sends (`X-Session-ID`,
`prompt_cache_key`, `user`, Anthropic's `metadata.user_id`) are keys too, in their own namespace: the node
that last served the session. They are read here from the translated call alone, so every dialect's
translation carries its hints into the chat dialect's fields (`HINT_FIELDS`, which the neurons accept and
ignore): the Anthropic one passes `metadata.user_id` on as `user`, the Responses one `user` and
`prompt_cache_key` as they are. Every chain and hint starts from the model's name (the gateway's, aliases
resolved), so one conversation sent to two models is two sets of keys, as it is two caches.

The map is an LRU of at most `[scheduling] prefix_map_entries` keys, so its memory is bounded by config,
not by traffic (peers' routers grow without bound: vLLM production-stack #687, Dynamo #10774). An entry is
a 64-bit int key and a reference to the node's name (one string per node, shared): measured with tracemalloc
at about 215 bytes per entry in CPython 3.11 (a 100,000-entry map after 1,000,000 distinct inserts holds
21.5 MB, 32 MB at the peak of a resize; see docs/gateway.md). No timestamp is kept per entry: the LRU
order is the recency, and a float and a tuple per entry would add about 80 bytes with nothing to read them.

Bodies are parsed here only when asked: `RequestKeys` reads the body the first time its keys are needed,
which the lifecycle does only when two or more nodes have the model loaded, so the single-node hot path
never parses a body it passes through as bytes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from functools import cached_property

import orjson

CHUNK_CHARS = 256  # a completion prompt's block: small enough to match a shared preamble, large enough to be cheap
SESSION_HEADER = "X-Session-ID"
HINT_FIELDS = ("prompt_cache_key", "user")  # most specific first; the chat dialect's fields, read by name
# Generating routes only: a token count or an embedding leaves no prompt in a cache worth following.
PREFIX_PATHS = ("/v1/chat/completions", "/v1/completions")


def _digest(prev: bytes, block: bytes) -> bytes:
    return hashlib.blake2b(prev + block, digest_size=8).digest()


def model_seed(model: str) -> bytes:
    """Where a model's chains start: the same conversation sent to another model is cached apart."""
    return _digest(b"\x00model", model.encode())


def chain(blocks: Iterable[bytes], seed: bytes = b"") -> list[int]:
    """Chained keys of the blocks: key i stands for blocks 1..i, so equal keys mean equal prefixes."""
    keys, prev = [], seed
    for block in blocks:
        prev = _digest(prev, block)
        keys.append(int.from_bytes(prev, "big"))
    return keys


def hint_key(seed: bytes, kind: str, value: str) -> int:
    """A session hint's key: its own namespace (the 0x00 byte), so it never equals a prefix key by design."""
    return int.from_bytes(_digest(seed + b"\x00hint", f"{kind}\x00{value}".encode()), "big")


def chat_blocks(messages: list) -> list[bytes]:
    return [orjson.dumps(m, option=orjson.OPT_SORT_KEYS) for m in messages]


def prompt_blocks(prompt) -> list[bytes]:
    """A completion prompt's chunks: a string by characters, a list of token ids by CHUNK_CHARS // 4 tokens
    (about as many tokens as the characters make); a batch of prompts has no one prefix, so none."""
    if isinstance(prompt, str):
        return [prompt[i:i + CHUNK_CHARS].encode() for i in range(0, len(prompt), CHUNK_CHARS)]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        step = CHUNK_CHARS // 4
        return [orjson.dumps(prompt[i:i + step]) for i in range(0, len(prompt), step)]
    return []


def request_prefix(path: str, data: dict, seed: bytes = b"") -> list[int]:
    """The chained keys of a parsed request body in the neurons' dialect (chat or completions)."""
    if path == "/v1/chat/completions" and isinstance(data.get("messages"), list):
        return chain(chat_blocks(data["messages"]), seed)
    if path == "/v1/completions":
        return chain(prompt_blocks(data.get("prompt")), seed)
    return []


def request_hints(data: dict, headers: Mapping[str, str], seed: bytes = b"") -> list[int]:
    """The session hints a client sent, most specific first."""
    hints = []
    if header := headers.get(SESSION_HEADER):
        hints.append(hint_key(seed, "session", header))
    for name in HINT_FIELDS:
        if isinstance(value := data.get(name), str) and value:
            hints.append(hint_key(seed, name, value))
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and isinstance(value := metadata.get("user_id"), str) and value:
        hints.append(hint_key(seed, "user", value))  # a chat client's metadata may name its user so too
    return hints


class RequestKeys:
    """One request's prefix keys and hints, parsed from its body the first time they are asked for."""

    def __init__(self, model: str, path: str, body: bytes, headers: Mapping[str, str]):
        self._model, self._path, self._body, self._headers = model, path, body, headers
        self.parsed = False  # whether anything was asked: only then is there something to record

    @cached_property
    def _data(self) -> dict:
        self.parsed = True
        try:
            data = orjson.loads(self._body)
        except orjson.JSONDecodeError:
            return {}
        return data if isinstance(data, dict) else {}

    @cached_property
    def prefix(self) -> list[int]:
        return request_prefix(self._path, self._data, self._seed) if self._path in PREFIX_PATHS else []

    @cached_property
    def hints(self) -> list[int]:
        return request_hints(self._data, self._headers, self._seed) if self._path in PREFIX_PATHS else []

    @cached_property
    def _seed(self) -> bytes:
        return model_seed(self._model)


class PrefixMap:
    """Key -> the node that last served it, at most `entries` keys, the least lately seen dropped first."""

    def __init__(self, entries: int):
        self.entries = entries
        self._nodes: OrderedDict[int, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def enabled(self) -> bool:
        return self.entries > 0

    def record(self, keys: Iterable[int], node: str) -> None:
        """`node` served these keys: it is now the one to remember for each (most recent last)."""
        for key in keys:
            self._nodes[key] = node
            self._nodes.move_to_end(key)
        while len(self._nodes) > self.entries:
            self._nodes.popitem(last=False)

    def depths(self, prefix: list[int]) -> dict[str, int]:
        """Per node, how many leading blocks of `prefix` it was last sent (its deepest key's position)."""
        out: dict[str, int] = {}
        for depth in range(len(prefix), 0, -1):
            node = self._nodes.get(prefix[depth - 1])
            if node is not None and node not in out:
                out[node] = depth
        return out

    def hinted(self, hints: list[int]) -> str | None:
        """The node that last served the first hint known."""
        return next((n for h in hints if (n := self._nodes.get(h)) is not None), None)
