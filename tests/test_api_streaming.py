"""GET /api/tasks streams a large answer: the same bytes json.dumps gives for the whole {uuid: task}
object, in query order, while the server holds only a chunk of rows at a time; a client that stops
reading leaves no read transaction open."""
from __future__ import annotations

import hashlib
import json
import sqlite3
import tracemalloc

import pytest

import app as flowerbed_app
from helpers import task_row
from monitor.settings import Settings

ROWS = 6000
ARGS_CHARS = 300  # sent as \\u00e9: ~2.3 kB per task in the answer, ~14 MB for all of them
URL = "/api/tasks?limit=10000&sort_by=-runtime"


@pytest.fixture(scope="module")
def dash_app(tmp_path_factory):
    settings = Settings(broker="memory://localhost/", db=str(tmp_path_factory.mktemp("stream") / "stream.db"))
    app = flowerbed_app.create_app(settings)
    services = app.server.config["flowerbed_services"]
    services.store.write_batch(tasks=[
        task_row(uuid=f"00000000-0000-4000-8000-{i:012d}", name=f"tasks.n{i % 7}", state="SUCCESS",
                 args=f"({i}, '{'é' * ARGS_CHARS}')", runtime=(i * 7919 % ROWS) / 100, received=1.8e9 + i)
        for i in range(ROWS)])
    yield app
    services.stop()


def test_the_answer_is_what_json_dumps_gives_in_query_order(dash_app):
    response = dash_app.server.test_client().get(URL, buffered=True)
    body = response.get_data(as_text=True)
    tasks = json.loads(body)
    assert body == json.dumps(tasks)  # Flask's own layout: ", " and ": ", ASCII, keys in the order sent
    store = dash_app.server.config["flowerbed_services"].store
    assert list(tasks) == [row["uuid"] for row in store.query("SELECT uuid FROM tasks ORDER BY runtime DESC, seq DESC")]
    assert response.headers["X-Total-Count"] == str(ROWS)
    assert tasks["00000000-0000-4000-8000-000000000042"]["args"].startswith("(42, 'éé")


def test_memory_held_while_sending_stays_far_below_the_answer(dash_app):
    client = dash_app.server.test_client()
    digest, size, pieces = hashlib.sha256(), 0, 0
    tracemalloc.start()
    try:
        with client.get(URL, buffered=False) as response:
            for piece in response.response:  # as the server sends it, nothing kept
                digest.update(piece)
                size += len(piece)
                pieces += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole = client.get(URL, buffered=True).get_data()
    assert (size, digest.hexdigest()) == (len(whole), hashlib.sha256(whole).hexdigest())
    assert pieces > 10
    # Building the answer whole holds the text and every row at once: several times its size.
    assert peak < size / 4, (peak, size)


def test_a_client_that_stops_reading_leaves_no_read_transaction_open(dash_app):
    client = dash_app.server.test_client()
    with client.get(URL, buffered=False) as response:
        next(iter(response.response))
    # A read transaction still open would keep a checkpoint from truncating the write-ahead log
    # once something is written after it began.
    store = dash_app.server.config["flowerbed_services"].store
    store.set_meta("written after the answer began", True)
    with sqlite3.connect(store.path) as other:
        busy, _log, _checkpointed = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    assert client.get("/api/tasks?limit=1", buffered=True).status_code == 200
