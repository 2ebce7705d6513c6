"""Headless Chromium for the explorer's browser tests and screenshots: Debian's `chromium` driven by Selenium
through Debian's `chromedriver` (no browser download: Selenium Manager is never asked for one).

Flags as FACTS.md checked them on this machine: headless (new), no sandbox (we run as root), no GPU, no
background networking (the closed network refuses Chromium's own connections, many at a time), a fresh profile.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def why_no_browser() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (it is in the `dev` extra: make setup)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return (f"{path} not found: install Debian's {package} "
                    "(.ci/run does: apt-get install -y chromium chromium-driver)")
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A Selenium WebDriver on a fresh headless Chromium profile; quit and cleaned up on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="memsweep-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
