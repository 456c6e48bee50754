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
    """Nodes (health, devices, memory), models (where, status, pinned, in flight), replicas and waiting
    requests per model, and the latest fleet events."""
    from rich.console import Console

    from cortex_cli.render import events_table, models_table, nodes_table, replicas_table

    data = fetch(gateway, admin_key, lambda client: client.status())
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    tables = show(lambda: (nodes_table(data), models_table(data), replicas_table(data), events_table(data)))
    for table in tables:
        console.print(table)


@click.command()
@gateway_option
@admin_key_option
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON.")
@click.option("--disk", "disk_node", metavar="NODE", help="What is on NODE's disk, with sizes, instead.")
def models(gateway, admin_key, as_json, disk_node) -> None:
    """The merged catalog: every model any node has loaded or can load."""
    from rich.console import Console

    from cortex_cli.render import catalog_table, disk_table

    if disk_node:
        status = fetch(gateway, admin_key, lambda client: client.status(refresh=True))
        node = next((n for n in status["nodes"] if n["name"] == disk_node), None)
        if node is None:
            raise click.ClickException(f"no node named {disk_node!r}")
        if as_json:
            click.echo(json.dumps(node.get("disk", []), indent=2))
        else:
            Console().print(show(lambda: disk_table(node)))
        return
    data = fetch(gateway, admin_key, lambda client: client.models())
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        Console().print(show(lambda: catalog_table(data)))
