"""`cortex top`'s keys panel (issue 24, item 7): a row per key from /admin/usage, budget and TPM left;
no panel for a gateway without keys. The rows pure, then the dashboard over a real gateway."""

from __future__ import annotations

import asyncio

from cortex_cli.top.data import key_rows
from tests.helpers import one_node_fleet
from tests.test_budgets_gateway import ADMIN, AUTH_TOML, USER, make_key, oai

USAGE = {"keys": [{"key": "alice", "budget_tokens": 1000, "budget_window": "1d", "period": "2026-12-02",
                   "settled_tokens": 120, "reserved_tokens": 30, "budget_left": 850,
                   "tpm": {"limit": 600, "remaining": 570, "reset_s": 3.0}},
                  {"key": "[bold]bob", "budget_tokens": None, "budget_window": None, "period": "2026-12",
                   "settled_tokens": 5, "reserved_tokens": 0, "budget_left": None, "tpm": None}],
         "usage": [{"key": "alice", "current": True, "requests": 3}, {"key": "alice", "current": False, "requests": 9},
                   {"key": "[bold]bob", "current": True, "requests": 1}]}


def test_key_rows():
    rows = [tuple(cell.plain for cell in row) for row in key_rows(USAGE)]
    assert rows == [("alice", "1d", "2026-12-02", "3", "120", "30", "850 of 1000", "570 of 600"),
                    ("[bold]bob", "-", "2026-12", "1", "5", "0", "-", "-")]  # a name is text, never markup


async def test_top_shows_a_row_per_key(tmp_path, models_dir):
    from cortex_cli.top.app import make_top_app
    from tests.test_cli import wait_until

    with one_node_fleet(tmp_path, models_dir, load=("tiny-gguf",), extra_toml=AUTH_TOML) as (gateway, _, _):
        name, key = make_key(gateway, budget_tokens=5000, budget_window="1d")
        oai(gateway, key).chat.completions.create(model="tiny-gguf", messages=USER, max_tokens=2)
        app = make_top_app(gateway.url, ADMIN, interval=0.3)
        async with app.run_test(size=(150, 40)) as pilot:
            table = app.query_one("#keys")
            await wait_until(pilot, lambda: table.row_count == 1)
            assert table.has_class("visible")
            assert str(table.get_row_at(0)[0]) == name
            await pilot.press("q")
        await asyncio.sleep(0)
