"""Screenshots of the studio in headless Chromium (the browser tests/test_web.py drives).

    python benchmarks/studio_screenshots.py RUN [--out docs/results] [--chromium /usr/bin/chromium]

Serves RUN on 127.0.0.1 and saves, at 1280x900:
  web-studio-seeds.png     twelve seeds, each at a whole multiple of its resolution
  web-studio-loading.png   a request under way: the images dim, a spinner says "Rendering"
  web-studio-plane.png     the seed plane: its grid points' seeds as thumbnails, a blended point
  web-studio-strip.png     an interpolation strip below the grid
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from animegen.web.app import BackgroundServer, create_app
from animegen.web.studio import Studio

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def rendered(page) -> None:
    page.wait_for_function("() => document.querySelector('#busy').hidden")
    page.wait_for_timeout(300)  # images decoded and painted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as work, BackgroundServer(create_app(Studio([args.run], [], "cpu", work))) as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector("#grid img")
        page.locator("#count").fill("12")
        page.dispatch_event("#count", "input")
        rendered(page)
        page.screenshot(path=out / "web-studio-seeds.png")

        gate = {"open": False, "held": []}  # requests wait until the screenshot is taken
        page.route("**/api/generate", lambda route: route.continue_() if gate["open"] else gate["held"].append(route))
        page.fill("#seed", "40")
        page.dispatch_event("#seed", "change")
        page.wait_for_selector("#busy:not([hidden])")
        page.screenshot(path=out / "web-studio-loading.png")
        gate["open"] = True
        for route in gate["held"]:
            route.continue_()
        rendered(page)

        box = page.locator("#plane").bounding_box()
        page.mouse.move(box["x"] + 24 + 1.4 * 48, box["y"] + 24 + 2.6 * 48)
        page.mouse.down()
        page.mouse.up()
        page.wait_for_function("() => document.querySelector('#grid figcaption').textContent.startsWith('plane')")
        rendered(page)
        page.wait_for_timeout(1500)  # the grid points' thumbnails
        page.screenshot(path=out / "web-studio-plane.png")

        page.click("#plane-off")
        page.click("#interpolate")
        page.wait_for_selector("#strip-box:not([hidden])")
        rendered(page)
        page.screenshot(path=out / "web-studio-strip.png", full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
