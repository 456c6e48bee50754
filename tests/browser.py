"""A real Chromium for the console's tests: Debian's, driven by Playwright (never a browser Playwright downloads,
which needs a CDN this machine cannot reach). `make test` installs `chromium-headless-shell` (or finds
`chromium`) and the `playwright` package; where either is missing, the tests skip and say which.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

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


@contextlib.asynccontextmanager
async def browser_page(width: int = 1280, height: int = 720):
    """A fresh Chromium page (its errors collected as `page.errors`), closed with its browser at the end."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium_path())
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            page.errors = PageErrors(page)
            yield page
        finally:
            await browser.close()


async def sign_in(page, gateway, key: str) -> None:
    """Open the console and sign in with `key`, as a user types it."""
    await page.goto(gateway.url + "/ui")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()


async def shot(page, name: str) -> None:
    """With CORTEX_CONSOLE_SHOTS=DIR, the page's screenshot as DIR/name.png (docs/console's are taken so)."""
    if folder := os.environ.get("CORTEX_CONSOLE_SHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
