"""A real Chromium for the console's tests: Debian's, driven by Playwright (never a browser Playwright downloads,
which needs a CDN this machine cannot reach). `make test` installs `chromium-headless-shell` (or finds
`chromium`) and the `playwright` package; where either is missing, the tests skip and say which.
"""

from __future__ import annotations

import shutil

import pytest

BROWSERS = ("chromium-headless-shell", "chromium")


def chromium_path() -> str:
    """Debian's Chromium binary, or a skip naming what to install."""
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium: apt-get install chromium-headless-shell (make test does, as root)")


class PageErrors:
    """What the page reported as wrong: console errors and uncaught exceptions (a console test asserts none)."""

    def __init__(self, page):
        self.messages: list[str] = []
        page.on("console", lambda m: self.messages.append(f"console {m.type}: {m.text}") if m.type == "error"
                else None)
        page.on("pageerror", lambda exc: self.messages.append(f"page error: {exc}"))
        page.on("dialog", lambda d: self.messages.append(f"a {d.type} dialog opened: {d.message}"))
