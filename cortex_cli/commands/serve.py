"""`cortex serve`: the gateway."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cortex_cli.logs import log_format_option

DEFAULT_CONFIG = Path("~/.cortex/cortex.toml")


def locate_config(given: Path | None) -> Path | None:
    """--config, else $CORTEX_CONFIG, else ~/.cortex/cortex.toml if it exists; None: embedded default."""
    if given is not None:
        return given
    if env := os.environ.get("CORTEX_CONFIG"):
        return Path(env)
    default = DEFAULT_CONFIG.expanduser()
    return default if default.exists() else None


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
    from cortex_gateway.config import load_config
    from neuron.shared.config import ConfigError, parse_listen

    setup_logging(log_level, log_format)
    path = locate_config(config_path)
    try:
        config = load_config(path) if path else None
        listen_at = parse_listen(listen, "--listen") if listen else None
        metrics_at = parse_listen(metrics_listen, "--metrics-listen") if metrics_listen else None
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    local = None
    if config is None:
        from cortex_gateway.embedded import LocalNeuron, embedded_config

        local = LocalNeuron()
        config = embedded_config(local)
    if listen_at:
        config.host, config.port = listen_at
    if metrics_at:
        config.metrics_host, config.metrics_port = metrics_at
    from cortex_gateway.server import run

    try:
        if local is not None:
            local.wait_ready()
            click.echo(f"serving on http://{config.host}:{config.port}/v1 with a local neuron", err=True)
        run(config)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if local is not None:
            local.stop()
