"""Every width and the keyboard, in Debian's chromium, on a private Redis with a real prefork celery
worker (pool of 2) and a worker that went offline, behind basic auth so the admin pages show: no
page overflows a phone and its menu button opens the navigation, the Tasks grid keeps the columns
that matter on a laptop, Tab, Enter and "/" work, and the Dashboard shows pool size, utilisation
and, through its online card's colour, the offline worker."""
from __future__ import annotations

import dataclasses

import pytest

from helpers import CeleryWorker, FlowerbedServer, RedisServer, Stack, wait_for, wait_for_tasks, worker_status

pytestmark = pytest.mark.browser

ADMIN = ("ada", "admin-pass")
WAIT_SECONDS = 20
POOL_SIZE = 2
TASK_ROWS = "#tasks-grid .ag-center-cols-container .ag-row"


@dataclasses.dataclass
class Cluster:
    server: FlowerbedServer
    worker: CeleryWorker  # prefork, POOL_SIZE processes
    gone: str  # the hostname of a worker that stopped
    task: str  # a finished task's UUID


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("widths")
    stack = Stack()
    try:
        redis = stack.add(RedisServer(tmp))
        server = stack.add(FlowerbedServer.start(redis.url, tmp / "flowerbed.db", tmp / "flowerbed.log",
                                                 "--inspect-seconds", "1", "--basic-auth", ":".join(ADMIN)))
        gone = stack.add(CeleryWorker(redis.url, "gone@widths", tmp, concurrency=1))
        wait_for(lambda: worker_status(server, gone.hostname, ADMIN), WAIT_SECONDS, "the second worker online")
        gone.stop()
        wait_for(lambda: worker_status(server, gone.hostname, ADMIN) is False, WAIT_SECONDS, "the second worker offline")
        worker = stack.add(CeleryWorker(redis.url, "pool@widths", tmp, concurrency=POOL_SIZE, pool="prefork"))
        wait_for(lambda: worker_status(server, worker.hostname, ADMIN), WAIT_SECONDS, "the prefork worker online")
        task = worker.send("sample.add", 2, 3)
        wait_for_tasks(server, {task: "SUCCESS"}, credentials=ADMIN)
        yield Cluster(server, worker, gone.hostname, task)
    finally:
        stack.stop_all()


def worker_cells(page, hostname: str) -> dict[str, str]:
    """The Dashboard's row of a worker: column id → text shown."""
    row = page.locator(f"#workers-grid .ag-center-cols-container .ag-row[row-id='{hostname}']")
    return {cell.get_attribute("col-id"): cell.inner_text() for cell in row.locator(".ag-cell").all()}


def test_the_dashboard_shows_pool_size_and_utilisation_and_the_offline_worker(open_page, cluster):
    page = open_page(ADMIN)
    page.goto(f"{cluster.server}/")
    page.wait_for_selector(f"#workers-grid .ag-row[row-id='{cluster.worker.hostname}']")
    wait_for(lambda: worker_cells(page, cluster.worker.hostname).get("concurrency") == str(POOL_SIZE), WAIT_SECONDS,
             f"the pool size from inspect; row {worker_cells(page, cluster.worker.hostname)}")
    assert worker_cells(page, cluster.worker.hostname)["utilisation"] == "0 %"
    running = [cluster.worker.send("sample.sleep", 8) for _ in range(POOL_SIZE)]
    wait_for(lambda: worker_cells(page, cluster.worker.hostname)["utilisation"] == "100 %", WAIT_SECONDS,
             f"both processes busy; row {worker_cells(page, cluster.worker.hostname)}")
    assert worker_cells(page, cluster.gone)["status"] == "Offline"
    assert worker_cells(page, cluster.gone)["utilisation"] == "—"  # an offline worker uses nothing
    assert page.inner_text("#stat-online") == "1 / 2"
    # The grid ends at its last row: AG Grid keeps 150 px for a grid as tall as its rows, a band under two workers.
    rows = page.locator("#workers-grid .ag-center-cols-container .ag-row").count()
    body = page.locator("#workers-grid .ag-body").bounding_box()["height"]
    assert (rows, body) == (2, 2 * 38)  # rowHeight 38 (components/workers.py)
    assert "tone-warn" in page.get_attribute("#stat-online-card", "class")
    wait_for_tasks(cluster.server, {uuid: "SUCCESS" for uuid in running}, credentials=ADMIN)


def test_at_390_px_no_page_is_wider_than_the_screen(open_page, cluster):
    page = open_page(ADMIN, width=390, height=800)
    pages = {"/": "#workers-grid .ag-row", "/tasks": f"{TASK_ROWS} [col-id=name]", f"/task/{cluster.task}": "#task-detail",
             "/analytics": "#analytics-throughput .main-svg", f"/worker/{cluster.worker.hostname}": "#worker-pool",
             "/broker": "#broker-page", "/audit": "#audit-search"}
    widths = {}
    for path, shown in pages.items():
        page.goto(f"{cluster.server}{path}")
        page.wait_for_selector(shown)
        widths[path] = page.evaluate("document.documentElement.scrollWidth")
    assert widths == {path: 390 for path in pages}
    # A custom range's two times share a line inside their panel (the second stood past its edge).
    page.goto(f"{cluster.server}/analytics?range=custom&from=2026-12-01 09:00&to=2026-12-01 10:00")
    page.wait_for_selector("#analytics-throughput .main-svg")
    panel, last = page.evaluate("""() => [document.querySelector('.analytics-controls'),
        document.querySelector('.time-input:has(#analytics-to)')]
        .map(element => element.getBoundingClientRect().right)""")
    assert last <= panel and page.evaluate("document.documentElement.scrollWidth") == 390
    for field in ("#analytics-from", "#analytics-to"):  # each time whole in its box
        assert page.eval_on_selector(field, "input => input.scrollWidth <= input.clientWidth"), field


def test_at_390_px_the_menu_button_opens_the_navigation(open_page, cluster):
    page = open_page(ADMIN, width=390, height=800)
    page.goto(f"{cluster.server}/")
    page.wait_for_selector("#workers-grid .ag-row")
    assert not page.is_visible("#nav-tasks")
    page.click("#nav-toggle")
    assert page.get_attribute("#nav-toggle", "aria-expanded") == "true"
    assert page.locator("#nav .nav-link").all_inner_texts() == ["Dashboard", "Tasks", "Analytics", "Broker", "Audit"]
    page.click("#nav-tasks")
    page.wait_for_selector(f"{TASK_ROWS} [col-id=name]")
    assert page.url.endswith("/tasks")
    assert not page.is_visible("#nav-tasks")  # folded again once a page was chosen


# Per header with a name: whether the name shows whole, whether it heads a number column (named at its right
# edge, over the numbers), and how far its filter button is from the name (px).
HEADERS_JS = """() => [...document.querySelectorAll('.ag-header-cell')].filter(h => h.querySelector('.ag-header-cell-text')?.textContent).map(h => {
    const text = h.querySelector('.ag-header-cell-text'), button = h.querySelector('.ag-header-cell-filter-button');
    const t = text.getBoundingClientRect(), b = button && button.getBoundingClientRect(), words = document.createRange();
    words.selectNodeContents(text);  // the name's own width, fractions included (scrollWidth rounds them away)
    return {name: text.textContent, whole: words.getBoundingClientRect().width <= t.width + 0.01,
            number: h.classList.contains('ag-right-aligned-header'), gap: b ? Math.max(b.left - t.right, t.left - b.right) : null};
})"""


@pytest.mark.parametrize("width", [1440, 1024, 390])
def test_the_dashboard_and_tasks_headers_show_whole_names_and_number_columns_filter_buttons_beside_them(
        open_page, cluster, width):
    """A number column's filter button sat at its far left, where it read as a column with no name."""
    page = open_page(ADMIN, width=width, height=800)
    # Each page with a number column that every width keeps.
    pages = {"/": ("#workers-grid .ag-row", "Utilisation"), "/tasks": (f"{TASK_ROWS} [col-id=name]", "Runtime")}
    for path, (shown, number_column) in pages.items():
        page.goto(f"{cluster.server}{path}")
        page.wait_for_selector(shown)

        def fitted():  # the grid fits its columns to the window after its first rows
            headers = page.evaluate(HEADERS_JS)
            shown_with_button = [h["name"] for h in headers if h["number"] and h["gap"] is not None]
            return headers if shown_with_button.count(number_column) == 1 and all(h["whole"] for h in headers) else None
        headers = wait_for(fitted, WAIT_SECONDS, f"{path}: every header name whole, {number_column} with its filter button")
        assert [h for h in headers if h["number"] and h["gap"] is not None and h["gap"] > 8] == [], (path, headers)


def test_at_1024_px_the_tasks_grid_shows_name_state_runtime_and_worker(open_page, cluster):
    page = open_page(ADMIN, width=1024, height=800)
    page.goto(f"{cluster.server}/tasks")
    page.wait_for_selector(f"{TASK_ROWS} [col-id=name]")

    def right_edges():
        return {column: page.evaluate(
            f"document.querySelector('#tasks-grid .ag-header-cell[col-id={column}]')?.getBoundingClientRect().right")
            for column in ("name", "state", "runtime", "worker")}
    edges = wait_for(lambda: (lambda found: found if all(e is not None and e <= 1024 for e in found.values()) else None)(
        right_edges()), WAIT_SECONDS, f"the four columns within the window; right edges {right_edges()}")
    assert all(0 < edge <= 1024 for edge in edges.values())
    page.click("#search-help-button")  # the help opens on the screen (it ran off its left edge here)
    left, right = page.eval_on_selector("#search-help-panel", "panel => [panel.getBoundingClientRect().left, "
                                                              "panel.getBoundingClientRect().right]")
    assert 0 <= left and right <= 1024


def test_at_390_px_the_search_help_closes_with_its_button_or_a_tap_elsewhere(open_page, cluster):
    # There it covers the "?" that opened it: only Escape closed it, which a phone has not.
    page = open_page(ADMIN, width=390, height=800)
    page.goto(f"{cluster.server}/tasks")
    page.wait_for_selector(f"{TASK_ROWS} [col-id=name]")
    panel = page.locator("#search-help-panel")
    page.click("#search-help-button")
    panel.wait_for(state="visible")
    page.click(".search-help-close")
    panel.wait_for(state="hidden")
    page.click("#search-help-button")
    panel.wait_for(state="visible")
    page.mouse.click(200, 790)  # under the panel, on the page
    panel.wait_for(state="hidden")


def test_slash_focuses_the_search_and_tab_reaches_the_help_and_the_chips(open_page, cluster):
    page = open_page(ADMIN)
    page.goto(f"{cluster.server}/tasks")
    page.wait_for_selector(f"{TASK_ROWS} [col-id=name]")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "tasks-search"
    assert page.input_value("#tasks-search") == ""  # the slash was not typed into it
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("(e => e.id || e.value || e.className)(document.activeElement)"))
    assert "search-help-button" in reached and "ALL" in reached, reached  # the help, then the checked chip
    page.focus("#search-help-button")
    page.keyboard.press("Enter")
    panel = page.locator("#search-help-panel")
    assert panel.is_visible()
    assert "state:FAILURE OR state:RETRY" in panel.inner_text()
    page.focus("#tasks-state input[value=ALL]")
    page.keyboard.press("ArrowRight")  # the chips are one radio group: the arrows move along it and choose
    assert page.evaluate("document.activeElement.value") == "STARTED"
    chosen = "#tasks-state label[aria-selected=true] input"
    wait_for(lambda: page.get_attribute(chosen, "value") == "STARTED", WAIT_SECONDS,
             f"the Started chip chosen; chosen {page.get_attribute(chosen, 'value')}, at {page.url}")


def test_enter_on_a_focused_row_opens_the_task(open_page, cluster):
    page = open_page(ADMIN)
    page.goto(f"{cluster.server}/tasks?q={cluster.task}")
    page.wait_for_selector(f"{TASK_ROWS}[row-id='{cluster.task}'] [col-id=name]")
    page.focus("#tasks-search")
    for _ in range(30):  # Tab through the toolbar, chips and headers into the first row
        page.keyboard.press("Tab")
        if page.evaluate("!!document.activeElement.closest('.ag-cell')"):
            break
    assert page.evaluate("document.activeElement.closest('.ag-row')?.getAttribute('row-id')") == cluster.task
    page.keyboard.press("Enter")
    page.wait_for_selector("#task-detail")
    assert page.url.endswith(f"/task/{cluster.task}")
