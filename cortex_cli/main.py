"""The `cortex` click group: registration only; each command lives in `commands/`."""

from __future__ import annotations

import click

from cortex_cli.commands.completion import completion
from cortex_cli.commands.drain import drain, undrain
from cortex_cli.commands.keys import keys
from cortex_cli.commands.load import load, unload
from cortex_cli.commands.neuron import neuron
from cortex_cli.commands.pull import pull, rm
from cortex_cli.commands.serve import serve
from cortex_cli.commands.service import service
from cortex_cli.commands.status import models, status
from cortex_cli.commands.tiny_model import tiny_model
from cortex_cli.commands.top import top
from cortex_cli.commands.usage import usage


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cortex-fleet")
def cli() -> None:
    """Run your own LLMs on several GPU machines."""


cli.add_command(serve)
cli.add_command(neuron)
cli.add_command(status)
cli.add_command(models)
cli.add_command(load)
cli.add_command(unload)
cli.add_command(drain)
cli.add_command(undrain)
cli.add_command(pull)
cli.add_command(rm)
cli.add_command(top)
cli.add_command(completion)
cli.add_command(tiny_model)
cli.add_command(service)
cli.add_command(keys)
cli.add_command(usage)
