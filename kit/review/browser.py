"""A headless Chromium for the review pages: the browser tests, bench/review.py and screenshots.

Debian's ``chromium`` and ``chromium-driver`` packages (``apt-get install chromium chromium-driver``) driven by
Selenium (the ``dev`` extra), with the driver's path given, so Selenium never downloads a browser. The flags keep
a closed network quiet (no background requests, no component updates) and every run gets a fresh profile.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

BROWSERS = ("chromium", "chromium-browser", "google-chrome")  # looked up on PATH, in this order
DRIVERS = ("chromedriver",)
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def _find(env: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if path:
            return path
    return None


def find_browser() -> tuple[str | None, str | None, str]:
    """(browser path, driver path, why not): ``$KIT_CHROMIUM`` / ``$KIT_CHROMEDRIVER`` win, else PATH and
    /usr/bin; ``why not`` is empty when both were found (and Selenium imports), else says what to install."""
    browser, driver = _find("KIT_CHROMIUM", BROWSERS), _find("KIT_CHROMEDRIVER", DRIVERS)
    try:
        import selenium  # noqa: F401
    except ImportError:
        return browser, driver, "selenium is not installed (pip install -e '.[dev]')"
    missing = [what for what, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    if missing:
        return browser, driver, (f"no {' and no '.join(missing)} found: apt-get install -y chromium chromium-driver "
                                 "(or set KIT_CHROMIUM / KIT_CHROMEDRIVER)")
    return browser, driver, ""


@contextmanager
def headless_chrome(download_dir: str | Path | None = None, size: tuple[int, int] = (1400, 1000)) -> Iterator:
    """A started Selenium Chrome driver on Chromium, headless, quit (and its fresh profile folder removed) on exit;
    downloads land in ``download_dir``. Raises RuntimeError saying what to install."""
    browser, driver, why = find_browser()
    if why:
        raise RuntimeError(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="kit-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={size[0]},{size[1]}")
    opts.add_argument(f"--user-data-dir={profile}")
    if download_dir is not None:
        opts.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                               "download.prompt_for_download": False})
    try:
        chrome = webdriver.Chrome(service=Service(driver), options=opts)
        try:
            if download_dir is not None:
                chrome.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow",
                                                                        "downloadPath": str(download_dir)})
            yield chrome
        finally:
            chrome.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
