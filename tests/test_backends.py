"""SQLite and PostgreSQL give the same answers: one set of awkward tasks (NULLs, ties, mixed case,
LIKE's wildcards, non-ASCII, retried and late rows) written to both, then every kind of query the
pages and the API make, compared row for row and in order."""
from __future__ import annotations

import random

import pandas as pd
import pytest

from conftest import StoreMaker
from helpers import task_row
from monitor.query import analytics
from monitor.query.tasks import TaskQuery, fetch_tasks

NOW = 1_795_600_000.0
NAMES = ["shop.checkout", "Shop.Refund", "reports.build_100%", "mail.send", "ünïcode.task", None]
WORKERS = ["celery@alpha", "celery@beta", "Celery@Gamma", None]
STATES = ["SUCCESS", "FAILURE", "STARTED", "RECEIVED", "RETRY", "REVOKED"]


def awkward_batches(seed: int = 7) -> list[list[tuple]]:
    rng = random.Random(seed)
    batches = []
    for batch in range(6):
        rows = []
        for number in range(batch * 250, batch * 250 + 250):
            state = rng.choice(STATES)
            received = NOW - rng.uniform(0, 3000) if rng.random() > 0.05 else None
            started = received + rng.choice([0.0, 0.5, rng.uniform(0, 2)]) if received and state != "RECEIVED" else None
            runtime = rng.choice([None, 0.25, 1.0, round(rng.lognormvariate(-1, 1), 6)]) if state in (
                "SUCCESS", "FAILURE") else None
            finished = started + (runtime or 0) if started else None
            rows.append(task_row(
                uuid=f"{number:08x}-aaaa-4bbb-8ccc-{rng.getrandbits(48):012x}", name=rng.choice(NAMES), state=state,
                worker=rng.choice(WORKERS), args=rng.choice(["(1, 2)", "('100%',)", "('A_b',)", None, "()"]),
                kwargs=rng.choice(["{'user_id': 42}", "{'user_id': 420}", "{}", None]),
                result=rng.choice(["None", "'OK'", "under_score", None]),
                exception=f"ValueError('card {rng.randint(1, 9)} declined')" if state == "FAILURE" else None,
                received=received, started=started, runtime=runtime, retries=rng.choice([None, 0, 1]),
                succeeded=finished if state == "SUCCESS" else None, failed=finished if state == "FAILURE" else None,
                routing_key=rng.choice(["default", "priority", None])))
        # Late events for tasks of the previous batch: some must not move a finished task back.
        rows += [task_row(uuid=row[0], state="STARTED") for row in rng.sample(batches[-1], 40)] if batches else []
        batches.append(rows)
    return batches


@pytest.fixture(scope="module")
def stores(request, tmp_path_factory):
    request.getfixturevalue("postgres_database")  # skips where there is no PostgreSQL
    opened = {}
    for backend in ("sqlite", "postgresql"):
        maker = StoreMaker(backend, tmp_path_factory.mktemp(backend), request)
        store = opened[backend] = maker("parity", max_tasks=1200)
        for rows in awkward_batches():
            store.write_batch(tasks=rows)
        store.enforce_retention(NOW)
        store.fold_rollups()
    yield opened
    for store in opened.values():
        store.close()


QUERIES = [
    TaskQuery(limit=2000),
    *(TaskQuery(sort=((column, descending),), limit=300, offset=offset)
      for column in ("runtime", "name", "worker", "received", "started", "state", "retries", "uuid")
      for descending in (False, True) for offset in (0, 250)),
    TaskQuery(sort=(("name", False), ("runtime", True)), limit=500),
    TaskQuery(states=("FAILURE",), sort=(("runtime", True),)),
    *(TaskQuery(search=text, limit=2000) for text in (
        "shop", "SHOP.checkout", "100%", "a_b", "ünï", "declined", "user_id=42", "kwargs:user_id=42",
        "name:refund OR worker:gamma", "-state:SUCCESS runtime>0.3", "uuid:0000001", "state:failure,revoked",
        "name=Shop.Refund", "received>=1795598500 received<1795599500", "finished>=1795599000", "NOT args:1",
        '"card 3"', "exception:ValueError worker=celery@beta")),
    TaskQuery(column_filters={"name": {"filterType": "text", "type": "startsWith", "filter": "SHOP"}}, limit=2000),
    TaskQuery(column_filters={"runtime": {"filterType": "number", "type": "blank"}}, limit=2000),
    TaskQuery(column_filters={"worker": {"filterType": "text", "type": "notBlank"}}, sort=(("worker", True),),
              limit=2000),
]


@pytest.mark.parametrize("query", QUERIES, ids=lambda query: repr(query)[:120])
def test_task_queries_give_the_same_rows_in_the_same_order(stores, query):
    pages = {backend: fetch_tasks(store, query) for backend, store in stores.items()}
    sqlite, postgresql = pages["sqlite"], pages["postgresql"]
    assert (sqlite.total, sqlite.total_is_exact) == (postgresql.total, postgresql.total_is_exact)
    assert [row["uuid"] for row in sqlite.rows] == [row["uuid"] for row in postgresql.rows]
    assert sqlite.rows == postgresql.rows  # every field, with its type


def test_the_stored_tasks_and_workers_are_the_same(stores):
    assert stores["sqlite"].count_tasks() == stores["postgresql"].count_tasks() == 1200


SCOPES = [analytics.Scope(NOW - 3600, NOW), analytics.Scope(NOW - 3600, NOW, names=("shop.checkout",)),
          analytics.Scope(NOW - 900, NOW, workers=("celery@beta",), queues=("priority",))]


@pytest.mark.parametrize("scope", SCOPES, ids=["all", "one-name", "worker-and-queue"])
@pytest.mark.parametrize("chart", ["throughput", "task_stats", "exception_groups", "slowest", "filter_options"])
def test_analytics_give_the_same_answers(stores, scope, chart):
    def answer(store):
        if chart == "throughput":
            return analytics.throughput(store, scope, NOW)
        if chart == "task_stats":
            return analytics.task_stats(store, scope, NOW)
        if chart == "exception_groups":
            return analytics.exception_groups(store, scope)
        if chart == "slowest":
            return analytics.slowest_tasks(store, scope, analytics.task_stats(store, scope, NOW))
        return pd.DataFrame(analytics.filter_options(store).items())
    sqlite, postgresql = answer(stores["sqlite"]), answer(stores["postgresql"])
    assert not sqlite.empty or chart == "slowest" and scope.queues
    pd.testing.assert_frame_equal(sqlite.reset_index(drop=True), postgresql.reset_index(drop=True), check_dtype=False)
