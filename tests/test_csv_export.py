"""The one CSV writer (monitor/serving/csv_export.py) behind /api/audit.csv and /api/tasks.csv: raw
values (seconds as numbers, ISO 8601 UTC times), one header row, formula cells quoted, the filters in
the file name; the tasks CSV read from both stores, and through the API with its filters and auth."""
from __future__ import annotations

import base64
import csv
import io

import pytest
from werkzeug.security import generate_password_hash

import app as flowerbed_app
from helpers import task_row
from monitor.query.tasks import TaskQuery, stream_tasks
from monitor.serving.api import TASKS_CSV_COLUMNS, tasks_csv_lines
from monitor.serving.csv_export import csv_cell, csv_lines, file_name, iso_utc
from monitor.settings import load_settings

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


def read(lines) -> list[list[str]]:
    return list(csv.reader(io.StringIO("".join(lines))))


@pytest.mark.parametrize("value, cell", [
    ('=HYPERLINK("http://evil","x")', '\'=HYPERLINK("http://evil","x")'),
    ("+1", "'+1"), ("-1", "'-1"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("a=b", "a=b"), ("", ""), (None, ""),
    (-0.5, -0.5), (0.009997, 0.009997), (3, 3),  # numbers stay numbers, negative ones too
    ({"b": 1, "a": "=x"}, '{"a": "=x", "b": 1}'),  # structures as JSON
    (["-1"], '["-1"]'),
])
def test_a_cell_is_raw_and_never_a_formula(value, cell):
    assert csv_cell(value) == cell


def test_times_are_iso_8601_utc_to_the_millisecond():
    assert iso_utc(T0 + 1.5) == "2027-01-15T08:00:01.500Z"
    assert iso_utc(None) is None


def test_one_header_row_then_the_rows():
    assert read(csv_lines(("a", "b"), [(1, "=x"), (None, 0.25)])) == [["a", "b"], ["1", "'=x"], ["", "0.25"]]
    assert read(csv_lines(("a", "b"), [])) == [["a", "b"]]


@pytest.mark.parametrize("filters, name", [
    ([], "flowerbed-tasks.csv"),
    ([("state", "FAILURE"), ("search", "name:shop.checkout runtime>2"), ("broker", "")],
     "flowerbed-tasks_state-FAILURE_search-name-shop.checkout-runtime-2.csv"),
    ([("search", '"; rm -rf /\r\n')], "flowerbed-tasks_search--rm--rf.csv"),  # nothing a header or a shell could take
])
def test_the_file_name_names_the_filters(filters, name):
    assert file_name("tasks", filters) == name


def test_the_tasks_csv_has_raw_seconds_and_times_on_each_store(make_store):
    store = make_store("csv")
    store.write_batch(tasks=[
        task_row(uuid="00000000-0000-4000-8000-000000000001", name="=cmd|' /C calc'!A0", state="SUCCESS",
                 received=T0, started=T0 + 0.25, succeeded=T0 + 0.329, runtime=0.079, args="(-1,)", retries=0),
        task_row(uuid="00000000-0000-4000-8000-000000000002", name="tasks.add", state="RECEIVED", received=T0 + 1),
    ])
    page = stream_tasks(store, TaskQuery(sort=(("received", False),)), TASKS_CSV_COLUMNS)
    header, ran, queued = read(tasks_csv_lines(page.rows))
    assert header == list(TASKS_CSV_COLUMNS)
    ran, queued = dict(zip(header, ran)), dict(zip(header, queued))
    assert (ran["name"], ran["args"], ran["runtime"]) == ("'=cmd|' /C calc'!A0", "(-1,)", "0.079")
    assert (ran["received"], ran["started"], ran["succeeded"]) == (
        "2027-01-15T08:00:00.000Z", "2027-01-15T08:00:00.250Z", "2027-01-15T08:00:00.329Z")
    assert (queued["runtime"], queued["started"], queued["state"]) == ("", "", "RECEIVED")


ADMIN = ("ada", "secret")


@pytest.fixture
def client(tmp_path):
    settings = load_settings(["--broker", "memory://localhost/", "--db", str(tmp_path / "csv.db"),
                              "--basic-auth", f"{ADMIN[0]}:{generate_password_hash(ADMIN[1])}"], environ={})
    built = flowerbed_app.create_app(settings)
    services = built.server.config["flowerbed_services"]
    services.store.write_batch(tasks=[
        task_row(uuid=f"00000000-0000-4000-8000-{n:012d}", name="shop.checkout" if n % 2 else "tasks.add",
                 state="FAILURE" if n % 3 == 0 else "SUCCESS", received=T0 + n, runtime=n / 10) for n in range(1, 13)])
    yield built.server.test_client()
    services.stop()


def test_the_tasks_csv_route_filters_names_the_file_and_is_behind_auth(client):
    auth = {"Authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()}
    assert client.get("/api/tasks.csv").status_code == 401
    response = client.get("/api/tasks.csv?state=FAILURE&search=name:shop&sort_by=-runtime", headers=auth)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == (
        'attachment; filename="flowerbed-tasks_state-FAILURE_search-name-shop_sort_by--runtime.csv"')
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [(row["name"], row["state"], row["runtime"]) for row in rows] == [
        ("shop.checkout", "FAILURE", "0.9"), ("shop.checkout", "FAILURE", "0.3")]
    assert response.headers["X-Total-Count"] == "2"
    limited = client.get("/api/tasks.csv?limit=5", headers=auth).get_data(as_text=True)
    assert len(list(csv.DictReader(io.StringIO(limited)))) == 5
    refused = client.get("/api/tasks.csv?search=(name:shop", headers=auth)
    assert refused.status_code == 400 and refused.get_json() == {"error": "missing ')'"}
