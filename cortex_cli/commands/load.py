"""`cortex load NODE MODEL` and `cortex unload NODE MODEL`, with a progress display while loading."""

from __future__ import annotations

import asyncio
import time

import click

from cortex_cli.commands.status import fetch
from cortex_cli.options import admin_key_option, complete_model, complete_node, gateway_option


def _devices(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected GPU indices such as 0,1", param_hint="--devices") from None


async def _load_with_progress(client, node: str, model: str, **kwargs) -> tuple[dict, float]:
    """Start the load, and while it runs show elapsed time and the phase the neuron reports."""
    from rich.console import Console

    console = Console(stderr=True)
    started = time.monotonic()
    task = asyncio.create_task(client.load(node, model, **kwargs))
    with console.status(f"loading {model} on {node}") as spinner:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            phase = await _phase(client, node, model)
            spinner.update(f"loading {model} on {node}: {phase or 'starting'} ({time.monotonic() - started:.1f}s)")
    return task.result(), time.monotonic() - started


async def _phase(client, node: str, model: str) -> str | None:
    try:
        status = await client.status(refresh=True, timeout=2)
    except Exception:  # noqa: BLE001 - progress is best effort; the load itself reports errors
        return None
    for n in status["nodes"]:
        if n["name"] == node:
            for m in n["models"]:
                if m["id"] == model or m.get("path", "").endswith(model):
                    return m.get("phase") or m.get("status")
    return None


@click.command()
@click.argument("node", shell_complete=complete_node)
@click.argument("model", shell_complete=complete_model)
@click.option("--pin", is_flag=True, help="Never evict it from NODE; recorded in the models file.")
@click.option("--devices", metavar="0,1", help="GPU indices on NODE to place it on.")
@click.option("--backend", type=click.Choice(["auto", "torch", "llama.cpp"]), default=None)
@gateway_option
@admin_key_option
def load(node, model, pin, devices, backend, gateway, admin_key) -> None:
    """Load MODEL on NODE and report its measured memory and load time."""
    info, seconds = fetch(gateway, admin_key, lambda client: _load_with_progress(
        client, node, model, pin=pin, devices=_devices(devices), backend=backend))
    devices_text = ", ".join(info.get("devices", []))
    click.echo(f"loaded {info['model']} on {info['node']} ({info.get('backend')}, {devices_text}): "
               f"{info.get('memory_mb', 0):.0f} MiB in {info.get('load_time_s') or seconds:.2f}s"
               + (", pinned" if pin else ""))


@click.command()
@click.argument("node", shell_complete=complete_node)
@click.argument("model", shell_complete=complete_model)
@gateway_option
@admin_key_option
def unload(node, model, gateway, admin_key) -> None:
    """Unload MODEL from NODE (after its in-flight requests finish)."""
    fetch(gateway, admin_key, lambda client: client.unload(node, model))
    click.echo(f"unloaded {model} from {node}")
