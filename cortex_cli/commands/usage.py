"""`cortex usage [NAME]`: each key's tokens and what is left of its budget, a thin call to /admin/usage."""

from __future__ import annotations

import json
from urllib.parse import quote

import click

from cortex_cli.options import admin_key_option, gateway_option, show


def _complete_key(ctx, param, incomplete: str) -> list[str]:
    """The keys' names, as `cortex keys` completes them."""
    from cortex_cli.commands.keys import complete_key

    return complete_key(ctx, param, incomplete)


def _count(value) -> str:
    return "-" if value is None else str(value)


def keys_table(data: dict):
    from rich.table import Table

    from cortex_cli.render import plain

    table = Table(title="Budgets", title_justify="left")
    for col in ("key", "window", "period", "rolls at", "budget", "settled", "reserved", "left", "tpm left"):
        table.add_column(col)
    for k in data["keys"]:
        tpm = k.get("tpm")
        table.add_row(plain(k["key"] + (" (revoked)" if k.get("revoked") else "")), plain(k["budget_window"] or "-"),
                      plain(k["period"]), plain(k["rolls_at"]), _count(k["budget_tokens"]), str(k["settled_tokens"]),
                      str(k["reserved_tokens"]), _count(k["budget_left"]),
                      "-" if not tpm else f"{tpm['remaining']}/{tpm['limit']}")
    return table


def usage_table(data: dict):
    from rich.table import Table

    from cortex_cli.render import plain

    table = Table(title="Usage by key, model and period", title_justify="left")
    for col in ("key", "model", "period", "requests", "prompt", "completion", "total", "reserved"):
        table.add_column(col)
    for r in data["usage"]:
        table.add_row(plain(r["key"]), plain(r["model"]), plain(r["period"] + (" *" if r["current"] else "")),
                      str(r["requests"]), str(r["prompt_tokens"]), str(r["completion_tokens"]), str(r["total_tokens"]),
                      str(r["reserved_tokens"]))
    return table


@click.command()
@click.argument("name", required=False, shell_complete=_complete_key)
@gateway_option
@admin_key_option
@click.option("--json", "as_json", is_flag=True, help="Print the usage as JSON, for scripts.")
def usage(name, gateway, admin_key, as_json) -> None:
    """Tokens per key (or NAME's alone), by model and budget period (* the current one), and each key's
    budget: settled, reserved by requests in flight, and left until its window rolls."""
    from rich.console import Console

    from cortex_cli.commands.status import fetch

    path = "/admin/usage" + ("" if name is None else "?key=" + quote(name, safe=""))
    data = fetch(gateway, admin_key, lambda client: client._call("GET", path))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    for table in show(lambda: (keys_table(data), usage_table(data))):
        console.print(table)
