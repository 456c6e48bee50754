"""`cortex load NODE MODEL` and `cortex unload NODE MODEL`, with a progress display while loading."""

from __future__ import annotations

import asyncio
import time

import click

from cortex_cli.commands.status import fetch
from cortex_cli.options import admin_key_option, complete_model, complete_node, gateway_option
from neuron.shared.backend_names import BACKENDS
from neuron.shared.speculative import MAX_DRAFT, METHODS, SPECULATIVE_BACKENDS


def _devices(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected GPU indices such as 0,1", param_hint="--devices") from None


def _speculative(method: str | None, draft_model: str | None, max_draft: int | None, ngram_max: int | None,
                 backend: str | None) -> dict | None:
    """The load's `speculative` object, as a JSON load request writes it; a usage error for a combination the
    node would refuse, before anything is sent."""
    from neuron.shared.errors import ApiError
    from neuron.shared.speculative import SpecConfig

    if method is None:
        given = [name for name, value in (("--draft-model", draft_model), ("--max-draft", max_draft),
                                          ("--ngram-max", ngram_max)) if value is not None]
        if given:
            raise click.UsageError(f"{given[0]} tunes drafts: add --speculative ngram (or draft), or leave "
                                   f"{given[0]} out")
        return None
    if backend and backend != "auto" and backend not in SPECULATIVE_BACKENDS:
        raise click.UsageError(f"--speculative: drafts are verified on {' and '.join(SPECULATIVE_BACKENDS)}, not "
                               f"{backend}; use --backend auto (or one of those), or leave --speculative out")
    if method == "draft" and not draft_model:
        raise click.UsageError("--speculative draft needs --draft-model ID: a smaller GGUF on the node with the "
                               "same vocabulary (or use --speculative ngram, which needs none)")
    if method != "draft" and draft_model:
        raise click.UsageError(f"--draft-model is for --speculative draft, not {method}; use --speculative draft "
                               "or leave --draft-model out")
    if method != "ngram" and ngram_max is not None:
        raise click.UsageError("--ngram-max is for --speculative ngram (prompt lookup); a draft model drafts "
                               "without it: leave --ngram-max out")
    spec = {"method": method, "draft_model": draft_model, "max_draft": max_draft, "ngram_max": ngram_max}
    spec = {k: v for k, v in spec.items() if v is not None}
    try:  # what the node checks, checked here too (ngram_max's upper bound, ngram_min against it)
        SpecConfig.from_dict(spec)
    except ApiError as err:
        raise click.UsageError(f"{err.message} (see cortex load --help)") from None
    return spec


async def _load_with_progress(client, node: str, model: str, **kwargs) -> tuple[dict, float]:
    """Start the load, and while it runs show the phase the neuron reports; while the node pulls the model
    from the hub first, a download bar (bytes, rate, time left)."""
    from cortex_cli.commands.pull import progress_bar

    started = time.monotonic()
    task = asyncio.create_task(client.load(node, model, **kwargs))
    with progress_bar() as progress:
        line = progress.add_task(f"loading {model} on {node}", total=None)
        bars: dict[str, int] = {}
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            phase, pulls = await _progress(client, node, model)
            progress.update(line, description=f"loading {model} on {node}: {phase or 'starting'} "
                                              f"({time.monotonic() - started:.1f}s)")
            for pull in pulls:
                bar = bars.setdefault(pull["source"], progress.add_task(f"pulling {pull['source']}", total=None))
                progress.update(bar, total=pull.get("total_bytes") or None, completed=pull.get("done_bytes", 0),
                                description=f"pulling {pull['source']}: {pull.get('phase')}")
    return task.result(), time.monotonic() - started


async def _progress(client, node: str, model: str) -> tuple[str | None, list[dict]]:
    """(the model's load phase, the node's pulls under way) from one status poll."""
    try:
        status = await client.status(refresh=True, timeout=2)
    except Exception:  # noqa: BLE001 - progress is best effort; the load itself reports errors
        return None, []
    for n in status["nodes"]:
        if n["name"] == node:
            pulls = [p for p in n.get("pulls", []) if p.get("phase") not in ("done", "failed")]
            for m in n["models"]:
                if m["id"] == model or m.get("path", "").endswith(model):
                    return m.get("phase") or m.get("status"), pulls
            return ("pulling from the hub" if pulls else None), pulls
    return None, []


@click.command()
@click.argument("node", shell_complete=complete_node)
@click.argument("model", shell_complete=complete_model)
@click.option("--pin", is_flag=True, help="Never evict it from NODE; recorded in the models file.")
@click.option("--devices", metavar="0,1", help="GPU indices on NODE to place it on.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None)
@click.option("--speculative", type=click.Choice(METHODS), default=None,
              help="Decode with drafts the model verifies: ngram (prompt lookup) or draft (a --draft-model).")
@click.option("--draft-model", metavar="ID", shell_complete=complete_model,
              help="With --speculative draft: a smaller GGUF on NODE with the same vocabulary.")
@click.option("--max-draft", type=click.IntRange(1, MAX_DRAFT), default=None,
              help="Draft tokens at most per step (default 8).")
@click.option("--ngram-max", type=click.IntRange(min=1), default=None,
              help="With --speculative ngram: the longest suffix of the text looked up (default 3).")
@gateway_option
@admin_key_option
def load(node, model, pin, devices, backend, speculative, draft_model, max_draft, ngram_max, gateway,
         admin_key) -> None:
    """Load MODEL on NODE and report its measured memory and load time."""
    spec = _speculative(speculative, draft_model, max_draft, ngram_max, backend)
    info, seconds = fetch(gateway, admin_key, lambda client: _load_with_progress(
        client, node, model, pin=pin, devices=_devices(devices), backend=backend, speculative=spec))
    devices_text = ", ".join(info.get("devices", []))
    click.echo(f"loaded {info['model']} on {info['node']} ({info.get('backend')}, {devices_text}): "
               f"{info.get('memory_mb', 0):.0f} MiB in {info.get('load_time_s') or seconds:.2f}s"
               + (", pinned" if pin else "") + (f", drafts by {speculative}" if spec else ""))


@click.command()
@click.argument("node", shell_complete=complete_node)
@click.argument("model", shell_complete=complete_model)
@gateway_option
@admin_key_option
def unload(node, model, gateway, admin_key) -> None:
    """Unload MODEL from NODE (after its in-flight requests finish)."""
    fetch(gateway, admin_key, lambda client: client.unload(node, model))
    click.echo(f"unloaded {model} from {node}")
