"""Headless Chromium (Debian's, driven by Playwright) for the tests that look at a UI as
a person would, and keep screenshots of it in tests/artifacts/."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A new page of a headless Chromium, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def screenshot(url: str, path: Path, wait_text: str, timeout_ms: int = 60_000) -> Path:
    """Open ``url``, wait until ``wait_text`` shows, save the page as ``path`` (PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with browser_page() as page:
        page.goto(url)
        page.get_by_text(wait_text).first.wait_for(timeout=timeout_ms)
        page.wait_for_timeout(1500)  # the page polls its server: it never goes network-idle
        page.screenshot(path=str(path), full_page=True)
    return path
