"""`cortex service neuron|serve [OPTIONS]`: a systemd unit that runs that command with those options.

Thin: the options are checked and turned into a unit spec by `cortex_cli.service_plan`, rendered
by `cortex_cli.service_unit`; this prints the unit, or with --install writes it and says what to
run next.
"""

from __future__ import annotations

from pathlib import Path

import click

_SETTINGS = {"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]}


def _service_options(f):
    """The unit's own options; every other word goes to the server's command line."""
    options = [
        click.option("--user", "user_unit", is_flag=True,
                     help="A user unit (systemctl --user, ~/.config/systemd/user) instead of a system unit."),
        click.option("--install", is_flag=True,
                     help="Write the unit file (atomically) instead of printing it, and say what to run next."),
        click.option("--run-as", default="cortex", show_default=True,
                     help="The system user (and group) the server runs as; not with --user."),
        click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Where the tokens and keys are [default: /etc/cortex/neuron.env or gateway.env; "
                          "~/.config/cortex/... with --user]."),
        click.option("--no-gpu", is_flag=True, help="A machine without NVIDIA GPUs: the unit allows no GPU device."),
        click.option("--unit-name", help="The unit's name [default: cortex-neuron, cortex-gateway]."),
        click.option("--unit-dir", type=click.Path(file_okay=False, path_type=Path), hidden=True,
                     help="Where --install writes (for tests) [default: /etc/systemd/system, "
                          "~/.config/systemd/user with --user]."),
        click.argument("args", nargs=-1, type=click.UNPROCESSED),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.group()
def service() -> None:
    """systemd units for the servers: tokens stay in an environment file, the server in a sandbox.

    \b
    cortex service neuron --listen 0.0.0.0:13131 --gpus 0,1 --models-dir /srv/models
    sudo cortex service serve --config /etc/cortex/cortex.toml --install
    """


@service.command("neuron", context_settings=_SETTINGS)
@_service_options
def neuron_unit(**options) -> None:
    """The unit for `cortex neuron ARGS...` (any of its options but --token)."""
    from cortex_cli.commands.neuron import neuron

    _render_or_install("neuron", neuron, **options)


@service.command("serve", context_settings=_SETTINGS)
@_service_options
def serve_unit(**options) -> None:
    """The unit for `cortex serve ARGS...` (usually --config /etc/cortex/cortex.toml)."""
    from cortex_cli.commands.serve import serve

    _render_or_install("serve", serve, **options)


def _render_or_install(name: str, command: click.Command, *, user_unit: bool, install: bool, run_as: str,
                       env_file: Path | None, no_gpu: bool, unit_name: str | None, unit_dir: Path | None,
                       args: tuple[str, ...]) -> None:
    from cortex_cli.service_plan import (
        PlanError,
        ServiceRequest,
        cortex_executable,
        default_unit_dir,
        install_unit,
        next_steps,
        plan_service,
    )
    from cortex_cli.service_unit import UnitError, render_unit

    if user_unit and click.get_current_context().get_parameter_source("run_as").name == "COMMANDLINE":
        raise click.UsageError("--run-as: a user unit runs as you; drop --run-as or --user")
    request = ServiceRequest(name, args, user_unit=user_unit, run_as=run_as, no_gpu=no_gpu, unit_name=unit_name,
                             env_file=env_file.expanduser().absolute() if env_file else None)
    try:
        plan = plan_service(request, command, cortex_executable())
        text = render_unit(plan.spec)
    except (PlanError, UnitError) as exc:
        raise click.UsageError(str(exc)) from None
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not install:
        click.echo(text, nl=False)
        return
    directory = unit_dir or default_unit_dir(user_unit)
    try:
        path = install_unit(directory, plan.unit_name, text)
    except OSError as exc:
        hint = "; run it as root, or pass --user for a unit of your own" if isinstance(exc, PermissionError) else ""
        raise click.ClickException(f"cannot write {directory / plan.unit_name}: {exc.strerror}{hint}") from None
    click.echo(f"wrote {path}\nnext:")
    for step in next_steps(plan, request):
        click.echo(f"  {step}")
