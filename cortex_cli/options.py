"""Options shared by the operator commands, and dynamic shell completion of node and model names."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import click

gateway_option = click.option("--gateway", envvar="CORTEX_GATEWAY", default="http://127.0.0.1:31313",
                              show_default=True, help="Gateway URL (or CORTEX_GATEWAY).")
admin_key_option = click.option("--admin-key", envvar="CORTEX_ADMIN_KEY", default=None,
                                help="Admin key (or CORTEX_ADMIN_KEY).")


def _status_quietly(ctx: click.Context) -> dict | None:
    """The gateway's status for completion; None (offer nothing) when it cannot be reached fast."""
    from cortex_cli.client import AdminClient, admin_key, gateway_url

    params = ctx.params if ctx else {}

    async def fetch():
        # Raw: the names as they are, so what is offered exists; `_offer` drops what a shell could misread.
        async with AdminClient(gateway_url(params.get("gateway")), admin_key(params.get("admin_key")),
                               raw=True) as c:
            return await c.status(timeout=1.5)

    try:
        return asyncio.run(fetch())
    except Exception:  # noqa: BLE001 - completion must never print an error into the shell
        return None


# What a completion may offer: a name with a space, a newline, a control character, a glob or `$(...)`
# in it could change what the shell runs or completes, and quoting differs from shell to shell, so such
# names are not offered at all (never offered changed: a changed name is one that does not exist).
# `cortex status` shows them, escaped.
_SAFE_WORD = re.compile(r"^[A-Za-z0-9._:/@+=-]+$")


def _offer(names, incomplete: str) -> list[str]:
    return sorted({n for n in names if isinstance(n, str) and _SAFE_WORD.match(n) and n.startswith(incomplete)})


def complete_node(ctx, _param, incomplete: str) -> list[str]:
    status = _status_quietly(ctx)
    try:
        return _offer((n["name"] for n in status["nodes"]) if status else [], incomplete)
    except (KeyError, TypeError):
        return []


def complete_model(ctx, _param, incomplete: str) -> list[str]:
    status = _status_quietly(ctx)
    if not status:
        return []
    node = ctx.params.get("node") if ctx else None
    names = set()
    try:
        for n in status["nodes"]:
            if node and n["name"] != node:
                continue
            names.update(m["id"] for m in n["models"])
            names.update(n.get("available", []))
    except (KeyError, TypeError):
        return []
    return _offer(names, incomplete)


def run(coro):
    """Run one admin call for a command, turning failures into one clear line and a non-zero exit."""
    from cortex_cli.client import AdminError, GatewayUnreachable

    try:
        return asyncio.run(coro)
    except GatewayUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    except AdminError as exc:
        raise click.ClickException(exc.message) from None


def show(render: Callable[[], Any]) -> Any:
    """Render an answer; one of an unexpected shape is one clear line, not a traceback."""
    try:
        return render()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise click.ClickException(f"the gateway's answer has an unexpected shape ({exc.__class__.__name__}: "
                                   f"{exc}); are the CLI and the gateway the same version?") from None
