"""`cortex status` and `cortex models`: what the fleet is doing, as tables or JSON."""

from __future__ import annotations

import json

import click

from cortex_cli.options import admin_key_option, gateway_option, run, show


def fetch(gateway: str, admin_key: str | None, call):
    """One admin call (`call(client)`), failures turned into one line and a non-zero exit."""
    from cortex_cli.client import AdminClient

    async def go():
        async with AdminClient(gateway, admin_key) as client:
            return await call(client)

    return run(go())


@click.command()
@gateway_option
@admin_key_option
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's status as JSON, for scripts.")
def status(gateway, admin_key, as_json) -> None:
    """Nodes (health, devices, memory) and models (where, status, pinned, in flight)."""
    from rich.console import Console

    from cortex_cli.render import models_table, nodes_table

    data = fetch(gateway, admin_key, lambda client: client.status())
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    tables = show(lambda: (nodes_table(data), models_table(data)))
    for table in tables:
        console.print(table)


@click.command()
@gateway_option
@admin_key_option
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
def models(gateway, admin_key, as_json) -> None:
    """The merged catalogue: every model any node has loaded or can load."""
    from rich.console import Console

    from cortex_cli.render import catalogue_table

    data = fetch(gateway, admin_key, lambda client: client.models())
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        Console().print(show(lambda: catalogue_table(data)))
