# ruff: noqa: B018 - every line below is a bare read, the form vulture counts as a use
"""Names vulture reports as unused (make lint, confidence 80) that are used where it cannot see: each says why.

Keep it short: a name belongs here only when the code cannot say it otherwise. Dead code is removed, not
listed.
"""

from types import SimpleNamespace

_ = SimpleNamespace()  # vulture's whitelist idiom: an attribute read on `_` marks that name used

# neuron/engine/tokenizer_pool.py, TokenizerPool.shutdown(cancel_futures=...): a keyword of
# concurrent.futures.Executor.shutdown, which the pool overrides, kept so the override has the base's
# signature (any caller that shuts an Executor down may pass it); ignored: the pool always cancels.
_.cancel_futures
