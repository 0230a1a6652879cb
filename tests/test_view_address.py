"""What the address says about a page's view, read without a browser: the Tasks grid's sort and
columns (callbacks/tasks.py grid_view) and the Analytics controls (analytics_view, analytics_layout),
including what the address may hold that the page cannot show."""
from __future__ import annotations

import urllib.parse

from callbacks.analytics import analytics_view
from callbacks.tasks import grid_view
from components.analytics import analytics_layout
from components.tasks import COLUMN_IDS, column_id


def params(query: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(query)


def by_id(layout) -> dict:
    return {getattr(component, "id", None): component for _path, component in layout._traverse_with_paths()}


def test_the_sort_in_the_address_sorts_the_grid_in_its_order():
    columns, message = grid_view(params("sort=state,-received"), ())
    assert message == ""
    sorted_columns = {column["field"]: (column["sort"], column["sortIndex"]) for column in columns if "sort" in column}
    assert sorted_columns == {"state": ("asc", 0), "received": ("desc", 1)}


def test_the_columns_in_the_address_are_shown_and_the_others_hidden():
    columns, message = grid_view(params("cols=runtime,name"), ())
    assert message == ""
    # name and state are always shown: a row is read by them (the chooser does not offer them)
    assert [column_id(column) for column in columns if not column["hide"]] == ["name", "state", "runtime"]
    assert {column_id(column) for column in columns} == set(COLUMN_IDS)


def test_without_sort_or_columns_the_grid_keeps_its_defaults():
    columns, message = grid_view({}, ())
    assert message == "" and not any("sort" in column for column in columns)
    assert [column_id(column) for column in columns if not column.get("hide")] == [
        "name", "uuid", "state", "args", "kwargs", "result", "received", "started", "runtime", "worker"]


def test_an_unknown_sort_or_column_is_named_and_ignored():
    columns, message = grid_view(params("sort=-colour&cols=name,colour"), ())
    assert "sort ignored" in message and "'colour'" in message and "unknown column 'colour' ignored" in message
    assert not any("sort" in column for column in columns)
    assert [column_id(column) for column in columns if not column["hide"]] == ["name", "state"]


def test_the_analytics_address_sets_every_control():
    view = analytics_view(params("range=custom&from=2026-01-01+00:00&to=2026-01-02+00:00&name=a&name=b"
                                 "&worker=w@h&queue=q&compare=split&split=2026-01-01+12:00"))
    controls = by_id(analytics_layout({"name": ["a", "b"], "worker": ["w@h"], "queue": ["q"]}, view))
    assert controls["analytics-range"].value == "custom"
    assert controls["analytics-custom"].style == {"display": "flex"}
    assert (controls["analytics-from"].value, controls["analytics-to"].value) == ("2026-01-01 00:00", "2026-01-02 00:00")
    assert controls["analytics-names"].value == ["a", "b"]
    assert (controls["analytics-workers"].value, controls["analytics-queues"].value) == (["w@h"], ["q"])
    assert controls["compare-mode"].value == "split"
    assert controls["compare-split"].value == "2026-01-01 12:00" and controls["compare-split"].style == {}


def test_an_unknown_range_or_compare_mode_opens_the_defaults():
    controls = by_id(analytics_layout({}, analytics_view(params("range=forever&compare=never"))))
    assert (controls["analytics-range"].value, controls["compare-mode"].value) == ("1h", "day")
    assert controls["analytics-custom"].style == {"display": "none"}
