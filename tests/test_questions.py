"""Issue 10's four questions, asked in chromium by the steps bench/questions.py times (the same code),
on its seeded cluster: the answers read off the pages are those the store holds."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from helpers import FlowerbedServer, get_json, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import questions  # noqa: E402
from monitor.query import analytics  # noqa: E402
from monitor.store import open_store  # noqa: E402


@pytest.fixture
def scenario(restartable_redis, tmp_path):
    db = tmp_path / "flowerbed.db"
    questions.seed_history(str(db))
    cluster = questions.start_cluster(restartable_redis.url, tmp_path)
    server = None
    try:
        server = FlowerbedServer.start(restartable_redis.url, db, tmp_path / "flowerbed.log")
        wait_for(lambda: questions.cluster_ready(server), 90, "the questions' cluster online and inspected")
        yield server
    finally:
        if server is not None:
            server.stop()
        questions.stop(cluster)


def test_each_question_is_answered_as_the_store_says(scenario, browser):
    answers = {answer.question: answer for answer in questions.ask_all(browser, scenario)}
    now = time.time()
    store = open_store(str(scenario.db))
    try:
        last_hour = analytics.last("1h", now)
        compared = analytics.compare(store, last_hour.shifted(-86400), last_hour, now)
        runtime_ratios = compared[["runtime_p50_ratio", "runtime_p95_ratio"]].max(axis=1)
        groups = analytics.exception_groups(store, last_hour)
        stuck = analytics.stuck_and_lost_tasks(store, last_hour, analytics.Limits(), now)[0]
        waiting = analytics.waiting_tasks(store, last_hour, analytics.Limits(), now)
    finally:
        store.close()

    slower = answers["which task got slower than yesterday?"].found
    assert slower["name"] == compared.loc[runtime_ratios.idxmax(), "name"] == questions.SLOWED_NAME
    assert float(slower["p50 change"].lstrip("×")) >= 2

    fails = answers["what fails most, and since when?"].found
    top = groups.iloc[0]
    assert (fails["exception"], fails["message"], fails["names"]) == (top["type"], top["message"], top["names"])
    assert fails["names"] == questions.FAILING_NAME
    assert fails["first seen"] == time.strftime("%m-%d %H:%M:%S", time.gmtime(top["first"]))
    assert abs(int(fails["count"]) - int(top["count"])) <= 3  # the hour slid on between the page and here

    overloaded = answers["which worker is overloaded?"].found
    _status, workers = get_json(f"{scenario}/api/workers")
    utilisation = {name: len(worker["active"]) / worker["stats"]["pool"]["max-concurrency"]
                   for name, worker in workers.items()}
    assert overloaded["worker"] == max(utilisation, key=utilisation.get) == questions.BATCH_WORKER
    assert overloaded["utilisation"] == "100 %"

    anything_stuck = answers["is anything stuck?"].found
    assert (anything_stuck["stuck"], anything_stuck["waiting"]) == (len(stuck), len(waiting)) == (1, 1)
    assert anything_stuck["stuck names"] == stuck["name"].iloc[0] == questions.STUCK[0]
