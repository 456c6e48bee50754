"""What the `cortex service` tests share: the command run in process, its unit read back as directives, a
gateway config to plan from."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cortex_cli.main import cli


def service(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["service", *args], env=env, catch_exceptions=False)


def rendered(*args: str) -> str:
    result = service(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def directives(text: str) -> dict[str, list[str]]:
    """key -> values, over every section (the keys used here are not repeated across sections)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def gateway_toml(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir(exist_ok=True)
    path = tmp_path / "cortex.toml"
    path.write_text('models_config = "state/models.toml"\n[gateway]\nlisten = "0.0.0.0:31313"\n')
    return path


def gateway_state_toml(tmp_path: Path, lines: str) -> Path:
    """A gateway config with its models file in `state/` and the [gateway] / [state] lines given."""
    tmp_path.mkdir(exist_ok=True)
    path = gateway_toml(tmp_path)
    path.write_text(path.read_text() + lines)
    return path
