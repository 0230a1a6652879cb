"""First screen: how long each page takes from navigation to data on screen, and how many bytes it moves,
Flowerbed's pages and Flower's, watching the same cluster in the same run.

    python bench/first_screen.py                 # 5 profiles per page: first, second and returning visits
    python bench/first_screen.py --repeats 9 --tasks 500

A private redis-server carries a cluster of three workers (the demo's workers and traffic, in a process
of their own); Flowerbed (`flowerbed --broker ...`, its own SQLite file) and Flower 2.2 (`celery flower`)
both watch it. Once both list the tasks sent, Debian's chromium loads each page (Dashboard, Tasks,
Analytics, a worker's page and the Broker page; Flower's pages of the same kind), three times in a new
browser profile kept on disk, as a real browser keeps it:
  first      the first visit: nothing cached
  second     the scripts come from the browser's cache; Chrome compiles them again unless the page ran them
             twice in the first visit (Flowerbed's warm-up, assets/warm_code.js)
  returning  the third and every later visit: Chrome also keeps the code it compiled from a script it ran
             twice (a new context of Playwright's, like a private window, never keeps compiled code)
A visit ends once its page has settled, as a reader stays a few seconds: for Flowerbed, once its warm-up is
done (<html data-code-warmed="true">). A visit with no data on screen within a minute is left out of the
medians, and said so on stderr with a screenshot of the page.
then, in that profile, from the Dashboard each page its menu link leads to (the Tasks, Analytics and
Broker pages; Flower's Tasks and Broker): "menu", timed from the click. The same visits of a stock Dash
app with nothing but a one-row table ("Dash text"), with the row in an AG Grid instead ("Dash grid") and
with the table and one plotly bar chart ("Dash chart") give the floor a Dash page starts from on this
machine, in the same run. It reports the median
over --repeats of:
  data ms    navigation start (or the click) to the first table row holding data on screen, in Flowerbed's
             first screen as drawn from the page's HTML (assets/first_screen.js) before its grids are up, or in
             the live page (Analytics: the numbers of its cards; after a click, the live page's grid ms)
  grid ms    navigation start (or the click) to the first table row holding data in the live page (Analytics' grids are all
             below its first screen, mounted after the charts above them: its first data is its charts in view)
  charts ms  navigation start to every chart on the page drawn with data (pages with charts)
  in view ms navigation start to every chart of the first screen (1440 x 900) drawn: "-" when all are below it
  kB moved   bytes over the wire (compressed, as the browser counts them: CDP's encodedDataLength)
  kB decoded the same bodies decompressed
  warm-up ms wall time of the longest of the warm-up's hidden frames after the first screen (Flowerbed's
             first visit; mostly one task, plotly.js's run, once per browser and release)
With --breakdown, each Flowerbed page's last first and returning visit is also printed as a timeline: every request
(the HTML, _dash-layout, _dash-dependencies, the JS bundles, plotly.js, each callback by its outputs) with
when it started and ended and how long the server took to answer (its time to first byte), the scripts the
browser ran for longer than a few milliseconds (Chrome's long-animation-frame entries), and the moments the
grid and the charts were filled.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from stream import PrivateRedis, free_port, print_table, stop_processes

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Data on screen: a table row that holds a task's uuid or a worker's name; charts past their placeholder.
ROW_WITH_DATA = """(selector, pattern) => [...document.querySelectorAll(selector)]
    .some(row => new RegExp(pattern).test(row.textContent))"""
CHARTS_DRAWN = """() => { const graphs = [...document.querySelectorAll('.dash-graph')];
    const plot = graph => graph.querySelector('.js-plotly-plot');
    const drawn = graph => plot(graph) && plot(graph).layout
        && !(plot(graph).layout.annotations || []).some(a => a.text === 'Loading…');
    return graphs.length > 0 && graphs.every(drawn) && graphs.some(graph => plot(graph).data.length > 0)
        && !document.querySelector('[data-mounted="false"]');  // a page's foot still to mount
}"""
# Kept by the page from its start: when every chart within the window (at least one) was first drawn.
CHARTS_IN_VIEW = """(() => {
    const drawn = graph => { const plot = graph.querySelector('.js-plotly-plot');
        return plot && plot.layout && !(plot.layout.annotations || []).some(a => a.text === 'Loading…'); };
    const look = () => {
        const shown = [...document.querySelectorAll('.dash-graph')]
            .filter(graph => graph.getBoundingClientRect().top < innerHeight);
        if (shown.length > 0 && shown.every(drawn)) { window.flowerbedChartsInView = performance.now(); }
        else if (performance.now() < 60000) { requestAnimationFrame(look); }
    };
    requestAnimationFrame(look);
})()"""
# A page has settled once Flowerbed's warm-up of compiled code is done (other systems have none).
SETTLED = "() => document.documentElement.getAttribute('data-code-warmed') !== 'false'"
WARM_UP_MS = """Math.max(0, ...performance.getEntriesByName("flowerbed-code-warm-up").map(run => run.duration)) || null"""
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-"
WORKER = "demo-(alpha|beta|gamma)@"
ONE_WORKER = "demo-alpha@flowerbed"
QUEUE = r"^\s*celery"  # the demo's queue, first in a row of a worker's queue table and of the broker's

# Flowerbed's first screen drawn from its HTML (assets/first_screen.js): a row of its tables holding data, or
# Analytics' numbers (its tables are below its first screen).
DRAWN = {"workers": ("#first-screen tr", WORKER), "tasks": ("#first-screen tr", UUID),
         "analytics": ("#first-screen .stat-value", r"\d"), "worker": ("#first-screen tr", QUEUE),
         "broker": ("#first-screen tr", QUEUE)}

# (system, page, path, row selector, row pattern, has charts)
PAGES = (
    ("Flowerbed", "workers", "/", "#workers-grid .ag-row", WORKER, True),
    ("Flowerbed", "tasks", "/tasks", "#tasks-grid .ag-center-cols-container .ag-row", UUID, False),
    ("Flowerbed", "analytics", "/analytics", "#analytics-stats .ag-row", r"\w+\.\w+", True),
    ("Flowerbed", "worker", f"/worker/{ONE_WORKER}", "#worker-live tr", QUEUE, True),
    ("Flowerbed", "broker", "/broker", "#broker-live tr", QUEUE, False),
    ("Flower", "workers", "/workers", "#workers-table tbody tr", WORKER, False),
    ("Flower", "tasks", "/tasks", "#tasks-table tbody tr", UUID, False),
    ("Flower", "worker", f"/worker/{ONE_WORKER}", "table tr", QUEUE, False),
    ("Flower", "broker", "/broker", "table tr", QUEUE, False),
    ("Dash", "text", "/text", "#floor-table tr", WORKER, False),
    ("Dash", "grid", "/grid", "#floor-grid .ag-row", WORKER, False),
    ("Dash", "chart", "/chart", "#floor-table tr", WORKER, True),
)
# The floor: a stock Dash app (served by Flask's own server, compressed as Flowerbed's) whose page at /grid
# shows the one row of /text in an AG Grid, and /chart adds one bar chart to it (the page is told by the
# layout request's Referer).
FLOOR = """
import sys, flask
import dash_ag_grid
from dash import Dash, dcc, html
app = Dash(__name__, compress=True)
WORKER = "demo-alpha@flowerbed"
def layout():
    page = flask.request.referrer.rsplit("/", 1)[-1] if flask.has_request_context() and flask.request.referrer else ""
    row = html.Table(html.Tr(html.Td(WORKER)), id="floor-table")
    if page == "grid":
        return dash_ag_grid.AgGrid(id="floor-grid", rowData=[{"worker": WORKER}], columnDefs=[{"field": "worker"}])
    if page == "chart":
        return html.Div([row, dcc.Graph(figure={"data": [{"type": "bar", "x": [1, 2, 3], "y": [3, 1, 2]}]})])
    return html.Div(row)
app.layout = layout
app.run(host="127.0.0.1", port=int(sys.argv[1]))
"""

CLUSTER = """
import sys, threading
from celery import Celery
from monitor.demo import DemoCluster
cluster = DemoCluster(Celery(broker=sys.argv[1]), tasks_per_second=float(sys.argv[2]))
cluster.start()
threading.Event().wait()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="browser profiles per page (median shown)")
    parser.add_argument("--tasks", type=int, default=300, help="tasks both monitors must list before measuring")
    parser.add_argument("--rate", type=float, default=20.0, help="tasks per second the cluster is sent")
    parser.add_argument("--breakdown", action="store_true", help="print where each Flowerbed page's time goes")
    parser.add_argument("--page", action="append", choices=sorted({page for _s, page, *_rest in PAGES}),
                        help="measure only this page (repeat for several; default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowerbed-first-screen-") as folder, PrivateRedis() as redis_server:
        processes = []
        try:
            bases = start_systems(redis_server.url, Path(folder), args.rate, processes)
            wait_for_tasks(bases, args.tasks)
            rows, timelines = measure(bases, args.repeats, args.page)
        finally:
            stop_processes(processes, timeout=10)
    if args.breakdown:
        print_timelines(timelines)
    print_results(rows, args)


def start_systems(broker: str, folder: Path, rate: float, processes: list) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ours, theirs, floor = free_port(), free_port(), free_port()
    logs = {name: open(folder / f"{name}.log", "wb") for name in ("cluster", "flowerbed", "flower", "floor")}
    processes.append(subprocess.Popen([sys.executable, "-c", CLUSTER, broker, str(rate)], env=env,
                                      stdout=logs["cluster"], stderr=subprocess.STDOUT))
    processes.append(subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "--broker", broker, "--port", str(ours),
                                       "--db", str(folder / "flowerbed.db")], env=env, cwd=folder,
                                      stdout=logs["flowerbed"], stderr=subprocess.STDOUT))
    processes.append(subprocess.Popen([sys.executable, "-m", "celery", "--broker", broker, "flower",
                                       f"--port={theirs}", "--address=127.0.0.1"], cwd=folder,
                                      env={**env, "FLOWER_UNAUTHENTICATED_API": "1"},  # its API, for wait_for_tasks
                                      stdout=logs["flower"], stderr=subprocess.STDOUT))
    processes.append(subprocess.Popen([sys.executable, "-c", FLOOR, str(floor)], cwd=folder,
                                      stdout=logs["floor"], stderr=subprocess.STDOUT))
    return {"Flowerbed": f"http://127.0.0.1:{ours}", "Flower": f"http://127.0.0.1:{theirs}",
            "Dash": f"http://127.0.0.1:{floor}"}


def task_count(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return len(json.loads(response.read()))
    except OSError:
        return 0


def serving(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).close()
        return True
    except OSError:
        return False


def wait_for_tasks(bases: dict[str, str], tasks: int, timeout: float = 600) -> None:
    """Until both monitors list `tasks` tasks and the floor's app answers."""
    deadline = time.monotonic() + timeout
    urls = [f"{bases['Flowerbed']}/api/tasks?limit={tasks}", f"{bases['Flower']}/api/tasks?limit={tasks}"]
    while min(task_count(url) for url in urls) < tasks or not serving(bases["Dash"]):
        if time.monotonic() > deadline:
            raise SystemExit(f"the monitors did not list {tasks} tasks, or the floor's app did not answer, within {timeout:.0f} s")
        time.sleep(1)


VISITS = ("first", "second", "returning")
# (system, page, the menu link from the Dashboard): a click in a loaded app, the everyday way to a page.
MENU = (("Flowerbed", "tasks", "#nav-tasks"), ("Flowerbed", "analytics", "#nav-analytics"),
        ("Flowerbed", "broker", "#nav-broker"),
        ("Flower", "tasks", "a.nav-link[href$='/tasks']"), ("Flower", "broker", "a.nav-link[href$='/broker']"))
DASHBOARD = {"Flowerbed": "/", "Flower": "/workers"}
FULL_LOADS = {"Flower"}  # its menu links load a new page; Flowerbed's only ask the server for the page's layout


def measure(bases: dict[str, str], repeats: int, pages: list[str] | None) -> tuple[list[dict], dict]:
    from playwright.sync_api import sync_playwright

    results, timelines = [], {}
    with sync_playwright() as playwright:
        for system, page_name, path, selector, pattern, charts in PAGES:
            if pages and page_name not in pages:
                continue
            samples = {visit: [] for visit in VISITS}
            for _ in range(repeats):
                with browser_profile(playwright) as context:
                    for visit in VISITS:
                        drawn = DRAWN[page_name] if system == "Flowerbed" else (selector, pattern)
                        sample, timeline = load(context, bases[system] + path, selector, pattern, charts, drawn)
                        samples[visit].append(sample)
                        if timeline:
                            timelines[system, page_name, visit] = timeline
            results += medians(system, page_name, samples)
        results += measure_menu(playwright, bases, repeats, pages)
    return results, timelines


@contextlib.contextmanager
def browser_profile(playwright):
    """A browser with a profile of its own on disk (cache and compiled code kept, as a user's browser does)."""
    with tempfile.TemporaryDirectory(prefix="flowerbed-first-screen-profile-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"],
            viewport={"width": 1440, "height": 900})
        context.add_init_script(CHARTS_IN_VIEW)
        try:
            yield context
        finally:
            context.close()


def medians(system: str, page_name: str, samples: dict[str, list[dict]]) -> list[dict]:
    return [{"system": system, "page": page_name, "visit": visit, **{
        key: statistics.median(values) if (values := [sample[key] for sample in loads if sample[key] is not None])
        else None for key in loads[0]}} for visit, loads in samples.items()]


def measure_menu(playwright, bases: dict[str, str], repeats: int, pages: list[str] | None) -> list[dict]:
    """From a loaded Dashboard (its scripts cached and compiled, as a returning visitor's), a click on the menu
    link of each page; timed from the click, in Python (a full load restarts the page's clock)."""
    targets = {(system, page_name): (selector, pattern, charts)
               for system, page_name, _path, selector, pattern, charts in PAGES}
    results = []
    for system, page_name, link in MENU:
        if pages and page_name not in pages:
            continue
        selector, pattern, charts = targets[system, page_name]
        samples = []
        for _ in range(repeats):
            with browser_profile(playwright) as context:
                for visit in VISITS:  # the Dashboard clicked in is a returning visit's
                    page = context.new_page()
                    page.goto(bases[system] + DASHBOARD[system])
                    page.wait_for_load_state("networkidle")
                    settle(page)
                    if visit != VISITS[-1]:
                        page.close()
                clicked = time.perf_counter()
                if system in FULL_LOADS:
                    with page.expect_navigation(wait_until="commit"):
                        page.click(link)
                else:
                    page.click(link)
                page.wait_for_function(f"() => ({ROW_WITH_DATA})({selector!r}, {pattern!r})", timeout=60_000,
                                       polling="raf")
                grid_ms = (time.perf_counter() - clicked) * 1000
                if charts:
                    page.wait_for_function(f"() => ({CHARTS_DRAWN})()", timeout=60_000, polling="raf")
                samples.append({"data ms": grid_ms, "grid ms": grid_ms, "charts ms": (time.perf_counter() - clicked) * 1000 if charts
                                else None, "in view ms": None, "kB moved": None, "kB decoded": None,
                                "warm-up ms": None})
        results += medians(system, page_name, {"menu": samples})
    return results


SAMPLE_KEYS = ("data ms", "grid ms", "charts ms", "in view ms", "kB moved", "kB decoded", "warm-up ms")


def load(context, url: str, selector: str, pattern: str, charts: bool, drawn: tuple[str, str]) -> tuple[dict, dict | None]:
    """One visit's figures (SAMPLE_KEYS) and timeline; all None, and no timeline, when no data came. `drawn`:
    the selector and pattern of data drawn before the live page's (DRAWN)."""
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    moved, decoded = [0], [0]
    requests = {}
    cdp.on("Network.loadingFinished", lambda event: moved.__setitem__(0, moved[0] + event["encodedDataLength"]))
    cdp.on("Network.dataReceived", lambda event: decoded.__setitem__(0, decoded[0] + event["dataLength"]))
    for kind in ("requestWillBeSent", "responseReceived", "loadingFinished"):
        cdp.on(f"Network.{kind}", lambda event, kind=kind: requests.setdefault(event["requestId"], {}).update({kind: event}))
    page.goto(url, wait_until="commit")
    # performance.now() counts from the navigation's start, in the page: no Python overhead included.
    try:
        data_ms, grid_ms, charts_ms = until_data(page, selector, pattern, charts, drawn)
    except Exception as exc:  # one visit gone wrong leaves the run's other figures standing
        shot = Path(tempfile.mkdtemp(prefix="first-screen-timeout-")) / "page.png"
        page.screenshot(path=str(shot))
        print(f"{url}: no data on screen within a minute ({type(exc).__name__}); this visit is left out of the "
              f"medians; the page as it was: {shot}", file=sys.stderr, flush=True)
        page.close()
        return dict.fromkeys(SAMPLE_KEYS), None
    page.wait_for_load_state("networkidle")
    # Bytes and timeline before the warm-up, which reads the scripts again
    sample = {"data ms": data_ms, "grid ms": grid_ms, "charts ms": charts_ms,
              "in view ms": page.evaluate("window.flowerbedChartsInView || null") if charts else None,
              "kB moved": moved[0] / 1000, "kB decoded": decoded[0] / 1000}
    timeline = {"requests": dict(requests), "scripts": page.evaluate(LONG_SCRIPTS), "data ms": data_ms,
                "grid ms": grid_ms, "charts ms": charts_ms}
    sample["warm-up ms"] = settle(page)
    page.close()
    return sample, timeline


def settle(page) -> float | None:
    """Waits until a page has settled (Flowerbed's warm-up of compiled code done; other systems have none);
    the warm-up ms (WARM_UP_MS)."""
    page.wait_for_function(SETTLED, timeout=60_000)
    return page.evaluate(WARM_UP_MS)


def until_data(page, selector: str, pattern: str, charts: bool, drawn: tuple[str, str]) -> tuple[float, float, float | None]:
    live = f"({ROW_WITH_DATA})({selector!r}, {pattern!r})"
    data_ms = page.wait_for_function(f"() => (({ROW_WITH_DATA})({drawn[0]!r}, {drawn[1]!r}) || {live}) && performance.now()",
                                     timeout=60_000, polling="raf").json_value()
    grid_ms = page.wait_for_function(f"() => {live} && performance.now()", timeout=60_000, polling="raf").json_value()
    charts_ms = (page.wait_for_function(f"() => ({CHARTS_DRAWN})() && performance.now()", timeout=60_000,
                                        polling="raf").json_value() if charts else None)
    return data_ms, grid_ms, charts_ms


# The scripts of every animation frame longer than 50 ms (Chrome keeps them from the page's start). The
# observer is never called when there was no such frame (a quick load): then there are none to report.
LONG_SCRIPTS = """() => new Promise(resolve => {
    const observer = new PerformanceObserver(list => {
        observer.disconnect();
        resolve(list.getEntries().flatMap(frame => frame.scripts).map(script => ({
            start: script.startTime, ms: script.duration, source: script.sourceURL, invoker: script.invoker})));
    });
    observer.observe({type: "long-animation-frame", buffered: true});
    setTimeout(() => { observer.disconnect(); resolve([]); }, 1000);
})"""
SHOWN_SCRIPT_MS = 5


def print_timelines(timelines: dict) -> None:
    for (system, page_name, visit), timeline in timelines.items():
        if system != "Flowerbed":
            continue
        events = sorted(request_events(timeline["requests"]) + script_events(timeline["scripts"])
                        + [(timeline["data ms"], timeline["data ms"], None, None, "data on screen")]
                        + [(timeline["grid ms"], timeline["grid ms"], None, None, "grid filled")]
                        + ([(timeline["charts ms"], timeline["charts ms"], None, None, "charts drawn")]
                           if timeline["charts ms"] else []))
        print_table(f"Where the time goes: {page_name}, {visit} (the last load; ms from the navigation's start; "
                    "server = time to first byte)", ("start", "end", "server", "kB moved", "what"), events)


def request_events(requests: dict) -> list[tuple]:
    sent = [request["requestWillBeSent"] for request in requests.values() if "requestWillBeSent" in request]
    origin = min(event["timestamp"] for event in sent)
    events = []
    for request in requests.values():
        if not {"requestWillBeSent", "responseReceived", "loadingFinished"} <= request.keys():
            continue
        asked, timing = request["requestWillBeSent"], request["responseReceived"]["response"].get("timing") or {}
        server = (timing["receiveHeadersStart"] - timing["sendEnd"]) if timing.get("sendEnd", -1) >= 0 else None
        events.append(((asked["timestamp"] - origin) * 1000, (request["loadingFinished"]["timestamp"] - origin) * 1000,
                       server, request["loadingFinished"]["encodedDataLength"] / 1000, request_name(asked["request"])))
    return events


def request_name(request: dict) -> str:
    path = request["url"].split("?")[0].rsplit("/", 1)[-1] or "/ (the page)"
    if path == "_dash-update-component" and request.get("postData"):
        output = json.loads(request["postData"]).get("output", "")
        return f"callback {output[:90]}"
    return path


def script_events(scripts: list[dict]) -> list[tuple]:
    return [(script["start"], script["start"] + script["ms"], None, None,
             f"script {script['source'].split('?')[0].rsplit('/', 1)[-1] or '(inline)'} ({script['invoker'][:60]})")
            for script in scripts if script["ms"] >= SHOWN_SCRIPT_MS]


def print_results(rows: list[dict], args) -> None:
    flower = {(row["page"], row["visit"]): row for row in rows if row["system"] == "Flower"}
    table = []
    for row in rows:
        baseline = flower.get((row["page"], row["visit"]))
        versus = (f"{row['data ms'] / baseline['data ms']:.2f}x" if baseline and baseline["data ms"] and row["data ms"]
                  and row["system"] != "Flower" else None)
        table.append((row["system"], row["page"], row["visit"], row["data ms"], versus, row["grid ms"], row["charts ms"],
                      row["in view ms"], row["kB moved"], row["kB decoded"], row["warm-up ms"]))
    print_table(f"First screen, median of {args.repeats} browser profiles per page and visit ({args.tasks}+ tasks "
                f"listed by both; the cluster sent {args.rate:g} tasks/s meanwhile)",
                ("system", "page", "visit", "data ms", "data vs Flower", "grid ms", "charts ms", "in view ms",
                 "kB moved", "kB decoded", "warm-up ms"), table)


if __name__ == "__main__":
    main()
