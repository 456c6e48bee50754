"""Pointing huggingface_hub at the fake hub (tests/fake_hub.py): a `cortex neuron`'s environment, or this process.

Apart from the fake itself so that both stay short; `tests.fake_hub` re-exports both helpers.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


def hf_env(hub_url: str, hf_home: Path) -> dict[str, str]:
    """The environment a process that then imports huggingface_hub (a `cortex neuron`) needs for the fake.

    HF_ENDPOINT is read once, at import. Telemetry off stops the user agent's daily fetch of
    `/api/agent-harnesses`; HF_HOME keeps tokens, caches and that registry out of the user's home;
    HF_HUB_OFFLINE=0 beats an inherited TRANSFORMERS_OFFLINE=1.
    """
    return {"HF_ENDPOINT": hub_url, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": "0"}


@contextmanager
def huggingface_hub_pointed_at(monkeypatch, hub_url: str, hf_home: Path):
    """The same for this process, where huggingface_hub is already imported: its constants too.

    Patching `constants.ENDPOINT` alone is a trap: `hf_hub_url` formats `HUGGINGFACE_CO_URL_TEMPLATE`
    (frozen at import) and swaps in `endpoint=` only where the URL starts with `ENDPOINT`, so one
    without the other sends downloads to huggingface.co. While inside, any request off 127.0.0.1 fails.
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils._http import default_client_factory

    for name, value in hf_env(hub_url, hf_home).items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    template = hub_url + "/{repo_id}/resolve/{revision}/{filename}"
    for name, value in {"ENDPOINT": hub_url, "HUGGINGFACE_CO_URL_TEMPLATE": template,
                        "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_OFFLINE": False,
                        "HF_HUB_CACHE": str(hf_home / "hub"), "HF_TOKEN_PATH": str(hf_home / "token")}.items():
        monkeypatch.setattr(constants, name, value)
    huggingface_hub.set_client_factory(_loopback_only_client)
    try:
        yield
    finally:
        huggingface_hub.set_client_factory(default_client_factory)


def _loopback_only_client():
    """huggingface_hub's own client (its request hook included), failing any request off loopback."""
    import httpx2
    from huggingface_hub.utils._http import hf_request_event_hook

    def loopback_only(request) -> None:
        if request.url.host != "127.0.0.1":
            raise RuntimeError(f"a test tried to reach {request.url}: only the fake hub may be called")

    return httpx2.Client(event_hooks={"request": [hf_request_event_hook, loopback_only]},
                         follow_redirects=True, timeout=None)
