"""`cortex pull SOURCE` and `cortex rm NODE MODEL`: models onto and off a node's disk.

A pull runs on the node (the weights go straight to where they load); the
command starts it through the gateway and follows it with a progress bar
(bytes, rate, time left) from the node's pull state, until it is done or fails.
"""

from __future__ import annotations

import asyncio

import click

from cortex_cli.commands.status import fetch
from cortex_cli.options import admin_key_option, complete_model, complete_node, gateway_option

POLL_S = 0.5


def pull_of(status: dict, node: str, source: str) -> dict | None:
    """The node's pull state for `source` in an /admin/status answer."""
    for n in status.get("nodes", []):
        if n.get("name") == node:
            return next((p for p in n.get("pulls", []) if p.get("source") == source), None)
    return None


async def follow_pull(client, node: str, source: str, progress, task_id) -> dict:
    """Poll the node's pull until it ends; the progress bar shows its bytes."""
    while True:
        status = await client.status(refresh=True, timeout=10)
        state = pull_of(status, node, source) or {}
        total, done = state.get("total_bytes") or None, state.get("done_bytes", 0)
        progress.update(task_id, total=total, completed=done,
                        description=f"{source} on {node}: {state.get('phase', 'starting')}")
        if state.get("phase") in ("done", "failed"):
            return state
        await asyncio.sleep(POLL_S)


def progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)


@click.command()
@click.argument("source")
@click.option("--node", shell_complete=complete_node, help="The node to pull onto (required with several nodes).")
@gateway_option
@admin_key_option
def pull(source, node, gateway, admin_key) -> None:
    """Pull SOURCE from the Hugging Face hub onto a node: org/name (safetensors), org/name:Q4_K_M or
    org/name/file.gguf (GGUF). Checked first (disk, memory), resumable, verified by sha256."""

    async def go(client):
        started = await client.pull(source, node)
        node_name, canonical = started["node"], started["source"]
        with progress_bar() as progress:
            task = progress.add_task(f"{canonical} on {node_name}", total=started.get("total_bytes") or None)
            if started.get("phase") in ("done", "failed"):
                return started
            return await follow_pull(client, node_name, canonical, progress, task)

    state = fetch(gateway, admin_key, go)
    if state.get("phase") == "failed":
        raise click.ClickException(state.get("error") or "the pull failed")
    click.echo(f"pulled {state['source']}: model {state.get('id')} ({state.get('total_bytes', 0) / 2**20:.1f} MiB)")


@click.command("rm")
@click.argument("node", shell_complete=complete_node)
@click.argument("model", shell_complete=complete_model)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@gateway_option
@admin_key_option
def rm(node, model, yes, gateway, admin_key) -> None:
    """Delete MODEL from NODE's disk (it must not be loaded)."""
    if not yes:
        click.confirm(f"delete {model} from {node}'s disk?", abort=True)
    result = fetch(gateway, admin_key, lambda client: client.delete(node, model))
    files = ", ".join(result.get("files") or [])
    click.echo(f"deleted {result['id']} from {node} ({result.get('size_mb', 0):.1f} MiB freed)"
               + (f": {files}" if files else ""))
