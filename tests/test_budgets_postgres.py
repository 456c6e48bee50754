"""One budget shared exactly by two gateways on one PostgreSQL (issue 24, item 4): twenty requests at once,
half through each gateway, on a budget with room for five answers; five are answered, fifteen refused,
and the usage both gateways show is the sum of the answers' usage. Skipped, saying why, without
PostgreSQL (tests/postgres_server.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.helpers import http_json, load_models, start_gateway, start_neuron, wait_for
from tests.postgres_server import postgres, postgres_url  # noqa: F401 - fixtures
from tests.test_budgets_gateway import AUTH_TOML, MODEL, billed, chat, make_key, oai, prompt_tokens, usage_of


@contextlib.contextmanager
def two_gateways(tmp_path: Path, models_dir: Path, url: str) -> Iterator[tuple]:
    """One neuron with MODEL loaded and two real gateways, (a, b), keyed by AUTH_TOML on one PostgreSQL."""
    toml = f'{AUTH_TOML}\n[state]\nurl = "{url}"'
    with start_neuron(tmp_path, models_dir, "--cpu-memory-mb", "4000") as neuron:
        load_models(neuron, ({"model": MODEL, "max_in_flight": 4, "max_queue_depth": 64},))
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with start_gateway(tmp_path / "a", {"n1": neuron.url}, extra_toml=toml, state_dir=tmp_path / "sa") as a, \
                start_gateway(tmp_path / "b", {"n1": neuron.url}, extra_toml=toml, state_dir=tmp_path / "sb") as b:
            yield a, b


def test_two_gateways_share_one_budget_exactly(tmp_path, models_dir, postgres_url):  # noqa: F811 - a fixture
    with two_gateways(tmp_path, models_dir, postgres_url) as (a, b):
        cost = prompt_tokens(a) + 8
        budget = 5 * cost + cost // 2
        name, key = make_key(a, budget_tokens=budget, budget_window="1d")
        # b started before any key existed: it serves without keys until its next read of the table.
        wait_for(lambda: http_json("GET", b.url + "/v1/models")[0] == 401, what="gateway b keyed")
        clients = (oai(a, key), oai(b, key))
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(lambda i: chat(clients[i % 2], 8, stream=i % 4 >= 2), range(20)))
        answered = [r for r in results if isinstance(r, int)]
        assert len(answered) == 5, results
        assert all(r.status_code == 429 for r in results if not isinstance(r, int))
        for gateway in (a, b):
            assert billed(usage_of(gateway, name)) == (sum(answered), 5)
        assert sum(answered) <= budget
