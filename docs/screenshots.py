"""The screenshots in docs/screenshots/: every page at 1440, 1024 and 390 px wide, light and dark.

    python docs/screenshots.py                 # needs the bench extras: pip install -e '.[bench]'
    python docs/screenshots.py --only analytics --widths 390

Runs the cluster of bench/questions.py (the demo's workers and traffic plus a full batch worker, on a
private redis-server, with two days of seeded history: a task slower than yesterday, a failure since
yesterday, a stuck and a waiting task), revokes one task so that the Audit page has an entry, and
saves each page as <page>-<width>-<light|dark>.png with Debian's chromium: the page's top, at most
MAX_HEIGHT px tall (the theme is the browser's colour scheme, as a first visit sees it), once their
data, charts and grids are drawn. Files are optimised with optipng when it is installed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import questions  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
WIDTHS = {1440: 900, 1024: 768, 390: 844}  # width: viewport height
MAX_HEIGHT = 2400
WORKER = questions.BATCH_WORKER
# (file name, path, what on the page means its data is there); {task} is a failed task's uuid.
PAGES = (
    ("dashboard", "/", "#workers-grid .ag-row .ag-cell[col-id='hostname']"),
    ("tasks", "/tasks", "#tasks-grid .ag-center-cols-container .ag-row"),
    ("task", "/task/{task}", "text=Traceback"),
    ("analytics", "/analytics", "#analytics-compare .ag-row"),
    ("worker", f"/worker/{WORKER}", "#worker-live tr"),
    ("broker", "/broker", "#broker-live tr"),
    ("audit", "/audit", "#audit-table tbody tr"),
)
# Every grid with rows to show has drawn some in its visible part.
GRIDS_DRAWN = """() => [...document.querySelectorAll('.ag-root-wrapper')].every(
    grid => grid.querySelector('.ag-overlay-no-rows-center') || grid.querySelector('.ag-row .ag-cell'))"""
CHARTS_DRAWN = """() => [...document.querySelectorAll('.js-plotly-plot')].every(
    p => p.layout && !(p.layout.annotations || []).some(a => a.text === 'Loading…'))"""


def live_failure(base: str) -> str | None:
    """The latest failure of the live traffic (it carries a real traceback), None before the first."""
    with urllib.request.urlopen(f"{base}/api/tasks?state=FAILURE&taskname=payments.charge&limit=1"
                                "&sort_by=-received", timeout=10) as response:
        latest = next(iter(json.loads(response.read())), None)
    return None if latest is None or latest.startswith("seed-") else latest


def revoke(base: str, uuid: str) -> None:
    request = urllib.request.Request(f"{base}/api/task/revoke/{uuid}", data=b"", method="POST")
    urllib.request.urlopen(request, timeout=30).close()


# The live page has taken the place of its picture (assets/first_screen.js).
LIVE = "() => !document.getElementById('first-screen')"
# The page's height once it has not changed for a second (at most 10 s of waiting).
SETTLED_HEIGHT = """() => new Promise(resolve => {
    let last = -1, same = 0, ticks = 0;
    const timer = setInterval(() => {
        const height = document.body.scrollHeight;
        same = height === last ? same + 1 : 0;
        last = height;
        if (same >= 4 || ++ticks >= 40) { clearInterval(timer); resolve(height); }
    }, 250);
})"""


def fit_to_page(page, width: int) -> None:
    """A viewport as tall as the page (up to MAX_HEIGHT), once the page stops growing: a full-page capture
    stretches the window while shooting, and the grids had no time to draw their rows in it. Parts filled
    after the charts lengthen the page (the Dashboard's rows were cut off)."""
    for _ in range(5):
        height = min(page.evaluate(SETTLED_HEIGHT), MAX_HEIGHT)
        if height == page.viewport_size["height"]:
            return
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_function(GRIDS_DRAWN)


def shoot(browser, base: str, pages, widths, task: str) -> list[Path]:
    saved = []
    for theme in ("light", "dark"):
        for width in widths:
            context = browser.new_context(viewport={"width": width, "height": WIDTHS[width]}, color_scheme=theme)
            page = context.new_page()
            page.set_default_timeout(60_000)
            for name, path, ready in pages:
                page.goto(base + path.format(task=task))
                page.wait_for_selector(ready, state="attached")
                page.wait_for_function(LIVE)
                page.wait_for_function(CHARTS_DRAWN)
                fit_to_page(page, width)
                target = OUT / f"{name}-{width}-{theme}.png"
                page.screenshot(path=target)
                saved.append(target)
                page.set_viewport_size({"width": width, "height": WIDTHS[width]})
            context.close()
    return saved


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="page names (default: all)")
    parser.add_argument("--widths", nargs="*", type=int, default=list(WIDTHS), choices=list(WIDTHS))
    args = parser.parse_args()
    pages = [page for page in PAGES if not args.only or page[0] in args.only]
    OUT.mkdir(exist_ok=True)
    with questions.running_scenario("flowerbed-screenshots-") as base:
        revoke(base, questions.WAITING_UUID)
        # Live failures are rare (8 % of payments.charge, one name of the traffic): a run of 2026-12-06 saw none
        # within 3 minutes.
        deadline = time.monotonic() + 600
        while (task := live_failure(base)) is None:
            if time.monotonic() > deadline:
                raise SystemExit("no task of the live traffic failed within 10 minutes")
            time.sleep(1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=questions.CHROMIUM,
                                                 args=["--no-sandbox", "--disable-gpu"])
            saved = shoot(browser, base, pages, args.widths, task)
            browser.close()
    if shutil.which("optipng"):
        subprocess.run(["optipng", "-quiet", "-o2", *map(str, saved)], check=True)
    print("\n".join(str(path.relative_to(ROOT)) for path in saved))


if __name__ == "__main__":
    main()
