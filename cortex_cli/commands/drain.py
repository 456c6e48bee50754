"""`cortex drain NODE` and `cortex undrain NODE`: take a node out of placement to upgrade it, then back.

Draining stops new requests and cold loads from going to the node, and lets the
requests it is serving finish; `--wait` returns once none is left, so a script
can drain, wait, upgrade and restart the node, and undrain it, dropping nothing.
"""

from __future__ import annotations

import asyncio
import time

import click

from cortex_cli.commands.status import fetch
from cortex_cli.options import admin_key_option, complete_node, gateway_option


async def _drain_and_wait(client, node: str, wait: bool, timeout: float) -> dict:
    answer = await client.drain(node, True)
    deadline = time.monotonic() + timeout
    while wait and answer.get("in_flight", 0) > 0:
        if time.monotonic() > deadline:
            raise click.ClickException(f"{node} still has {answer['in_flight']} requests in flight after "
                                       f"{timeout:g}s; it stays drained")
        await asyncio.sleep(0.5)
        status = await client.status()
        answer = next((n for n in status["nodes"] if n["name"] == node), answer)
    return answer


@click.command()
@click.argument("node", shell_complete=complete_node)
@click.option("--wait", is_flag=True, help="Return once the node's in-flight requests have finished.")
@click.option("--timeout", type=click.FloatRange(min=0), default=600, show_default=True,
              help="With --wait: give up after this many seconds (the node stays drained).")
@gateway_option
@admin_key_option
def drain(node, wait, timeout, gateway, admin_key) -> None:
    """Stop new placements on NODE; its in-flight requests finish."""
    answer = fetch(gateway, admin_key, lambda client: _drain_and_wait(client, node, wait, timeout))
    left = answer.get("in_flight", 0)
    click.echo(f"{node} is draining: new requests go elsewhere; "
               + ("nothing in flight, ready for maintenance" if not left else f"{left} requests still in flight"))


@click.command()
@click.argument("node", shell_complete=complete_node)
@gateway_option
@admin_key_option
def undrain(node, gateway, admin_key) -> None:
    """Let NODE take new requests again."""
    fetch(gateway, admin_key, lambda client: client.drain(node, False))
    click.echo(f"{node} takes new requests again")
