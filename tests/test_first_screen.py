"""What makes the first screen quick, through the Flask test client: the page's HTML holds its first screen's
layout (and the Tasks grid's first rows), which the browser draws before Dash's scripts have run and hands to
Dash; the first layout comes with the page the browser is on and the router does not render it again; the page fetches early what its first
screen needs; versioned assets, plotly.js too, are kept by the browser; every graph comes with its figure, and the
foot of the Analytics page is mounted after its first screen. In chromium with a profile on disk: a first visit
leaves the framework's code compiled in the browser's cache for the next. (bench/first_screen.py measures the
result.)"""
from __future__ import annotations

import gzip
import json
import re
import sqlite3
import types
from pathlib import Path

import pytest

import app as flowerbed_app
from components import analytics as view
from conftest import CHROMIUM, CHROMIUM_ARGS, watch_problems
from helpers import router_body, tasks, wait_for, wait_for_tasks, worker_status
from monitor.serving import compressed_once
from monitor.settings import load_settings


@pytest.fixture(params=["", "/flower"], ids=["root", "prefix"])
def dash_app(request, tmp_path):
    flags = ("--url-prefix", request.param) if request.param else ()
    settings = load_settings(["--broker", "memory://localhost/", "--db", str(tmp_path / "first.db"), *flags], environ={})
    dash_app = flowerbed_app.create_app(settings)
    yield dash_app
    dash_app.server.config["flowerbed_services"].stop()


def components(layout: dict) -> dict[str, dict]:
    """Each component of a layout's JSON with a string id, by id."""
    found, pending = {}, [layout]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict) and "props" in node:
            if isinstance(node["props"].get("id"), str):
                found[node["props"]["id"]] = node["props"]
            pending.extend(value for value in node["props"].values() if isinstance(value, (dict, list)))
    return found


def test_the_first_layout_comes_with_the_page_the_browser_is_on(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    address = f"{prefix}tasks?q=name%3Aadd"
    layout = components(client.get(f"{prefix}_dash-layout", headers={"Referer": f"http://localhost{address}"}).get_json())
    assert layout["page-address"]["data"] == f"{prefix}tasks?q=name:add"  # decoded: the HTML's own may differ
    assert "tasks-grid" in layout and layout["tasks-search"]["value"] == "name:add"
    # Without a Referer the router renders the page, as before.
    bare = components(client.get(f"{prefix}_dash-layout").get_json())
    assert bare["page-address"].get("data") is None and "tasks-grid" not in bare


def embedded(html: str, element_id: str):
    """The JSON a page's HTML holds in <script type="application/json" id=...>."""
    found = re.search(rf'<script type="application/json" id="{element_id}"[^>]*>(.*?)</script>', html, re.S)
    return json.loads(found.group(1)) if found else None


def test_the_page_comes_with_its_first_layout_and_the_tasks_grid_with_its_first_rows(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    address = f"{prefix}tasks?q=name%3Aadd"
    html = client.get(address).get_data(as_text=True)
    layout = components(embedded(html, "first-layout"))
    asked = components(client.get(f"{prefix}_dash-layout", headers={"Referer": f"http://localhost{address}"}).get_json())
    assert layout.keys() == asked.keys() and layout["page-address"]["data"] == f"{prefix}tasks?q=name:add"
    assert layout["tasks-search"]["value"] == "name:add"
    assert layout["nav-tasks"]["className"] == "nav-link active" and layout["nav-dashboard"]["className"] == "nav-link"
    assert json.dumps(layout["collector-status"]["children"]) == json.dumps(asked["collector-status"]["children"])
    assert "status-text" in json.dumps(layout["collector-status"]["children"])
    assert embedded(html, "first-rows") == {"tasks-grid": []}  # an empty store
    assert f'data-address="{prefix}_dash-layout"' in html
    # The drawing's scripts come before Dash's, the theme's in the head; Dash does not add them again.
    for name in flowerbed_app.HEAD_ASSETS + flowerbed_app.FIRST_SCREEN_ASSETS:
        assert html.count(f'src="{prefix}assets/{name}?m=') == 1
    assert html.index("first_screen.js") < html.index("dash_renderer") and html.index("theme.js") < html.index("<body")
    dashboard = client.get(prefix).get_data(as_text=True)
    assert embedded(dashboard, "first-rows") == {} and "workers-grid" in components(embedded(dashboard, "first-layout"))
    # It holds data: the browser asks again rather than show a kept copy. A probe's HEAD, or a path under
    # api/ (a 404), costs no layout.
    assert client.get(address).headers["Cache-Control"] == "no-cache, private"
    assert client.get(f"{prefix}assets/first_screen.js").headers.get("Cache-Control") != "no-cache, private"
    for quiet in (client.head(prefix), client.get(f"{prefix}api/no-such-thing")):
        assert "first-layout" not in quiet.get_data(as_text=True)


def test_a_page_whose_store_cannot_be_read_now_comes_without_its_first_screen(dash_app, monkeypatch):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    services = dash_app.server.config["flowerbed_services"]

    def locked(*_args, **_kwargs):
        raise sqlite3.OperationalError("database is locked")
    # The page's own data cannot be read: the layout comes without the page, which the router renders later.
    monkeypatch.setattr(services.store, "brokers", locked)
    layout = components(embedded(client.get(f"{prefix}tasks").get_data(as_text=True), "first-layout"))
    assert "tasks-grid" not in layout and layout["page-address"].get("data") is None
    # Nothing can be read: no layout in the page; Dash asks for it, and the answer says why it cannot come.
    monkeypatch.setattr(services, "broker_stats", locked)
    answer = client.get(f"{prefix}tasks")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200 and embedded(html, "first-layout") is None
    assert "first_screen.js" in html and "dashAgGridFunctions.js" in html  # the grids still need their formatters
    assert client.get(f"{prefix}_dash-layout").status_code == 503


def test_the_router_shows_the_first_page_once_then_renders_each_navigation(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    first = client.post(f"{prefix}_dash-update-component",
                        json=router_body(f"{prefix}tasks", "?q=x", first_address=f"{prefix}tasks?q=x")).get_json()
    assert first["response"] == {"page-address": {"data": None}}  # the page stays as the layout brought it
    elsewhere = client.post(f"{prefix}_dash-update-component",
                            json=router_body(f"{prefix}analytics", "", first_address=f"{prefix}tasks?q=x")).get_json()
    assert "analytics-range" in json.dumps(elsewhere["response"]["page"]) and elsewhere["response"]["page-address"] == {"data": None}
    again = client.post(f"{prefix}_dash-update-component", json=router_body(f"{prefix}tasks", "?q=x")).get_json()
    assert "tasks-grid" in json.dumps(again["response"]["page"]) and "page-address" not in again["response"]


def test_every_page_fetches_the_grid_and_dropdown_code_with_its_scripts(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    for path in ("", "tasks", "analytics"):
        page = client.get(f"{prefix}{path}").get_data(as_text=True)
        for chunk in flowerbed_app.EARLY_CHUNKS:
            assert f'<link rel="preload" as="script" href="{prefix}_dash-component-suites/{chunk}">' in page
            assert client.get(f"{prefix}_dash-component-suites/{chunk}").status_code == 200


def test_versioned_assets_are_kept_and_others_revalidated(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    kept = "public, max-age=31536000, immutable"
    first = client.get(f"{prefix}assets/style.css?m=1.5", headers={"Accept-Encoding": "gzip"})
    assert first.headers["Cache-Control"] == kept
    again = client.get(f"{prefix}assets/style.css?m=1.5", headers={"Accept-Encoding": "gzip",
                                                                   "If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.headers["Cache-Control"] == kept  # the browser keeps what it holds
    assert client.get(f"{prefix}assets/style.css").headers.get("Cache-Control") != kept
    page = client.get(prefix).get_data(as_text=True)
    assert f'src="{prefix}assets/theme.js?m=' in page  # Dash links the assets it loads with their version


def test_plotly_js_is_named_by_its_version_and_kept_by_the_browser(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    page = client.get(prefix).get_data(as_text=True)
    config = json.loads(page.split('<script id="_dash-config" type="application/json">')[1].split("</script>")[0])
    address = config["plotlyjs_url"]
    assert address.startswith(f"{prefix}_dash-component-suites/plotly/package_data/plotly.v") and not config["serve_locally"]
    versioned = client.get(address)
    assert versioned.status_code == 200 and versioned.headers["Cache-Control"] == "max-age=31536000"
    assert versioned.get_data() == client.get(f"{prefix}_dash-component-suites/plotly/package_data/plotly.min.js").get_data()


@pytest.mark.parametrize("kind", ["package", "asset"])
def test_the_page_scripts_and_styles_are_gzipped_once_and_sent_with_their_own_etag(dash_app, monkeypatch, kind):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix
    compressions = []
    monkeypatch.setattr(compressed_once, "gzip", types.SimpleNamespace(  # this module's gzip only, not Flask-Compress's
        compress=lambda body, **options: compressions.append(len(body)) or gzip.compress(body, **options)))
    address = {"package": f"{prefix}_dash-component-suites/{flowerbed_app.EARLY_CHUNKS[0]}",
               "asset": f"{prefix}assets/style.css?m=1"}[kind]  # an asset: Flask sends it from its file
    raw = client.get(address).get_data()
    assert len(raw) > compressed_once.SMALLEST_KEPT and not compressions  # not asked for gzip: sent as it is
    first, again = (client.get(address, headers={"Accept-Encoding": "gzip, br"}) for _ in range(2))
    assert compressions == [len(raw)]  # the second request is answered from what the first compressed
    for answer in (first, again):
        assert answer.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in answer.headers["Vary"]
        assert gzip.decompress(answer.get_data()) == raw and answer.headers["ETag"].endswith(':gzip"')
        assert "Accept-Ranges" not in answer.headers  # a range would be of the file, not of this body
    unchanged = client.get(address, headers={"Accept-Encoding": "gzip", "If-None-Match": first.headers["ETag"]})
    assert unchanged.status_code == 304
    head = client.head(address, headers={"Accept-Encoding": "gzip, br, zstd"})  # the headers a GET gets
    assert [head.headers[h] for h in ("Content-Encoding", "ETag", "Content-Length")] == [
        first.headers[h] for h in ("Content-Encoding", "ETag", "Content-Length")]
    # A callback's answer is compressed by Flask-Compress as it leaves, never kept.
    layout = client.get(f"{prefix}_dash-layout", headers={"Accept-Encoding": "gzip", "Referer": f"http://localhost{prefix}analytics"})
    assert layout.headers["Content-Encoding"] == "gzip" and len(gzip.decompress(layout.get_data())) > compressed_once.SMALLEST_KEPT
    assert compressions == [len(raw)]


def test_every_graph_comes_drawn_and_the_analytics_foot_mounts_after_the_first_screen(dash_app):
    client, prefix = dash_app.server.test_client(), dash_app.config.requests_pathname_prefix

    def loading(figure):
        return any(note.get("text") == "Loading…" for note in figure["layout"].get("annotations", []))

    def below_first_screen(node) -> dict:
        """The components inside the layout's BelowFirstScreen, by id."""
        if isinstance(node, list):
            return {key: value for child in node for key, value in below_first_screen(child).items()}
        if not isinstance(node, dict) or "props" not in node:
            return {}
        if node["type"] == "BelowFirstScreen":
            assert node["namespace"] == "flowerbed"
            return components(node)
        return below_first_screen([value for value in node["props"].values() if isinstance(value, (dict, list))])

    for path, graphs in (("analytics", view.GRAPHS), ("", view.DASHBOARD_GRAPHS)):
        address = f"http://localhost{prefix}{path}"
        layout = client.get(f"{prefix}_dash-layout", headers={"Referer": address}).get_json()
        found = components(layout)
        assert not any(loading(found[graph]["figure"]) for graph in graphs)
        foot = below_first_screen(layout)
        if path == "analytics":
            assert sorted(graph for graph in graphs if graph in foot) == sorted(view.GRAPHS[4:])
            assert all(grid in foot for grid in view.CSV_GRIDS)
        else:
            assert not foot  # the Dashboard fits its first screen


def compiled_code_sizes(profile: Path) -> dict[str, int]:
    """The size of the largest entry of chromium's code cache in `profile` for each script, by its address
    (a script can have several)."""
    sizes = {}
    for entry in (profile / "Default" / "Code Cache" / "js").glob("*"):
        if entry.is_file():
            data = entry.read_bytes()
            start = data.find(b"http://")
            if start >= 0:
                address = data[start:].split(b"\n")[0].split(b" ")[0].split(b"\x00")[0]
                address = address.decode("ascii", "replace")
                sizes[address] = max(sizes.get(address, 0), entry.stat().st_size)
    return sizes


WARMED = "JSON.parse(localStorage.getItem('flowerbed-warmed-scripts')).warmed"
FORGET_AG_GRID = """(() => {
    const kept = JSON.parse(localStorage.getItem('flowerbed-warmed-scripts'));
    kept.warmed = kept.warmed.filter(address => !address.includes('dash_ag_grid.v'));
    localStorage.setItem('flowerbed-warmed-scripts', JSON.stringify(kept));
})()"""
ANOTHER_RELEASE = """(() => {
    const kept = JSON.parse(localStorage.getItem('flowerbed-warmed-scripts'));
    localStorage.setItem('flowerbed-warmed-scripts', JSON.stringify({...kept, release: 'an earlier one'}));
})()"""


@pytest.mark.browser
def test_a_first_visit_leaves_the_framework_code_compiled_for_the_next(browser, flowerbed_server, redis_url, tmp_path):
    """Chrome keeps the code it compiled from a script only once it ran the script twice. Once the
    Dashboard has settled, assets/warm_code.js has run its framework scripts again in hidden frames, so
    after that one visit the browser's cache holds plotly.js compiled, not just the note that it was
    seen once. The next visit warms nothing; one after a bundle changed warms the page's scripts again,
    all of them, in their order."""
    server = flowerbed_server(redis_url)
    profile, problems = tmp_path / "profile", []

    def plotly_compiled() -> bool:  # seen once, an entry is a note of a few hundred bytes; compiled, megabytes
        return any("/plotly/" in address and size > 500_000 for address, size in compiled_code_sizes(profile).items())

    def visit(before_leaving=lambda page: None) -> int:
        """The hidden frames a settled visit to the Dashboard ran, in the browser kept in `profile`."""
        context = browser.browser_type.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = context.new_page()
            watch_problems(page, problems)
            page.on("pageerror", lambda error: problems.append(str(error)))  # a hidden frame's too
            page.goto(f"{server}/")
            page.wait_for_selector(".dash-graph .main-svg", timeout=30_000)
            page.wait_for_function(f"document.documentElement.dataset.codeWarmed === 'true' && ({WARMED})"
                                   ".some(address => address.includes('/plotly/'))", timeout=60_000)
            assert page.evaluate("document.querySelectorAll('iframe').length") == 0  # each frame goes once run
            before_leaving(page)
            return page.evaluate("performance.getEntriesByName('flowerbed-code-warm-up').length")
        finally:
            context.close()

    assert visit(lambda page: wait_for(plotly_compiled, 30, "plotly.js compiled in the code cache")) >= 2
    assert visit(lambda page: page.evaluate(FORGET_AG_GRID)) == 0
    # The page's scripts run together, in their order, when one of them is not warmed: AG Grid's needs React.
    assert visit(lambda page: page.evaluate(ANOTHER_RELEASE)) == 1
    assert visit() >= 2  # a release starts afresh, split code too (its addresses stay the same)
    assert not problems, problems



@pytest.mark.browser
def test_the_first_screen_shows_the_data_before_dash_runs_and_gives_way_to_the_live_page(
        browser, flowerbed_server, celery_worker, redis_url, open_page):
    """Real Redis, a real worker: with Dash's renderer held back, the page still shows the worker and the task
    (drawn from its HTML, a task's "</script>" in its args included); in full, the live grid replaces that
    drawing once it holds its rows, and Dash never asks for the layout the page came with."""
    broker = redis_url.rsplit("/", 1)[0] + "/9"  # a Redis database of its own: other modules' tasks stay out
    server = flowerbed_server(broker)
    worker = celery_worker(broker, "first@screen")
    wait_for(lambda: worker_status(server, worker.hostname), 20, f"{worker.hostname} online")
    uuid = worker.send("sample.add", "</script><b>", "x")
    wait_for_tasks(server, {uuid: "SUCCESS"})

    for width, path, shown in ((1440, "", worker.hostname), (1440, "tasks", uuid), (390, "tasks", "sample.add")):
        context = browser.new_context(viewport={"width": width, "height": 900})
        try:
            still = context.new_page()
            still.route(re.compile("dash_renderer"), lambda route: route.abort())
            still.goto(f"{server}/{path}")
            still.locator("#first-screen td", has_text=shown).first.wait_for(timeout=20_000)
            assert still.evaluate("document.getElementById('first-screen').inert")
            assert still.evaluate("document.querySelectorAll('#first-screen [id]').length") == 0  # no id twice
            assert still.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            if path == "tasks":
                assert still.locator("#first-screen .nav-link.active").inner_text() == "Tasks"
                args = still.locator("#first-screen td", has_text="('</script><b>', 'x')")  # args, shown where it fits
                assert args.count() == (width > 1000)
        finally:
            context.close()

    # A drawing that fails (here without the grids' functions) leaves the live page to show as it comes.
    context = browser.new_context()
    try:
        broken = context.new_page()
        broken.route(re.compile("dashAgGridFunctions"), lambda route: route.abort())
        broken.goto(f"{server}/")
        broken.wait_for_selector(f'#workers-grid .ag-row[row-id="{worker.hostname}"]')
        assert broken.evaluate("!document.getElementById('first-screen')"
                               " && !document.documentElement.classList.contains('first-screen-shown')")
    finally:
        context.close()

    page = open_page()
    layout_requests = []
    page.on("request", lambda request: layout_requests.append(request.url) if "_dash-layout" in request.url else None)
    # When the drawing came and went, against the live grid's first row.
    page.add_init_script("""new MutationObserver(() => {
        const seen = window.firstScreenSeen = window.firstScreenSeen || {};
        const picture = document.getElementById('first-screen'), live = document.querySelector('#tasks-grid .ag-row[row-id]');
        if (picture && seen.drawn === undefined) { seen.drawn = performance.now(); seen.liveThen = !!live; }
        if (!picture && seen.drawn !== undefined && seen.gone === undefined) { seen.gone = performance.now(); seen.liveAtGone = !!live; }
      }).observe(document, {childList: true, subtree: true});""")
    page.goto(f"{server}/tasks")
    page.wait_for_selector(f'#tasks-grid .ag-row[row-id="{uuid}"]')
    page.wait_for_function("window.firstScreenSeen && window.firstScreenSeen.gone !== undefined")
    seen = page.evaluate("window.firstScreenSeen")
    assert not seen["liveThen"] and seen["liveAtGone"] and seen["gone"] > seen["drawn"], seen
    assert not page.evaluate("document.documentElement.classList.contains('first-screen-shown')")
    assert page.locator("#tasks-grid").is_visible() and page.locator("#nav-tasks").get_attribute("class") == "nav-link active"
    assert layout_requests == []
    # A navigation in the page renders the next page as before.
    page.click("#nav-dashboard")
    page.wait_for_selector(f'#workers-grid .ag-row[row-id="{worker.hostname}"]')
    assert layout_requests == [] and worker.hostname in tasks(server)[uuid]["worker"]
