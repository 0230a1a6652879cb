"""The one duration formatter: components/common.py format_duration in Python (the detail view, the
Analytics charts) and its twin flowerbedDuration in assets/dashAgGridFunctions.js (the grids), held
to the same answers; the JS one evaluated by Debian's chromium from the asset itself."""
from __future__ import annotations

import pytest

from components.common import format_duration
from helpers import ROOT

CASES = [
    (0, "0 ms"),
    (0.00035, "0.35 ms"),
    (0.0009997, "1 ms"),
    (0.009997, "10 ms"),  # the detail's old "0.009997 s"
    (0.0042, "4.2 ms"),
    (0.017, "17 ms"),
    (0.079, "79 ms"),  # the grid's old bare "0.079"
    (0.9994, "999 ms"),
    (0.9996, "1 s"),
    (2.4, "2.4 s"),
    (2.25, "2.3 s"),  # an exact half rounds up in both languages
    (9.96, "10 s"),
    (17.2, "17 s"),
    (59.6, "1 min"),
    (192, "3 min 12 s"),
    (192.5, "3 min 13 s"),
    (3599.4, "59 min 59 s"),
    (3599.6, "1 h"),
    (7500, "2 h 5 min"),
    (86399, "1 d"),
    (90000, "1 d 1 h"),
    (-2.4, "-2.4 s"),
]


@pytest.mark.parametrize("seconds, shown", CASES)
def test_python_formats_durations_as_people_read_them(seconds, shown):
    assert format_duration(seconds) == shown


@pytest.mark.parametrize("nothing", [None, float("nan"), "1.5"])
def test_python_shows_a_dash_for_no_duration(nothing):
    assert format_duration(nothing) == "—"


@pytest.mark.browser
def test_the_grids_javascript_twin_gives_the_same_answers(browser):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_content("<html><body></body></html>")
        page.add_script_tag(path=str(ROOT / "assets" / "dashAgGridFunctions.js"))
        shown = page.evaluate("values => values.map(v => window.flowerbedDuration(v))", [s for s, _ in CASES])
        assert shown == [expected for _, expected in CASES]
        assert page.evaluate("[null, undefined, NaN, '1.5'].map(v => window.flowerbedDuration(v))") == ["", "", "", ""]
    finally:
        context.close()
