"""The task search language: how queries parse, what they match in a real store, and the message
a malformed query gets."""
from __future__ import annotations

import pytest

from helpers import task_row
from monitor.query import search
from monitor.query.tasks import TaskQuery, fetch_tasks
from monitor.query.search import BoolOp, Not, SearchError, Term

UUIDS = {
    "add": "0a1b2c3d-0000-4000-8000-000000000001",
    "checkout": "0a1b2c3d-0000-4000-8000-000000000002",
    "declined": "9f8e7d6c-0000-4000-8000-000000000003",
    "retrying": "9f8e7d6c-0000-4000-8000-000000000004",
    "percent": "5555aaaa-0000-4000-8000-000000000005",
}
# Recorded from the brokers named eu and eu-west; `percent` before brokers were recorded (none).
ROWS = [
    task_row(uuid=UUIDS["add"], name="tasks.add", state="SUCCESS", worker="celery@alpha", args="(2, 3)",
             kwargs="{}", result="5", broker="eu"),
    task_row(uuid=UUIDS["checkout"], name="shop.checkout", state="STARTED", worker="celery@beta", args="()",
             kwargs="{'user_id': 42, 'cart': 'big'}", broker="eu"),
    task_row(uuid=UUIDS["declined"], name="payments.charge", state="FAILURE", worker="celery@alpha",
             args="(1042,)", kwargs="{'user_id': '42'}", exception="ValueError('card declined: connection reset')",
             broker="eu"),
    task_row(uuid=UUIDS["retrying"], name="inventory.sync", state="RETRY", worker="celery@batch", args="('north',)",
             kwargs="{'user_id': 420}", exception="ConnectionError('connection reset by peer')", broker="eu-west"),
    task_row(uuid=UUIDS["percent"], name="reports.build", state="SUCCESS", worker="celery@batch", args="('100%',)",
             kwargs="{}", result="under_score"),
]


@pytest.fixture(scope="module")
def store(make_module_store):
    store = make_module_store("search")
    store.write_batch(tasks=ROWS)
    return store


@pytest.mark.parametrize("query, tree", [
    ("tasks.add", Term(None, "tasks.add")),
    ("name:tasks.add state:FAILURE", BoolOp("AND", (Term("name", "tasks.add"), Term("state", "FAILURE")))),
    ("a OR b c", BoolOp("OR", (Term(None, "a"), BoolOp("AND", (Term(None, "b"), Term(None, "c")))))),
    ("a and (b or c)", BoolOp("AND", (Term(None, "a"), BoolOp("OR", (Term(None, "b"), Term(None, "c")))))),
    ("-worker:celery@batch", Not(Term("worker", "celery@batch"))),
    ("NOT NOT a", Not(Not(Term(None, "a")))),
    ('"connection reset"', Term(None, "connection reset")),
    ('exception:"card declined: x"', Term("exception", "card declined: x")),
    ('"say \\"hi\\""', Term(None, 'say "hi"')),
    ("NAME:x", Term("name", "x")),
    ("celery@host:1", Term(None, "celery@host:1")),  # not a field name: plain text
    ("-", Term(None, "-")),
    ("-(a OR b) c", BoolOp("AND", (Not(BoolOp("OR", (Term(None, "a"), Term(None, "b")))), Term(None, "c")))),
    ("- (a)", BoolOp("AND", (Term(None, "-"), Term(None, "a")))),  # a '-' apart is text, as before
    ("lost:yes -lost:no", BoolOp("AND", (Term("lost", "yes"), Not(Term("lost", "no"))))),
    ("   ", None),
    ("", None),
])
def test_query_parses_to_tree(query, tree):
    assert search.parse(query) == tree


@pytest.mark.parametrize("query, message, position", [
    ("(name:a", "missing ')'", 7),  # the end of the query
    ("name:a)", "unmatched ')'", 6),
    ("()", "empty parentheses", 1),
    ("a AND", "expected a search term after AND, found the end of the query", 5),
    ("OR a", "expected a search term here, found 'OR'", 0),
    ("a AND OR b", "expected a search term after AND, found 'OR'", 6),
    ("NOT", "expected a search term after NOT", 3),
    ('"unclosed', "unclosed quote", 0),
    ('a  name:"unclosed', "unclosed quote", 3),
    ("name:x colour:red", "unknown field 'colour:'", 7),
    ("name:", "'name:' needs a value, e.g. name:tasks.add", 0),
    ("a (state:NOPE)", "unknown state NOPE", 3),
    ("lost:maybe", "'lost:' is yes or no", 0),
    ("state:SUCCESS,nope", "unknown state NOPE", 0),
    ("runtime>2 received>=soon", "received: expected", 10),
    ("(" * 30 + "a" + ")" * 30, "nests too deeply", 20),
    ("NOT " * 30 + "a", "nests too deeply", 80),
    ("a " * 300, "too long", None),
])
def test_malformed_query_raises_search_error_with_message(query, message, position):
    with pytest.raises(SearchError) as raised:
        search.compile_search(query)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)  # shown as one line next to the search box
    assert raised.value.position == position  # what the page points at under the search text


@pytest.mark.parametrize("query, expected", [
    ("name:tasks.add", ["add"]),
    ("TASKS.ADD", ["add"]),  # free text ignores case
    ("state:failure", ["declined"]),
    ("state:FAILURE,RETRY", ["declined", "retrying"]),
    ("state:FAILURE OR state:RETRY", ["declined", "retrying"]),
    ("worker:celery@alpha", ["add", "declined"]),
    ("-worker:celery@alpha", ["checkout", "retrying", "percent"]),
    ('"connection reset"', ["declined", "retrying"]),
    ('"connection reset" -worker:celery@batch', ["declined"]),
    ("exception:ValueError", ["declined"]),
    ("-exception:reset", ["add", "checkout", "percent"]),  # tasks without an exception count as not matching
    ("kwargs:user_id=42", ["checkout", "declined"]),  # 42 and '42', not 420
    ("args:1042", ["declined"]),
    ("result:5", ["add"]),
    ("100%", ["percent"]),  # % and _ are literal, not wildcards
    ("under_score", ["percent"]),
    ("%", ["percent"]),
    (f"uuid:{UUIDS['declined']}", ["declined"]),
    ("uuid:9F8E7D6C", ["declined", "retrying"]),  # a prefix, any case
    (UUIDS["checkout"], ["checkout"]),
    ("(name:tasks.add OR name:shop.checkout) AND -state:STARTED", ["add"]),
    ("NOT (state:SUCCESS OR state:STARTED)", ["declined", "retrying"]),
    ("nothing-like-this", []),
    ("broker:eu", ["add", "checkout", "declined"]),  # the whole name: not eu-west
    ("broker=eu-west", ["retrying"]),
    ("broker:EU", []),  # names are exact
    ("-broker:eu", ["retrying", "percent"]),
    ("broker:eu state:FAILURE OR broker:eu-west", ["declined", "retrying"]),
])
def test_search_matches_in_the_store(store, query, expected):
    rows = fetch_tasks(store, TaskQuery(search=query, limit=100), ("uuid",)).rows
    assert {row["uuid"] for row in rows} == {UUIDS[key] for key in expected}


def test_a_task_query_filters_by_broker_names_with_the_search(store):
    rows = fetch_tasks(store, TaskQuery(search="connection", brokers=("eu",)), ("uuid", "broker")).rows
    assert rows == [{"uuid": UUIDS["declined"], "broker": "eu"}]


@pytest.mark.parametrize("query, message", [
    ("ab\x00cd", "the search contains a NUL character at position 3, which cannot be searched for"),
    ("name:\ud800", "the search contains a lone surrogate (not valid Unicode) at position 6"),
    ("x" * 10_001, "the search is too long: at most 10,000 characters"),
    (42, "the search must be text, not int"),
    (["name:a"], "the search must be text, not list"),
    ("runtime>nan", "runtime: expected a number of seconds, got 'nan'"),
    ("runtime<-inf", "runtime: expected a number of seconds"),
    ("finished>=1e400", "finished: expected a UTC date/time"),
])
def test_what_sqlite_cannot_search_for_is_a_search_error(query, message):
    with pytest.raises(SearchError) as raised:
        search.compile_search(query)
    assert message in str(raised.value)


@pytest.mark.parametrize("query, expected", [
    ('"NEAR" ^ "*"', []),  # FTS5 syntax is searched for literally, as the index's trigrams
    ('"card declined: conn"', ["declined"]),
    ("\U0001F600" * 10_000, []),  # the longest search: 40 kB in UTF-8, below LIKE's 50 kB patterns
    ("%" * 10_000, []),  # each escaped: 20 kB
    ("kwargs:k=" + "\U0001F600" * 9_991, []),
])
def test_fts_syntax_and_the_longest_search_are_plain_text(store, query, expected):
    rows = fetch_tasks(store, TaskQuery(search=query, limit=100), ("uuid",)).rows
    assert {row["uuid"] for row in rows} == {UUIDS[key] for key in expected}
