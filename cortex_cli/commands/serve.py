"""`cortex serve`: the gateway."""

from __future__ import annotations

from pathlib import Path

import click

from cortex_cli.logs import log_format_option


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="cortex.toml [default: $CORTEX_CONFIG or ~/.cortex/cortex.toml; without one, serve on "
                   "127.0.0.1:31313 with a local neuron].")
@click.option("--listen", metavar="HOST:PORT", help="Override [gateway] listen.")
@click.option("--metrics-listen", metavar="HOST:PORT", help="Override [gateway] metrics_listen.")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@log_format_option
def serve(config_path, listen, metrics_listen, log_level, log_format) -> None:
    """One OpenAI-compatible API over every neuron in the fleet."""
    from cortex_cli.logs import setup_logging
    from cortex_cli.startup import startup_errors
    from cortex_gateway.config import gateway_config_from_flags
    from cortex_gateway.server import run

    setup_logging(log_level, log_format)
    with startup_errors():
        run(gateway_config_from_flags(config_path, listen=listen, metrics_listen=metrics_listen))
