"""The operator commands against a gateway whose admin key is not a user key, over a node whose model
names hold control characters (C0 and C1): a real neuron and gateway, completion asked of real bash.

`cortex models` is an admin command: it must work with the admin key alone. A name that cannot be
typed as it is must be shown escaped (not shortened into another name) and never offered by
completion in a changed form, which would be a name that does not exist.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from cortex_cli.main import cli
from tests.helpers import http_json, one_node_fleet
from tests.test_completions import bash_complete, shell_env

USER_KEY = "sk-user-0000-0001"
ADMIN_KEY = "sk-admin-0000-0001"
HOSTILE = ("tiny\x85c", "tiny\x1bd", "tiny\x9b2Je")  # NEL, ESC, CSI: stripped, each read "tinyc"...


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("cli_names")
    models = root / "models"
    models.mkdir()
    for name in ("tiny-ok", *HOSTILE):
        shutil.copy(models_dir / "tiny-gguf.gguf", models / f"{name}.gguf")
    (root / "keys.txt").write_text(f"{USER_KEY}  # user\n")
    with one_node_fleet(root, models, name="beast",
                        extra_toml=f'[auth]\nkeys_file = "keys.txt"\nadmin_keys = ["{ADMIN_KEY}"]') as (gateway, _, _):
        yield gateway


def cortex(gateway, *args: str):
    return CliRunner().invoke(cli, [*args, "--gateway", gateway.url, "--admin-key", ADMIN_KEY],
                              env={"COLUMNS": "200"}, catch_exceptions=False)


def test_models_works_with_the_admin_key_alone(fleet):
    assert http_json("GET", fleet.url + "/v1/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"})[0] == 401
    result = cortex(fleet, "models")
    assert result.exit_code == 0, result.output
    assert "tiny-ok" in result.output and "beast" in result.output
    listed = json.loads(cortex(fleet, "models", "--json").output)
    assert "tiny-ok" in {m["id"] for m in listed}
    refused = http_json("GET", fleet.url + "/admin/models", headers={"Authorization": f"Bearer {USER_KEY}"})
    assert refused[0] == 401, "the admin route wants the admin key"


def test_a_name_with_control_characters_is_shown_escaped_not_shortened(fleet):
    for command in (("models", "--disk", "beast"), ("models",)):
        result = cortex(fleet, *command)
        assert result.exit_code == 0, result.output
        assert "tiny\\x85c" in result.output and "tiny\\x1bd" in result.output, result.output
        assert "tinyc" not in result.output and "tinyd" not in result.output
        assert not any(c in result.output for c in "\x1b\x85\x9b")


def test_completion_offers_only_names_that_exist(fleet):
    env = {**shell_env(fleet.url), "CORTEX_ADMIN_KEY": ADMIN_KEY}
    assert bash_complete(["cortex", "load", "beast", "tiny"], env) == ["tiny-ok"]
    assert bash_complete(["cortex", "load", ""], env) == ["beast"]
