"""`cortex keys create|list|update|revoke`: API keys made at run time, each a thin call to /admin/keys.

`create` prints the new key alone on stdout, once (the gateway keeps only its hash), and the note that
it cannot be shown again on stderr, so `KEY=$(cortex keys create alice)` captures the key alone.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import click

from cortex_cli.options import _offer, admin_key_option, gateway_option, show

CLEAR = "none"  # what `update` takes to lift a limit (the gateway's null)


class _Limit(click.ParamType):
    """An integer, or `none` (with `update`: no limit)."""

    name = "N|none"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.lower() == CLEAR):
            return None
        try:
            return int(value)
        except ValueError:
            self.fail(f"expected an integer or {CLEAR!r}, got {value!r}", param, ctx)


def _names_quietly(ctx: click.Context) -> list[str]:
    """The keys' names for completion; nothing when the gateway cannot be reached fast."""
    import asyncio

    from cortex_cli.client import AdminClient, admin_key, gateway_url

    params = ctx.params if ctx else {}

    async def fetch():
        async with AdminClient(gateway_url(params.get("gateway")), admin_key(params.get("admin_key")),
                               raw=True) as c:
            return await c._call("GET", "/admin/keys", timeout=1.5)

    try:
        return [k["name"] for k in asyncio.run(fetch())["keys"]]
    except Exception:  # noqa: BLE001 - completion must never print an error into the shell
        return []


def complete_key(ctx, _param, incomplete: str) -> list[str]:
    return _offer(_names_quietly(ctx), incomplete)


def _call(gateway: str, admin_key: str | None, method: str, path: str, body: dict | None = None):
    from cortex_cli.commands.status import fetch

    return fetch(gateway, admin_key, lambda client: client._call(method, path, body))


def _path(name: str) -> str:
    return "/admin/keys/" + quote(name, safe="")


def _settings(options: dict, given: set[str]) -> dict:
    """The body's settings from the options the user gave (click's defaults are not settings)."""
    body = {}
    for name in ("rpm", "tpm", "max_concurrent", "budget_tokens", "budget_window", "priority"):
        if name in given:
            window = options[name]
            body[name] = None if name == "budget_window" and window.lower() == CLEAR else window
    if options.get("models"):
        body["models"] = [m.strip() for given_models in options["models"] for m in given_models.split(",")
                          if m.strip()]
    if options.get("all_models"):
        body["models"] = None
    return body


def _given(ctx: click.Context) -> set[str]:
    source = click.core.ParameterSource
    return {n for n in ctx.params if ctx.get_parameter_source(n) not in (source.DEFAULT, source.DEFAULT_MAP)}


def setting_options(f):
    """The settings both `create` and `update` take."""
    for option in reversed((
        click.option("--models", multiple=True, metavar="M[,M...]",
                     help="Model ids, aliases or glob patterns the key may use (repeat or comma-separate)."),
        click.option("--rpm", type=_Limit(), help="Requests per minute."),
        click.option("--tpm", type=_Limit(), help="Tokens per minute."),
        click.option("--max-concurrent", type=_Limit(), help="Requests in flight at once."),
        click.option("--budget-tokens", type=_Limit(), help="Tokens per budget window."),
        click.option("--budget-window", metavar="1h|1d|30d|month", help="The budget's window."),
        click.option("--priority", type=click.Choice(["high", "normal", "low"]), help="Queue priority."),
    )):
        f = option(f)
    return f


def _limit(value) -> str:
    return "-" if value is None else str(value)


def keys_table(keys: list[dict]):
    """One row per key: names and patterns as literal text (`plain`), never markup."""
    from rich.table import Table

    from cortex_cli.render import ago, plain

    table = Table(title="Keys", title_justify="left")
    for col in ("name", "models", "rpm", "tpm", "max in flight", "budget", "priority", "created", "revoked"):
        table.add_column(col)
    for k in keys:
        models = "all" if k.get("models") is None else ", ".join(k["models"]) or "none"
        budget = "-" if k.get("budget_tokens") is None else f"{k['budget_tokens']} / {k.get('budget_window') or '?'}"
        table.add_row(plain(k["name"]), plain(models), _limit(k.get("rpm")), _limit(k.get("tpm")),
                      _limit(k.get("max_concurrent")), plain(budget), plain(k.get("priority", "normal")),
                      ago(k.get("created_at")), ago(k["revoked_at"]) if k.get("revoked_at") else "")
    return table


@click.group()
def keys() -> None:
    """API keys made at run time (stored as hashes in the gateway's state database)."""


@keys.command()
@click.argument("name")
@setting_options
@gateway_option
@admin_key_option
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer (the key included) as JSON.")
@click.pass_context
def create(ctx, name, gateway, admin_key, as_json, **options) -> None:
    """Make a key NAME and print it, once."""
    answer = _call(gateway, admin_key, "POST", "/admin/keys", {"name": name, **_settings(options, _given(ctx))})
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(answer["key"])
    click.echo(f"key {answer['name']} made; the key above cannot be shown again: keep it now", err=True)


@keys.command(name="list")
@gateway_option
@admin_key_option
@click.option("--revoked", is_flag=True, help="Show revoked keys too.")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
def list_keys(gateway, admin_key, revoked, as_json) -> None:
    """The keys, their allow-lists and limits (never the keys themselves)."""
    from rich.console import Console

    answer = _call(gateway, admin_key, "GET", "/admin/keys" + ("?revoked=1" if revoked else ""))
    if as_json:
        click.echo(json.dumps(answer["keys"], indent=2))
        return
    Console().print(show(lambda: keys_table(answer["keys"])))


@keys.command()
@click.argument("name", shell_complete=complete_key)
@setting_options
@click.option("--all-models", is_flag=True, help="Lift the allow-list: every model.")
@gateway_option
@admin_key_option
@click.pass_context
def update(ctx, name, gateway, admin_key, **options) -> None:
    """Change settings of key NAME (`none` lifts a limit); in force for its next request."""
    body = _settings(options, _given(ctx))
    if not body:
        raise click.UsageError("give at least one setting to change (see --help)")
    answer = _call(gateway, admin_key, "PATCH", _path(name), body)
    click.echo(f"key {answer['name']} updated: " + ", ".join(sorted(body)))


@keys.command()
@click.argument("name", shell_complete=complete_key)
@gateway_option
@admin_key_option
def revoke(name, gateway, admin_key) -> None:
    """Revoke key NAME: refused from its next request on (its name stays taken)."""
    answer = _call(gateway, admin_key, "DELETE", _path(name))
    click.echo(f"key {answer['name']} revoked")
