"""The names a load may ask for as its backend, apart from the node protocol so the CLI can offer them.

`cortex load --backend` builds its choices from these when the command line is parsed, and
`cortex --help` and shell completion must stay instant, so this module imports nothing: the protocol
module (which brings aiohttp in with the errors) and the gateway's config read the same tuples.
"""

BACKENDS = ("auto", "torch", "llama.cpp", "llama-server", "vllm", "sglang")
EXTERNAL_ENGINES = ("llama-server", "vllm", "sglang")  # run as child processes; `auto` never picks one
