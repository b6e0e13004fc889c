"""A real browser for the console tests: Debian's chromium, driven through its
chromedriver by selenium, inside a namespace, with a screenshot when a test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

from daemon.lab.netns import Namespace, in_namespace

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("LOCKGATE_ARTIFACTS", "/tmp/lockgate-artifacts"))
"""Where a failed browser test leaves its screenshot and page source."""


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists() and shutil.which(Path(path).name) is None:
            return f"needs {path} (Debian package {package})"
    return None


@contextlib.contextmanager
def browser(ns: Namespace, workdir: Path, name: str) -> Iterator[webdriver.Chrome]:
    """Chromium in namespace `ns` (the calling thread enters it for the whole block, so
    chromedriver, chromium and selenium's own connections all live there). Downloads go
    to `workdir/downloads`. If the block raises, a screenshot and the page's source are
    saved under ARTIFACTS (named after `name`) before the browser stops."""
    downloads = workdir / "downloads"
    downloads.mkdir(exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                f"--user-data-dir={workdir / 'chromium'}",
                # The console's certificate is the self-signed one the daemon just made.
                "--ignore-certificate-errors", "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    with in_namespace(ns.name):
        service = Service(CHROMEDRIVER, log_output=str(workdir / "chromedriver.log"))
        driver = webdriver.Chrome(service=service, options=options)
        try:
            yield driver
        except BaseException:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(WebDriverException):
                driver.save_screenshot(str(ARTIFACTS / f"{name}-failure.png"))
                (ARTIFACTS / f"{name}-failure.html").write_text(driver.page_source)
            raise
        finally:
            with contextlib.suppress(WebDriverException):
                driver.quit()
            process = service.process
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(5)


def wait_for(check: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    """The first true value of `check()` within `timeout`, else AssertionError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(WebDriverException):
            value = check()
            if value:
                return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
