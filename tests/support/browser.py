"""Headless Chromium for the page tests (Debian packages ``chromium`` and ``chromium-driver``; Selenium).

:func:`headless_chrome` starts a driver with a throwaway profile and no background traffic; tests skip
with :data:`NEEDS_CHROMIUM` where the packages are missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
HAVE_CHROMIUM = CHROMIUM is not None and CHROMEDRIVER is not None
NEEDS_CHROMIUM = pytest.mark.skipif(
    not HAVE_CHROMIUM, reason="needs Debian packages: apt-get install -y chromium chromium-driver"
)

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def headless_chrome(tmp_path: Path, *flags: str) -> Any:
    """A Chrome WebDriver on headless Chromium, its profile under ``tmp_path``; ``flags`` are added."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*_FLAGS, *flags, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
