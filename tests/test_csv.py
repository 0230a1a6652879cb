"""The Analytics tables' CSV downloads in Debian's chromium: text a spreadsheet would run as a formula
(first character = + - @ tab or carriage return: a task named =HYPERLINK(...), an exception
=cmd|...) gets a leading ', while ordinary text and numbers, negative ones included, export raw
(seconds, fractions, ISO 8601 UTC times) under one header row, in a file named by the range. Then
the escaping rule on its own, from the asset that holds it."""
from __future__ import annotations

import csv
import re
import time

import pytest

from helpers import ROOT, FlowerbedServer, Stack, finished
from monitor.store.sqlite import SqliteStore as Store

pytestmark = pytest.mark.browser

FORMULA_NAMES = ('=HYPERLINK("http://evil","x")', "+tasks.plus", "-tasks.minus", "@tasks.at", "\ttasks.tab",
                 "\rtasks.cr")
FORMULA_EXCEPTION = "=cmd|' /C calc'!A0"  # no Type(...): the exception table shows it as type and message
FAILED = "-tasks.minus"  # the task that raised it
ORDINARY = "tasks.add"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A monitor over a store holding, in the last hour, one run of each formula-like name (FAILED
    raised FORMULA_EXCEPTION) and of an ordinary name that failed a day ago, so
    that the comparison with yesterday shows a negative change."""
    tmp = tmp_path_factory.mktemp("csv")
    store = Store(str(tmp / "csv.db"))
    now = time.time()
    rows = [finished(f"f{i}", name, 0.5, now - 300 - i) for i, name in enumerate(FORMULA_NAMES) if name != FAILED]
    rows += [finished("failed", FAILED, 0.5, now - 200, state="FAILURE", exception=FORMULA_EXCEPTION),
             finished("ordinary", ORDINARY, 0.5, now - 250),
             finished("ordinary-yesterday", ORDINARY, 0.5, now - 86400 - 250, state="FAILURE",
                      exception="ValueError('boom')")]
    store.write_batch(tasks=rows)
    store.fold_rollups()
    stack = Stack()
    try:
        yield stack.add(FlowerbedServer.start("memory://localhost/", tmp / "csv.db", tmp / "flowerbed.log"))
    finally:
        stack.stop_all()



def download(page, grid: str) -> tuple[str, list[list[str]]]:
    """The file name and the rows of the CSV the grid's button downloads."""
    with page.expect_download() as info:
        page.click(f"#{grid}-csv")
    with open(info.value.path(), encoding="utf-8-sig", newline="") as file:
        return info.value.suggested_filename, list(csv.reader(file))


def by_name(lines: list[list[str]]) -> dict[str, dict[str, str]]:
    """Rows keyed by their task name cell, each as {column header: cell}."""
    return {row["Task name"]: row for row in (dict(zip(lines[0], line)) for line in lines[1:])}


def test_formula_cells_are_escaped_and_the_values_are_raw_under_one_header(server, page):
    page.goto(f"{server}/analytics")
    for grid, count in (("analytics-stats", 7), ("analytics-exceptions", 1), ("analytics-compare", 7)):
        page.wait_for_function(f"document.querySelectorAll('#{grid} .ag-row').length >= {count}")
    escaped = {"'" + name for name in FORMULA_NAMES}

    name, lines = download(page, "analytics-stats")
    assert name == "flowerbed-task-runtimes_range-1h.csv"  # the range (and filters) it was made with
    stats = by_name(lines)
    assert set(stats) == escaped | {ORDINARY}
    assert stats[ORDINARY]["Finished"] == "1" and stats[ORDINARY]["Run time p50 (s)"] == "0.5"  # seconds
    assert stats["'" + FAILED]["Fail % (fraction)"] == "1"

    name, [header, exception] = download(page, "analytics-exceptions")
    row = dict(zip(header, exception))
    assert row["Exception"] == "'" + FORMULA_EXCEPTION
    assert row["Message (numbers, ids as #)"] == "'=cmd|' /C calc'!A#"
    assert row["Task names"] == "'" + FAILED
    assert row["Count"] == "1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["Last seen (UTC)"])

    _name, lines = download(page, "analytics-compare")
    compare = by_name(lines)
    assert set(compare) == escaped | {ORDINARY}
    assert compare[ORDINARY]["Failure rate Change (fraction)"] == "-1"  # a negative number stays, unescaped


@pytest.mark.parametrize("value, shown, exported", [
    ('=HYPERLINK("http://evil","x")', '=HYPERLINK("http://evil","x")', '\'=HYPERLINK("http://evil","x")'),
    ("+1", "+1", "'+1"),
    ("-1", "-1", "'-1"),  # text, even when it reads as a number
    ("@SUM(A1)", "@SUM(A1)", "'@SUM(A1)"),
    ("\tx", "\tx", "'\tx"),
    ("\rx", "\rx", "'\rx"),
    ("a=b", "a=b", "a=b"),
    (" =x", " =x", " =x"),
    ("", "", ""),
    (-0.5, -0.5, -0.5),  # a number stays a number
    (-0.5, "-500 ms", "-500 ms"),  # and its formatted text as it is
    (None, None, None),
])
def test_the_escaping_rule(browser, value, shown, exported):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_content("<html><body></body></html>")
        page.add_script_tag(path=str(ROOT / "assets" / "dashAgGridFunctions.js"))
        assert page.evaluate("([value, shown]) => window.flowerbedCsvText(value, shown)", [value, shown]) == exported
    finally:
        context.close()
