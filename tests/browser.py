"""Headless Chromium for tests: Debian's `chromium` driven by Selenium through Debian's
`chromium-driver` (one source package, so the two versions always match; nothing is downloaded)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
MISSING = None if os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK) else (
    "Debian's chromium and chromium-driver are not installed (make test installs them as root: "
    "apt-get install chromium chromium-driver)")
# no network, no background services: this machine's closed network refuses them
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,900")


def chromium(profile: Path):
    """A headless Chromium WebDriver with a fresh profile folder (call `.quit()` when done)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
