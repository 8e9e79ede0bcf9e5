"""A full-page screenshot of a report.html, as docs/images/report.png (shown in docs/report.md) was taken.

    .venv/bin/deploykit build --target intel-cpu,arm-cpu --out /tmp/html-demo
    .venv/bin/deploykit report /tmp/html-demo --html
    .venv/bin/python tools/screenshot_report.py /tmp/html-demo/report.html docs/images/report.png

Drives Debian's chromium (tools/setup/system_packages.sh installs it) through Playwright; the PNG is stored with a
256-colour palette, which keeps a page of flat plots small enough for a repository.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def screenshot(page_path: Path, png_path: Path, width: int) -> Path:
    """Open the page from disk at `width` CSS pixels and write the whole page, top to bottom, as a palette PNG."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(page_path.resolve().as_uri())
        captured = page.screenshot(full_page=True)
        browser.close()
    image = Image.open(io.BytesIO(captured)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(png_path, optimize=True)
    return png_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="a report.html")
    parser.add_argument("png", type=Path, help="where to write the screenshot")
    parser.add_argument("--width", type=int, default=1100, help="viewport width in CSS pixels (default 1100)")
    arguments = parser.parse_args()
    print(screenshot(arguments.page, arguments.png, arguments.width))


if __name__ == "__main__":
    main()
