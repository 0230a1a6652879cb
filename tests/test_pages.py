"""The worker, broker and audit pages' layout builders on data shaped as the store gives it (no I/O): what
the browser tests cannot set up cheaply, such as several brokers, a failed reading, limits."""
from __future__ import annotations

import json

from components.audit import audit_table
from components.broker import broker_sections
from components.worker import pool_facts, registered_tasks


def text(component) -> str:
    """Everything a component tree holds, as JSON text."""
    return json.dumps(component, default=lambda nested: nested.to_plotly_json())


def queue(broker, name, messages, consumers, workers=()):
    return {"broker": broker, "name": name, "messages": messages, "consumers": consumers, "workers": list(workers)}


def test_each_broker_gets_its_section_with_its_reading_or_why_it_failed():
    queues = [queue("eu", "orders", 4, 0), queue("eu", "celery", 0, 1, ["w@eu"]), queue("us", "celery", None, None)]
    reports = {"eu": {"at": 100.0, "error": None}, "us": {"at": 100.0, "error": "OperationalError: refused"},
               "asia": {"at": 90.0, "error": None}}
    sections = broker_sections([], queues, reports, 105.0, lambda path: path)
    assert [section.to_plotly_json()["props"]["data-broker"] for section in sections] == ["asia", "eu", "us"]
    asia, eu, us = map(text, sections)
    assert "No queue seen yet." in asia
    assert "Read 5 s ago." in eu and "orders" in eu and "4 messages wait and no worker consumes this queue." in eu
    assert "/worker/w@eu" in eu
    assert "could not be read at" in us and "OperationalError: refused" in us and "not on the broker" in us


def test_registered_tasks_read_their_limits_and_counts():
    rows = registered_tasks(["sample.sleep [soft_time_limit=30.0 time_limit=60.0]", "sample.add [rate_limit=10/m]",
                             "sample.fail"], {"sample.add": 7})
    assert rows == [
        {"name": "sample.add", "rate_limit": "10/m", "time_limit": None, "soft_time_limit": None, "processed": 7},
        {"name": "sample.fail", "rate_limit": None, "time_limit": None, "soft_time_limit": None, "processed": 0},
        {"name": "sample.sleep", "rate_limit": None, "time_limit": "60.0", "soft_time_limit": "30.0", "processed": 0}]


def test_pool_facts_of_an_autoscaled_prefork_pool():
    facts = dict(pool_facts({"pool": {"implementation": "celery.concurrency.prefork:TaskPool", "max-concurrency": 8,
                                      "processes": [11, 12], "max-tasks-per-child": 100, "timeouts": [30, 60]},
                             "autoscaler": {"min": 2, "max": 8, "current": 2}, "prefetch_count": 8}))
    assert facts["implementation"] == "prefork" and facts["processes"] == "11, 12"
    assert facts["autoscale"] == "2 – 8 (now 2)" and facts["max tasks per child"] == 100
    assert facts["pool time limits"] == "soft 30 · hard 60" and facts["prefetch count"] == 8


def test_the_status_line_warns_of_unheard_events_only_where_a_broker_loses_them(tmp_path):
    from celery import Celery

    from components.shell import collector_status
    from monitor.ingest.collector import Collector
    from monitor.store.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "status.db"))
    warning = "events published while no collector listens are lost"
    for broker, lost in (("redis://127.0.0.1:6379/0", True), ("memory://localhost/", False)):
        stats = Collector(Celery(broker=broker, set_as_current=False), store).stats()
        assert stats["unheard_events_lost"] is lost
        assert (warning in text(collector_status(stats, stats["updated_at"], 30.0))) is lost, broker


def test_the_status_line_counts_in_words_that_agree_with_the_number():
    from components.shell import collector_status

    base = {"stored": 10, "lag_seconds": 0.1, "backlog": 0, "connected": True, "running": True, "role": "active",
            "updated_at": 1000.0}
    one = text(collector_status({**base, "gaps": 1, "disconnects": 1, "rejected": 1}, 1000.0, 30.0))
    assert "1 task seen finishing without its earlier events" in one
    assert "1 disconnect" in one and "1 disconnects" not in one and "1 row refused by the store" in one
    many = text(collector_status({**base, "gaps": 2, "disconnects": 3}, 1000.0, 30.0))
    assert "2 tasks seen finishing without their earlier events" in many and "3 disconnects" in many


def test_the_status_line_counts_the_collectors_sharing_a_queue_and_warns_of_a_silent_one():
    from components.shell import collector_status

    shared = {"stored": 10, "lag_seconds": 0.1, "backlog": 0, "connected": True, "running": True, "role": "active",
              "updated_at": 1000.0, "events_queue": "flowerbed", "collectors": ["a", "b"], "silent_collectors": 0}
    together = text(collector_status(shared, 1000.0, 30.0))
    assert '"Recording"' in together and "2 collectors share the events queue flowerbed" in together
    assert "silent" not in together
    silent = text(collector_status({**shared, "collectors": ["a"], "silent_collectors": 1}, 1000.0, 30.0))
    assert '"Recording, a collector silent"' in silent and "collectors share" not in silent
    assert "1 collector of the queue silent for over 30 s" in silent
    cut_off = text(collector_status({**shared, "disconnected_collectors": 1, "broker_error": "refused"}, 1000.0, 30.0))
    assert '"Recording, a collector cut off"' in cut_off and "error: refused" in cut_off and "last error" not in cut_off
    assert "1 collector of the queue cannot reach the broker; the others record" in cut_off


def test_the_bulk_rerun_preview_names_what_it_counted():
    from callbacks.tasks import describe_query

    assert describe_query({}) == describe_query({"search": "", "state": "ALL"}) == "the empty search (every task)"
    assert describe_query({"state": "FAILURE"}) == "state FAILURE"
    assert describe_query({"search": "x", "state": "FAILURE", "broker": "b"}) == (
        'the search "x" and state FAILURE and broker b')


def test_an_empty_audit_log_says_whether_nothing_was_done_or_nothing_matches():
    assert "No action taken yet" in text(audit_table([], searched=False, relative_path=lambda path: path))
    assert "No action matches this search." in text(audit_table([], searched=True, relative_path=lambda path: path))
