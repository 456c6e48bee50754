"""`cortex top`: the live terminal dashboard."""

from __future__ import annotations

import click

from cortex_cli.options import admin_key_option, gateway_option


@click.command()
@gateway_option
@admin_key_option
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True,
              help="Seconds between refreshes.")
def top(gateway, admin_key, interval) -> None:
    """Live view of nodes, devices and models. Keys: s sort, / filter, l load, u unload, p pin, q quit."""
    from cortex_cli.top.app import make_top_app  # textual is a core dependency, imported only here

    make_top_app(gateway, admin_key, interval).run()
