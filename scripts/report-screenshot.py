#!/usr/bin/env python3
"""Screenshot a page of a discover report in headless Chromium (for docs/report.png).

Needs Debian's ``chromium`` and ``chromium-driver`` (``make system-deps`` as root) and
selenium (the ``dev`` extra). Example, after ``make demo``::

    .venv/bin/python scripts/report-screenshot.py runs/demo/report docs/report.png
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
from pathlib import Path


def screenshot(page: Path, out: Path, width: int = 1280, max_height: int = 2400) -> None:
    """Write a PNG of ``page`` (top ``max_height`` pixels of the full page) to ``out``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        raise FileNotFoundError(
            "chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--window-size={width},1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(page.resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        clip = {"x": 0, "y": 0, "width": width, "height": min(height, max_height), "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
    finally:
        driver.quit()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="report folder (or one of its .html pages)")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--max-height", type=int, default=2400)
    args = parser.parse_args(argv)
    page = args.report / "index.html" if args.report.is_dir() else args.report
    if not page.is_file():
        print(f"error: no report page {page}", file=sys.stderr)
        return 2
    try:
        screenshot(page, args.out, args.width, args.max_height)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
