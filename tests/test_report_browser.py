"""The HTML report in a real headless Chromium (Debian ``chromium`` + ``chromium-driver``).

Every page must load from disk without console errors, every ``<img>`` must render, and no
hostile concept string may run as script. A screenshot of the overview is kept as a test
artifact in ``build/test-artifacts/report.png``.
"""

import base64
import contextlib
import os
import shutil
from pathlib import Path

import pytest

from _report_data import QUOTES, SCRIPT, build_sections
from discover.report.writer import write_report

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
INSTALL = (
    "install them with `sudo apt-get install chromium chromium-driver` (Debian), or run "
    "`make system-deps` as root; `make test` does this when it can"
)


def _executable(env: str, *names: str) -> str | None:
    for candidate in (os.environ.get(env), *names):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@contextlib.contextmanager
def chromium():
    """A headless Chromium WebDriver session; fails (never skips) when Chromium is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the browser test needs selenium: `pip install -e .[dev]` installs it")
    chromium = _executable("CHROMIUM", "chromium", "chromium-browser", "google-chrome")
    driver_path = _executable("CHROMEDRIVER", "chromedriver")
    if chromium is None or driver_path is None:
        missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver_path)) if not p]
        pytest.fail(f"headless Chromium test: {' and '.join(missing)} not found; {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless",
        "--no-sandbox",  # we may run as root (CI)
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sections, explanations, _ = build_sections()
    out = tmp_path_factory.mktemp("browser") / "report"
    write_report(out, sections, explanations=explanations, meta={"test": "browser"}, progress=False)
    return out


def full_page_png(driver, width: int = 1280, max_height: int = 8000) -> bytes:
    """A PNG of the whole page (not only the viewport), through the DevTools protocol."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    clip = {"x": 0, "y": 0, "width": width, "height": min(height, max_height), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    return base64.b64decode(shot["data"])


IMAGES = """return Array.from(document.images).map(
    im => [im.getAttribute('src'), im.complete, im.naturalWidth, im.naturalHeight]);"""


def test_every_page_loads_cleanly_and_renders_its_images(report, tmp_path):
    with chromium() as browser:
        _check_pages(browser, report, tmp_path)


def _wait_until_loaded(browser) -> None:
    """Wait for the page's load event (every image decoded or failed), not for a time.

    ``browser.get`` can return while the document is still ``interactive`` on a loaded
    machine; the timeout is only a safety net for a page that never finishes.
    """
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout=120, poll_frequency=0.05).until(
        lambda b: b.execute_script("return document.readyState") == "complete"
    )


def _check_pages(browser, report, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException

    pages = sorted(report.rglob("*.html"))
    assert len(pages) == 1 + 4 + 4  # overview, 2 sections x 2 layers, 4 explanations
    browser.get_log("browser")  # start from an empty console
    rendered = heatmaps = 0
    for page in pages:
        browser.get(page.as_uri())
        _wait_until_loaded(browser)
        with pytest.raises(NoAlertPresentException):
            _ = browser.switch_to.alert.text  # the hostile concept never ran
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, f"{page.relative_to(report)}: console errors {errors}"
        images = browser.execute_script(IMAGES)
        broken = [src for src, complete, w, h in images if not (complete and w > 0 and h > 0)]
        assert not broken, f"{page.relative_to(report)}: images that did not render: {broken}"
        rendered += len(images)
        heatmaps += browser.execute_script("return document.querySelectorAll('img.heatmap').length")
        if page.name == "index.html" and page.parent == report:
            body = browser.find_element("tag name", "body").text
            assert SCRIPT in body and QUOTES in body  # shown as text, never run as markup
            assert browser.title == "DISCOVER report"
    assert rendered > 100
    assert heatmaps > 20  # the conv layers' galleries show where units fired (issue 23)

    browser.get((report / "index.html").as_uri())
    _wait_until_loaded(browser)
    shot = tmp_path / "report.png"
    shot.write_bytes(full_page_png(browser))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report.png")
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and im.size[1] >= 600
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 50  # a real page, not blank


def check_heatmaps_in_browser(pages: list[Path]) -> int:
    """Load each page in headless Chromium, wait for it, and check that it has no console
    errors and every image rendered; returns how many ``img.heatmap`` the pages hold."""
    heatmaps = 0
    with chromium() as browser:
        browser.get_log("browser")
        for page in pages:
            browser.get(page.resolve().as_uri())
            _wait_until_loaded(browser)
            errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert not errors, f"{page}: console errors {errors}"
            images = browser.execute_script(IMAGES)
            broken = [src for src, complete, w, h in images if not (complete and w > 0 and h > 0)]
            assert not broken, f"{page}: images that did not render: {broken}"
            heatmaps += browser.execute_script(
                "return document.querySelectorAll('img.heatmap').length"
            )
    return heatmaps
