"""`cortex completion bash|zsh|fish`: print the shell completion script.

The scripts call back into `cortex` for every completion, so node and model
names come live from the gateway (and nothing is offered when it is down).
"""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


def completion_script(shell: str) -> str:
    from click.shell_completion import get_completion_class

    from cortex_cli.main import cli

    return get_completion_class(shell)(cli, {}, "cortex", "_CORTEX_COMPLETE").source()


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell) -> None:
    """Print the completion script for SHELL.

    \b
    bash: cortex completion bash > ~/.local/share/bash-completion/completions/cortex
    zsh:  cortex completion zsh > "${fpath[1]}/_cortex"
    fish: cortex completion fish > ~/.config/fish/completions/cortex.fish
    """
    click.echo(completion_script(shell), nl=False)
