"""The Dashboard's worker rows without a server: pool size and utilisation from the stored inspect
reply, the busy mark from the heartbeat floors, the online and failed cards' colours, and what the
Succeeded and Failed cards count."""
from __future__ import annotations

import pytest

from components.workers import (BUSY_MINUTES, CARD_COUNT_MEANING, busy_window_start, dashboard_layout, failed_tone,
                                online_tone, worker_rows)

NOW = 1_800_000_000.0
WINDOW_START = busy_window_start(NOW)


def worker(hostname="w@a", active=3, pool=4, online=True):
    return {"hostname": hostname, "online": online, "active": active, "freq": 2.0, "last_heartbeat": NOW - 1,
            "inspect": {"stats": {"pool": {"max-concurrency": pool}}} if pool else {}}


def test_utilisation_is_active_over_the_pool_size_the_worker_reported():
    row, = worker_rows([worker(active=3, pool=4)], NOW)
    assert (row["concurrency"], row["utilisation"], row["busy"]) == (4, 0.75, False)


def test_without_an_inspect_reply_or_online_there_is_no_utilisation():
    no_reply, offline = worker_rows([worker("w@a", pool=None), worker("w@b", online=False)], NOW)
    assert (no_reply["concurrency"], no_reply["utilisation"]) == (None, None)
    assert (offline["concurrency"], offline["utilisation"]) == (4, None)


@pytest.mark.parametrize("floor, busy", [
    ((4, WINDOW_START + 1), True),  # every heartbeat since the window began: the pool was full
    ((3, WINDOW_START + 1), False),  # one heartbeat at 75 %: not all along
    ((4, WINDOW_START + 60), False),  # full, but only for the last two minutes it has been seen
    (None, False),  # no heartbeat in the window
])
def test_a_worker_is_marked_busy_only_when_over_90_percent_through_the_whole_window(floor, busy):
    floors = {"w@a": floor} if floor else {}
    row, = worker_rows([worker(active=4, pool=4)], NOW, floors)
    assert row["busy"] is busy
    assert row["busy_minutes"] == BUSY_MINUTES


def test_the_online_card_is_green_only_when_every_worker_is_online():
    def rows(*online):
        return worker_rows([worker(f"w@{n}", online=state) for n, state in enumerate(online)], NOW)
    assert online_tone(rows(True, True)) == "tone-ok"
    assert online_tone(rows(True, False)) == "tone-warn"
    assert online_tone(rows(False)) == "tone-bad"
    assert online_tone([]) == "tone-warn"  # no worker seen yet is not good news


def test_the_failed_card_is_red_only_when_a_task_failed():
    def rows(*failed):
        return worker_rows([{**worker(f"w@{n}"), "failed": count} for n, count in enumerate(failed)], NOW)
    assert failed_tone(rows(0, 0)) == "tone-ok"  # red at 0 read as an alarm
    assert failed_tone(rows(0, 2)) == "tone-bad"
    assert failed_tone([]) == "tone-ok"


def test_the_succeeded_and_failed_cards_say_they_count_since_recording_began():
    """Analytics' "Failed" counts a time range; on hover the Dashboard's says why its number differs."""
    cards = {}
    pending = [dashboard_layout(worker_rows([worker()], NOW)).to_plotly_json()]
    while pending:
        node = pending.pop()
        if hasattr(node, "to_plotly_json"):
            node = node.to_plotly_json()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict) and "props" in node:
            props = node["props"]
            if "stat-card" in (props.get("className") or ""):
                label = props["children"][0].to_plotly_json()["props"]["children"]
                cards[label] = props.get("title")
            pending.append(props.get("children"))
    assert cards["Succeeded"] == CARD_COUNT_MEANING.format("Successes")
    assert cards["Failed"] == CARD_COUNT_MEANING.format("Failures")
    assert cards["Online workers"] is None
