"""Generated hostile input into the JSON API's parameters and the Tasks page's callbacks, through
Flask's test client on the real app over a seeded store: nothing a client sends gives a 500 or a
stack trace; what the API cannot use is a 400 with a JSON error, what the page cannot use is its
inline message; valid input still answers. The generators are seeded, so a failure replays."""
from __future__ import annotations

import json
import math
import random
import re
import urllib.parse

import pytest

import app as flowerbed_app
from helpers import callback_body, router_body, task_row
from monitor.settings import Settings

SEED = 20261201
CASES = 2200  # per surface: the API, and the Tasks page's callbacks
T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
NAMES = ("tasks.add", "shop.checkout", "reports.build", "email.send")
STATES = ("SUCCESS", "FAILURE", "STARTED", "RETRY", "RECEIVED")
WORKERS = ("celery@alpha", "celery@beta")
ROW_COUNT = 300
SORTABLE = ("name", "uuid", "state", "worker", "args", "kwargs", "result", "received", "started", "runtime",
            "retries", "exception", "seq")


def seeded_row(i: int) -> tuple:
    state = STATES[i % len(STATES)]
    return task_row(
        uuid=f"00000000-0000-4000-8000-{i:012d}", name=NAMES[i % len(NAMES)], state=state,
        worker=WORKERS[i % 2], args=f"({i}, 'x*y')", kwargs=f"{{'user_id': {i % 50}}}", result=repr(i * 2),
        exception="ValueError('declined 42: \"NEAR\" ^ OR (x)')" if state == "FAILURE" else None,
        received=T0 + i, started=T0 + i + 0.5, runtime=(i % 40) / 10, retries=i % 3)


@pytest.fixture(scope="module")
def dash_app(tmp_path_factory):
    settings = Settings(broker="memory://localhost/", db=str(tmp_path_factory.mktemp("fuzz") / "fuzz.db"))
    app = flowerbed_app.create_app(settings)
    services = app.server.config["flowerbed_services"]
    services.store.write_batch(tasks=[seeded_row(i) for i in range(ROW_COUNT)])
    yield app
    services.stop()


class Client:
    """Flask's test client reading each answer whole, which closes it as a server does once it is
    sent (the admission control in front of the app frees the request's slot then)."""

    def __init__(self, flask_app):
        self._client = flask_app.test_client()

    def get(self, url: str):
        return self._client.get(url, buffered=True)

    def post(self, url: str, **options):
        return self._client.post(url, buffered=True, **options)


@pytest.fixture
def client(dash_app):
    return Client(dash_app.server)


# -- generators ------------------------------------------------------------------------------------
# Each gives (value, verdict): True when the value is valid, False when it must be refused, None
# when either may be right (random soup can happen to be a valid search).
SYNTAX = ['"', "*", ":", "^", "NEAR", "NEAR(a b)", " AND ", " OR ", "NOT ", "(", ")", "-", "+", "{", "}", "'",
          ";", "--", "%", "_", "\\", "=", ">=", "<", "name:", "state:", "uuid:", "kwargs:user_id=", "runtime>",
          "received>=", "finished<", "name=", "worker=", "exception:", "args:", "\n", "\t", "\r", " ",
          "\u202e", "\U0001F600", "é", "tasks.add", "x", "42", "\x00", "\ud800", "\udfff"]
BAD_NUMBERS = ["abc", "1.5", "-1", "nan", "inf", "-inf", "1e3", "0x10", "9" * 5000, "--1", "1 2"]
BAD_TIMES = ["nan", "inf", "-inf", "1e400", "tomorrow", "2026-13-45", "2026-11-25T25:00", "1e20", "--"]
BAD_FLAGS = ["yes", "maybe", "2", "-1", "truthy", "\x00", "on"]
VALID_TERMS = ["tasks.add", "name:shop.checkout", "state:FAILURE", "state:success,retry", "worker=celery@alpha",
               "kwargs:user_id=7", "runtime>0.5", "received>=2027-01-15T08:00", "finished<2027-01-16",
               '"declined 42"', "-name:email.send", "exception:ValueError", "uuid:0000", "args:x*y", '"x*y"',
               'exception:"^ OR"', "NEAR", "42"]


def soup(rng: random.Random) -> str:
    """Text from SQL, FTS5 and search-language syntax, control characters, NUL and lone surrogates,
    random code points or bytes, or one piece repeated past every length limit."""
    kind = rng.randrange(4)
    if kind == 0:
        return "".join(rng.choice(SYNTAX) for _ in range(rng.randint(1, 14)))
    if kind == 1:
        return rng.choice(SYNTAX + VALID_TERMS) * rng.randint(100, 12_000)
    if kind == 2:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(1, 40)))
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 30))).decode("latin-1")


def valid_search(rng: random.Random) -> str:
    terms = [rng.choice(VALID_TERMS) for _ in range(rng.randint(1, 4))]
    if len(terms) > 1 and rng.random() < 0.5:
        terms[0] = f"({terms[0]} OR {terms.pop()})"
    if rng.random() < 0.3:
        terms[-1] = "NOT " + terms[-1]
    return rng.choice([" ", " AND "]).join(terms)


def search_text(rng: random.Random) -> tuple[str, bool | None]:
    kind = rng.randrange(4)
    if kind == 0:
        return valid_search(rng), True
    if kind == 1:  # SQLite cannot search for a NUL (a lone surrogate cannot be put in a URL)
        text = valid_search(rng)
        at = rng.randint(0, len(text))
        return text[:at] + "\x00" + text[at:], False
    if kind == 2:
        return "x" * rng.randint(10_001, 30_000), False  # past search.MAX_TEXT_CHARS
    return soup(rng), None


def whole_number(rng: random.Random) -> tuple[str, bool | None]:
    kind = rng.randrange(4)
    if kind == 0:
        return str(rng.randint(0, 5000)), True
    if kind == 1:  # clamped, not refused
        return str(rng.choice([2**63, 2**64, 10**20, 10**300])), True
    if kind == 2:
        return rng.choice(BAD_NUMBERS), False
    return soup(rng), None


def moment(rng: random.Random) -> tuple[str, bool | None]:
    kind = rng.randrange(3)
    if kind == 0:
        return rng.choice([str(T0 + rng.randint(-500, 500)), "2027-01-15", "2027-01-15 08:01",
                           "2027-01-15T08:02:30+02:00"]), True
    if kind == 1:
        return rng.choice(BAD_TIMES), False
    return soup(rng), None


def sort_by(rng: random.Random) -> tuple[str, bool | None]:
    kind = rng.randrange(3)
    if kind == 0:
        return ",".join(rng.choice(["", "-"]) + rng.choice(SORTABLE) for _ in range(rng.randint(1, 3))), True
    if kind == 1:
        return rng.choice(["bogus", "-", "name,,runtime", "name;DROP TABLE tasks", ",".join(["name"] * 500)]), False
    return soup(rng), None


def any_text(rng: random.Random) -> tuple[str, bool | None]:
    """For parameters matched exactly (state, task and worker names): any text is valid."""
    return (soup(rng) if rng.random() < 0.7 else rng.choice(NAMES + WORKERS + STATES)), True


def flag(rng: random.Random) -> tuple[str, bool | None]:
    if rng.random() < 0.5:
        return rng.choice(["", "true", "false", "1", "0", "TRUE"]), True
    return rng.choice(BAD_FLAGS), False


TASKS_PARAMETERS = {"limit": whole_number, "offset": whole_number, "state": any_text, "taskname": any_text,
                    "workername": any_text, "search": search_text, "received_start": moment, "received_end": moment,
                    "sort_by": sort_by}
ENDPOINTS = {  # path → its parameters
    "/api/tasks": TASKS_PARAMETERS,
    "/api/tasks/count": {"search": search_text, "state": any_text},
    # refresh=1 waits for a real inspect (test_flower_compat.py): not here, where no collector runs
    "/api/workers": {"workername": any_text, "status": flag},
}


def encoded(value: str) -> str:
    """A parameter as a client puts it in the URL: UTF-8, a lone surrogate as the bytes it would
    have (invalid UTF-8, which the server decodes as replacement characters)."""
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


def api_case(rng: random.Random) -> tuple[str, bool | None]:
    """(URL, verdict) of one generated API request."""
    if rng.random() < 0.15:
        kind = rng.randrange(3)
        # Without '/': a path with more segments is another route (a page of the app).
        odd_id = soup(rng).replace("/", "") or "x"
        task_id = [f"00000000-0000-4000-8000-{rng.randrange(ROW_COUNT):012d}", odd_id, "a" * 1001][kind]
        return "/api/task/info/" + encoded(task_id), [True, None, False][kind]
    path = rng.choice(list(ENDPOINTS))
    chosen = {name: make(rng) for name, make in ENDPOINTS[path].items() if rng.random() < 0.5}
    verdicts = [verdict for _, verdict in chosen.values()]
    verdict = False if False in verdicts else None if None in verdicts else True
    query = "&".join(f"{name}={encoded(value)}" for name, (value, _) in chosen.items())
    return f"{path}?{query}", verdict


def assert_no_crash(response, what) -> None:
    body = response.get_data()
    assert response.status_code != 500, (what, body[:300])
    assert b"Traceback" not in body, (what, body[:300])


def check_api_answer(response, url: str, verdict) -> None:
    assert_no_crash(response, url)
    status = response.status_code
    if url.startswith("/api/task/info/"):
        expected = {True: {200}, False: {400}, None: {400, 404}}[verdict]
    else:
        expected = {True: {200}, False: {400}, None: {200, 400}}[verdict]
        if url.startswith("/api/workers?") and "workername=" in url and verdict is not False:
            expected = expected | {404}  # a worker the store does not know, as in Flower
    assert status in expected, (url[:300], status, response.get_data()[:300])
    if status == 400:
        assert response.is_json and response.get_json()["error"], url[:300]
    elif url.startswith("/api/tasks?"):
        assert isinstance(json.loads(response.get_data()), dict)
        assert re.fullmatch(r"\d+\+?", response.headers["X-Total-Count"])


def test_generated_api_parameters_get_an_answer_or_a_400(client):
    rng = random.Random(SEED)
    verdicts = []
    for _ in range(CASES):
        url, verdict = api_case(rng)
        check_api_answer(client.get(url), url, verdict)
        verdicts.append(verdict)
    # The generators reach every kind of answer, not only one.
    assert min(verdicts.count(True), verdicts.count(False), verdicts.count(None)) > CASES // 10


# -- the Tasks page's callbacks ---------------------------------------------------------------------
def nasty_json(rng: random.Random, depth: int = 0):
    """Any JSON value Dash can carry, NaN and infinities included (Python's json reads them)."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 1, 2**63, -(2**63) - 1, 10**30, 7])
    if kind == 2:
        return rng.choice([math.nan, math.inf, -math.inf, -0.5, 1.5, 1e308, 100.0])
    if kind in (3, 4, 5):
        return soup(rng)
    if kind == 6:
        return [nasty_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 7:
        return {soup(rng)[:20]: nasty_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return deep(rng.randint(50, 400))


def deep(levels: int):
    """A filter model nested `levels` deep through its conditions."""
    model = {"filterType": "text", "type": "contains", "filter": "x"}
    for _ in range(levels):
        model = {"filterType": "text", "operator": "OR", "conditions": [model]}
    return model


def valid_filter(rng: random.Random) -> dict:
    column = rng.choice(["name", "worker", "args", "runtime", "received", "retries"])
    if column in ("runtime", "retries"):
        return {column: {"filterType": "number", "type": rng.choice(["greaterThan", "lessThan", "equals"]),
                         "filter": rng.choice([0, 1, 2.5, -0.5])}}
    if column == "received":
        return {column: {"filterType": "date", "type": "inRange", "dateFrom": "2027-01-15 08:00:00",
                         "dateTo": "2027-01-15 08:03:00"}}
    condition = {"filterType": "text", "type": rng.choice(["contains", "startsWith", "notContains", "equals"]),
                 "filter": rng.choice(["add", "celery@", "x*y", "%", "_", '"', "NEAR"])}
    if rng.random() < 0.3:
        return {column: {"filterType": "text", "operator": "OR", "conditions": [condition, condition]}}
    return {column: condition}


def valid_rows_request(rng: random.Random) -> dict:
    start = rng.randrange(0, 400, 100)
    request = {"startRow": start, "endRow": start + 100, "sortModel": [], "filterModel": {}}
    if rng.random() < 0.6:
        request["sortModel"] = [{"colId": rng.choice(SORTABLE), "sort": rng.choice(["asc", "desc"])}]
    if rng.random() < 0.5:
        request["filterModel"] = valid_filter(rng)
    return request


BAD_REQUEST_PARTS = [
    ("startRow", "abc"), ("startRow", math.nan), ("endRow", math.inf), ("startRow", 1.5), ("endRow", [100]),
    ("startRow", True), ("sortModel", [{"sort": "asc"}]), ("sortModel", [{"colId": ["name"]}]),
    ("sortModel", "name"), ("sortModel", [{"colId": "bogus", "sort": "asc"}]),
    ("sortModel", [{"colId": "name", "sort": "asc"}] * 500), ("filterModel", "name contains x"),
    ("filterModel", ["name"]), ("filterModel", {"name": deep(400)}), ("filterModel", {"name": "x"}),
    ("filterModel", {"name": {"filterType": "text", "type": ["contains"], "filter": "x"}}),
    ("filterModel", {"name": {"filterType": "text", "type": "contains", "filter": "a\x00b"}}),
    ("filterModel", {"name": {"filterType": "text", "type": "contains", "filter": "\ud800"}}),
    ("filterModel", {"name": {"filterType": "text", "type": "contains", "filter": {"x": 1}}}),
    ("filterModel", {"runtime": {"filterType": "number", "type": "equals", "filter": math.nan}}),
    ("filterModel", {"runtime": {"filterType": "number", "type": "equals", "filter": 10**400}}),
    ("filterModel", {"received": {"filterType": "date", "type": "equals", "dateFrom": 5}}),
    ("filterModel", {"name": {"filterType": "text", "operator": "OR", "conditions": []}}),
    ("filterModel", {"name": {"filterType": "text", "operator": "OR", "conditions": "x"}}),
]


def rows_case(rng: random.Random) -> tuple[object, object, bool | None]:
    """(getRowsRequest, tasks-query data, verdict) for load_rows."""
    request = valid_rows_request(rng)
    query = {"search": valid_search(rng) if rng.random() < 0.5 else "", "state": rng.choice(["ALL", "", *STATES[:4]])}
    kind = rng.randrange(6)
    if kind == 0:
        return request, query, True
    if kind == 1:
        key, value = rng.choice(BAD_REQUEST_PARTS)
        return {**request, key: value}, query, False
    if kind == 2:
        text, verdict = search_text(rng)
        return request, {**query, "search": text}, verdict
    if kind == 3:
        return request, rng.choice([[1, 2], 42, "ALL", 1.5, True, {"search": "", "state": "NOPE"},
                                    {"search": "", "state": ["ALL"]}, {"search": ["a"], "state": "ALL"},
                                    {"search": "a\ud800", "state": "ALL"}, {"search": 5},
                                    {"search": "", "state": "ALL", "broker": ["eu"]},
                                    {"search": "", "state": "ALL", "broker": "eu\ud800"}]), False
    if kind == 4:
        key = rng.choice(list(request))
        return {**request, key: nasty_json(rng)}, query, None
    return nasty_json(rng), nasty_json(rng), None


ROWS_OUTPUT = "..tasks-grid.getRowsResponse...tasks-count.children.."
QUERY_OUTPUT = "..tasks-query.data...tasks-search-message.children.."


def load_rows(client, request, query):
    body = callback_body(ROWS_OUTPUT, [{"id": "tasks-grid", "property": "getRowsRequest", "value": request}],
                         [{"id": "tasks-query", "property": "data", "value": query}])
    return client.post("/_dash-update-component", json=body)


def update_query(client, text, state, broker=None):
    return client.post("/_dash-update-component", json=callback_body(QUERY_OUTPUT, [
        {"id": "tasks-search", "property": "value", "value": text},
        {"id": "tasks-state", "property": "value", "value": state},
        {"id": "tasks-broker", "property": "value", "value": broker}]))


def check_rows_answer(response, case) -> None:
    request, _query, verdict = case
    assert_no_crash(response, case)
    assert response.status_code == 200, case
    answer = response.get_json()["response"]
    if not request:  # the grid asked for nothing: no update
        assert answer == {}, case
        return
    message = answer["tasks-count"]["children"]
    # A malformed search empties the count (the message under the search box says why).
    refused = message == "" or message.startswith("Filter not understood: ")
    assert refused or re.fullmatch(r"[\d,]+\+? tasks?", message), (case, message)
    assert {True: not refused, False: refused, None: True}[verdict], (str(case)[:500], message)
    assert isinstance(answer["tasks-grid"]["getRowsResponse"]["rowData"], list)
    if refused:
        assert answer["tasks-grid"]["getRowsResponse"] == {"rowData": [], "rowCount": 0}, case


def query_case(rng: random.Random) -> tuple[object, object, bool | None]:
    """(search box value, state chip value, verdict) for update_query."""
    state, state_ok = (rng.choice(["ALL", *STATES[:4], None]), True) if rng.random() < 0.8 else \
        (rng.choice(["NOPE", 5, ["ALL"], {"x": 1}, "\ud800"]), False)
    kind = rng.randrange(3)
    if kind == 0:
        text, verdict = search_text(rng)
    elif kind == 1:
        text, verdict = rng.choice([5, 1.5, ["a"], {"q": "x"}, True, math.nan]), False
    else:
        text, verdict = nasty_json(rng), None
    return text, state, False if not state_ok or verdict is False else verdict


def check_query_answer(response, case) -> None:
    _text, _state, verdict = case
    assert_no_crash(response, case)
    assert response.status_code == 200, case
    answer = response.get_json()["response"]
    message = answer["tasks-search-message"]["children"]
    assert isinstance(message, str)
    refused = bool(message)
    assert {True: not refused, False: refused, None: True}[verdict], (str(case)[:500], message)
    # A malformed search still becomes the page's query (the grid empties under the message);
    # anything else refused leaves the query as it was.
    if "tasks-query" in answer:
        assert not refused or message.startswith("Search not understood at character"), (str(case)[:500], message)
    else:
        assert refused, case


def test_generated_tasks_callback_inputs_get_rows_or_the_inline_message(client):
    rng = random.Random(SEED + 1)
    verdicts = []
    for number in range(CASES):
        if number % 3:
            case = rows_case(rng)
            check_rows_answer(load_rows(client, case[0], case[1]), case)
        else:
            case = query_case(rng)
            check_query_answer(update_query(client, case[0], case[1]), case)
        verdicts.append(case[2])
    assert min(verdicts.count(True), verdicts.count(False), verdicts.count(None)) > CASES // 10


# -- regressions: what testers and the fuzzing found ------------------------------------------------
@pytest.mark.parametrize("url, status, error", [
    ("/api/tasks?search=ab%00cd", 400, "NUL character at position 3"),  # reached the FTS5 MATCH
    ("/api/tasks/count?search=%00x", 400, "NUL character"),  # LIKE read '%' and counted every task
    ("/api/tasks?offset=99999999999999999999", 200, None),  # OverflowError binding the OFFSET
    ("/api/tasks?limit=99999999999999999999", 200, None),
    ("/api/tasks?offset=" + "9" * 5000, 400, "offset must be a whole number"),
    ("/api/tasks?received_start=nan", 400, "received_start: expected epoch seconds"),  # matched nothing
    ("/api/tasks?received_end=1e400", 400, "received_end: expected epoch seconds"),
    ("/api/tasks?search=runtime%3Enan", 400, "runtime: expected a number of seconds"),
    ("/api/tasks?sort_by=" + ",".join(["name"] * 500), 400, "sort columns"),  # SQLite's ORDER BY cap
    ("/api/tasks?search=" + "x" * 60_000, 400, "at most 10,000 characters"),  # LIKE pattern too complex
    ("/api/task/info/" + "a" * 10_000, 400, "at most 1,000 characters"),
    ("/api/task/info/%00", 404, "Unknown task"),
    ("/api/task/info/%ED%A0%80", 404, "Unknown task"),
    ("/api/workers?status=maybe", 400, "status must be true or false"),
    ("/api/workers?refresh=%00", 400, "refresh must be true or false"),
])
def test_api_regressions(client, url, status, error):
    response = client.get(url)
    assert response.status_code == status, response.get_data()[:300]
    if error:
        assert error in response.get_json()["error"]


@pytest.mark.parametrize("request_, query, message", [
    ({"startRow": 0, "endRow": 100}, {"search": "a\x00b", "state": "ALL"}, "NUL character"),
    ({"startRow": 0, "endRow": 100}, {"search": "a\ud800b", "state": "ALL"}, "lone surrogate"),
    ({"startRow": "zero", "endRow": 100}, {}, "startRow must be a whole number"),
    ({"startRow": 0, "endRow": math.nan}, {}, "endRow must be a whole number"),
    ({"startRow": 0, "endRow": 100, "sortModel": [{"sort": "asc"}]}, {}, "malformed sort"),
    ({"startRow": 0, "endRow": 100, "filterModel": "name"}, {}, "malformed column filters"),
    ({"startRow": 0, "endRow": 100, "filterModel": ["name"]}, {}, "malformed column filters"),
    ({"startRow": 0, "endRow": 100, "filterModel": {"name": deep(400)}}, {}, "1 to 10 simple conditions"),
    ({"startRow": 0, "endRow": 100, "filterModel": {"name": {"filterType": "text", "conditions": []}}}, {},
     "1 to 10 simple conditions"),  # was the SQL "()"
    ({"startRow": 0, "endRow": 100, "filterModel": {"name": {"type": ["contains"]}}}, {}, "its type is ['contains']"),
    ({"startRow": 0, "endRow": 100, "filterModel": {"runtime": {"type": "equals", "filter": 10**400}}}, {},
     "runtime: expected a number"),  # OverflowError converting to float
    ({"startRow": 0, "endRow": 100, "filterModel": {"received": {"type": "equals", "dateFrom": 5}}}, {},
     "received: expected epoch seconds"),
    ("rows please", {}, "malformed rows request"),
    ({"startRow": 0, "endRow": 100}, [1, 2], "malformed page query"),
    ({"startRow": 0, "endRow": 100}, 42, "malformed page query"),
    ({"startRow": 0, "endRow": 100}, {"search": ["a"], "state": "ALL"}, "the search must be text, not list"),
    ({"startRow": 0, "endRow": 100}, {"search": "", "state": {"x": 1}}, "unknown state"),
    ({"startRow": 0, "endRow": 100}, {"search": "", "state": "ALL", "broker": {"x": 1}}, "the broker must be text"),
    ({"startRow": 0, "endRow": 100}, {"search": "", "state": "ALL", "broker": "a\ud800"}, "lone surrogate"),
])
def test_rows_callback_regressions(client, request_, query, message):
    response = load_rows(client, request_, query)
    assert response.status_code == 200, response.get_data()[:300]
    answer = response.get_json()["response"]
    assert answer["tasks-count"]["children"].startswith("Filter not understood: ")
    assert message in answer["tasks-count"]["children"]
    assert answer["tasks-grid"]["getRowsResponse"] == {"rowData": [], "rowCount": 0}


@pytest.mark.parametrize("text, state, broker, message", [
    (5, "ALL", None, "the search must be text, not int"),
    (["name:x"], "ALL", None, "the search must be text, not list"),
    ("a\x00", "ALL", None, "NUL character at position 2"),
    ("\udfff", "ALL", None, "lone surrogate"),
    ("tasks.add", ["ALL"], None, "Unknown state ['ALL']"),
    ("tasks.add", "ALL", ["eu"], "Unknown broker ['eu']"),
])
def test_search_box_regressions(client, text, state, broker, message):
    answer = update_query(client, text, state, broker).get_json()["response"]
    assert message in answer["tasks-search-message"]["children"]
    assert "tasks-query" not in answer


@pytest.mark.parametrize("pathname, search, shown", [
    ("/task/a\ud800", None, "No task with UUID"),  # UnicodeEncodeError reading the store
    ("/task/" + "a" * 5000, None, "No task with UUID"),
    ("/task/a\x00b", None, "No task with UUID"),
    (5, None, "That address cannot be read."),
    ("/tasks", ["x"], "That address cannot be read."),
])
def test_router_regressions(client, pathname, search, shown):
    response = client.post("/_dash-update-component", json=router_body(pathname, search))
    assert response.status_code == 200, response.get_data()[:300]
    assert shown in json.dumps(response.get_json(), ensure_ascii=False)


@pytest.mark.parametrize("body", [
    "[" * 200_000 + "]" * 200_000,  # RecursionError in the JSON parser, inside Dash
    json.dumps(callback_body("nope.children", [{"id": "nope", "property": "children", "value": 1}])),
])
def test_callback_requests_dash_cannot_take_are_400_not_500(client, body):
    response = client.post("/_dash-update-component", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "could not be understood" in response.get_json()["error"]


# -- valid input still answers ----------------------------------------------------------------------
def test_valid_api_queries_still_answer(client):
    response = client.get("/api/tasks?limit=10&sort_by=-runtime")
    tasks = list(response.get_json().values())
    assert response.headers["X-Total-Count"] == str(ROW_COUNT)
    assert len(tasks) == 10 and [t["runtime"] for t in tasks] == sorted((t["runtime"] for t in tasks), reverse=True)
    assert client.get("/api/tasks?offset=99999999999999999999").get_json() == {}
    failures = client.get("/api/tasks?limit=1000&search=" + encoded('state:FAILURE "^ OR (x)" NEAR')).get_json()
    assert len(failures) == ROW_COUNT // len(STATES)
    assert client.get("/api/tasks/count?search=name:tasks.add").get_json() == {"count": ROW_COUNT // len(NAMES)}
    assert client.get("/api/task/info/00000000-0000-4000-8000-000000000007").get_json()["args"] == "(7, 'x*y')"
    assert client.get("/api/workers?status=true&refresh=0").status_code == 200


def test_valid_grid_requests_still_answer(client):
    request = {"startRow": 0, "endRow": 100, "sortModel": [{"colId": "runtime", "sort": "desc"}],
               "filterModel": {"args": {"filterType": "text", "type": "contains", "filter": "x*y"}}}
    answer = load_rows(client, request, {"search": "name=tasks.add", "state": "SUCCESS"}).get_json()["response"]
    rows = answer["tasks-grid"]["getRowsResponse"]["rowData"]
    expected = [i for i in range(ROW_COUNT)
                if NAMES[i % len(NAMES)] == "tasks.add" and STATES[i % len(STATES)] == "SUCCESS"]
    assert answer["tasks-count"]["children"] == f"{len(expected)} tasks"
    assert len(rows) == len(expected) and {row["name"] for row in rows} == {"tasks.add"}
    assert [row["runtime"] for row in rows] == sorted((row["runtime"] for row in rows), reverse=True)
    answer = update_query(client, "name:shop.checkout", "FAILURE").get_json()["response"]
    assert answer["tasks-query"]["data"] == {"search": "name:shop.checkout", "state": "FAILURE", "broker": ""}
    assert answer["tasks-search-message"]["children"] == ""
