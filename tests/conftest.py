from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import pytest_asyncio

from tests.helpers import load_models, make_tiny, one_node_fleet, start_neuron

pytest_plugins = ["tests.leftovers"]  # the session fails if a process it started outlives it


def pytest_configure(config):
    """Before any test module is imported (some copy the environment then): no gateway a test starts reads or
    writes the user's ~/.cortex/state. Each test then gets a directory of its own (`own_state_dir`), and each
    process tests/helpers.py starts one of its own."""
    config.cortex_state = tempfile.TemporaryDirectory(prefix="cortex-test-state-")
    os.environ["CORTEX_STATE_DIR"] = config.cortex_state.name


def pytest_unconfigure(config):
    if hasattr(config, "cortex_state"):
        config.cortex_state.cleanup()


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path_factory, monkeypatch):
    """A gateway built in process (GatewayConfig's default state_dir) keeps its state apart from other tests'."""
    monkeypatch.setenv("CORTEX_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("models")
    make_tiny(d / "tiny-gguf.gguf", "gguf")
    make_tiny(d / "tiny-hf", "hf")
    make_tiny(d / "tiny-short.gguf", "gguf", "--context", "64", "--seed", "7")
    return d


@pytest.fixture(scope="module")
def three_models(tmp_path_factory) -> Path:
    """Three distinct tiny GGUFs (m1..m3) of about 33 MiB each by estimate: an 80 MiB budget holds two."""
    d = tmp_path_factory.mktemp("three-models")
    for i in (1, 2, 3):
        make_tiny(d / f"m{i}.gguf", "gguf", "--seed", str(i))
    return d


@pytest.fixture(scope="module")
def neuron(tmp_path_factory, models_dir):
    """One neuron process per test module, both tiny models loaded (the in-process one: inprocess_neuron)."""
    with start_neuron(tmp_path_factory.mktemp("neuron"), models_dir, "--cpu-memory-mb", "4000") as proc:
        load_models(proc, ("tiny-gguf", "tiny-hf"))
        yield proc


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def inprocess_neuron(models_dir):
    """The neuron's own app in this process (tests/neuron_inprocess.py), both tiny models loaded, one per
    module: its tests run on the module's event loop (`pytestmark = IN_MODULE_LOOP`)."""
    from tests.neuron_inprocess import serve_in_process

    async with serve_in_process(models_dir) as node:
        yield node


@pytest.fixture
async def fakes():
    """Fake neurons for an in-process gateway (tests/gateway_inprocess.py), stopped however the test ends."""
    from tests.gateway_inprocess import Fakes

    started = Fakes()
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def gateway_over(aiohttp_client, fakes):
    """`await gateway_over(*fakes, **config)`: the gateway's app in process over those fakes (a Gateway: its
    test client and metrics); requests they hold are released before it shuts down."""
    from tests.gateway_inprocess import gateway_starter

    try:
        yield gateway_starter(aiohttp_client)
    finally:
        fakes.release_all()


@pytest.fixture(scope="module", params=["gguf", "hf"])
def backend(request, models_dir):
    """Each tiny model's backend, in this process (prompt rendering and tokenising without a server).
    `default_template` keeps its own chat template for tests that swap it."""
    from neuron.engine.backends.base import BackendSpec

    if request.param == "gguf":
        from neuron.engine.backends.llamacpp import LlamaCppBackend

        b = LlamaCppBackend(BackendSpec(models_dir / "tiny-gguf.gguf", "gguf", ["cpu"]))
    else:
        from neuron.engine.backends.torch_hf import TorchBackend

        b = TorchBackend(BackendSpec(models_dir / "tiny-hf", "hf", ["cpu"]))
    b.default_template = b.chat_template
    try:
        yield b
    finally:
        b.close()


@pytest.fixture()
def one_node(tmp_path, models_dir):
    """A gateway over one neuron ("n1"), for a test that may stop or kill either; both stopped however the
    test left them."""
    with one_node_fleet(tmp_path, models_dir) as (gateway, neuron, _):
        yield gateway, neuron


def pytest_report_header(config):
    return [f"python {sys.version.split()[0]}"]
