"""What every store backend holds, whatever its SQL: the task and worker fields, the states, the
rule that says a worker is online."""
from __future__ import annotations

# The version of what a store holds: a store written by a newer Flowerbed is refused, not misread.
# 1: tasks, workers, samples, meta, the text index and the rollups (Flowerbed 0.1).
# 2: tasks and workers carry the name of the broker they were recorded from (NULL before).
# 3: the audit log of control actions, and the links from a re-run task to its original.
# 4: queues (each watched queue's latest depth) and queue_samples (depth over time).
# 5: tasks carry the Lamport clock of their last event (NULL before); their parent_id is indexed, to
#    list a task's children, and their timestamp, for the API's order (the most recent event first).
# 6: workers carry when they last came online (online_at, NULL before), as the worker stamped it, and
#    how far this host's clock is ahead of theirs (clock_offset).
# 7: task_events (task events counted per worker, task name and event type) and task_runtimes /
#    task_runtime_buckets (successful tasks' runtimes as a histogram): the counters /metrics serves;
#    task_events_unnamed (events waiting for their task's name to be counted).
SCHEMA_VERSION = 7


class StoreError(Exception):
    """A store this Flowerbed cannot use; the message says why, in one line, for the user."""

# Task columns in table order. `seq` (the rowid) orders tasks by when they were first seen and
# drives retention; `uuid` is the key events are merged on.
TASK_FIELDS = (
    "uuid", "name", "state", "worker", "args", "kwargs", "result", "exception", "traceback",
    "retries", "sent", "received", "started", "succeeded", "failed", "retried", "revoked",
    "rejected", "runtime", "eta", "expires", "exchange", "routing_key", "root_id", "parent_id",
    "client", "timestamp", "broker", "clock",
)
# The fields a task event sets to its time, each named as its event (task-sent sets `sent`…).
EVENT_TIME_FIELDS = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
TIME_FIELDS = EVENT_TIME_FIELDS + ("timestamp",)
NUMERIC_FIELDS = TIME_FIELDS + ("retries", "runtime", "clock")
# The columns added after version 1, by table, with their SQLite type: a store written before gets them
# (NULL) when opened.
ADDED_COLUMNS = {"tasks": {"broker": "TEXT", "clock": "INTEGER"}, "workers": {"broker": "TEXT", "online_at": "REAL",
                                                                                "clock_offset": "REAL"}}
TERMINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")

WORKER_FIELDS = (
    "hostname", "pid", "freq", "last_heartbeat", "offline_at", "active", "processed", "loadavg",
    "sw_ident", "sw_ver", "sw_sys", "broker", "online_at", "clock_offset",
)
# Per-worker counts of task events, kept across restarts (the heartbeat's own `processed`
# restarts from zero with the worker).
WORKER_COUNTERS = ("received", "started", "succeeded", "failed", "retried")
# celery's Worker.alive rule: a worker is gone once two heartbeat periods pass without one.
HEARTBEAT_EXPIRE_FACTOR = 2.0

# The columns free text searches, indexed by trigrams so that a substring search reads the tasks
# holding the term's trigrams instead of every row (a LIKE scan took ~110 ms at 100k tasks).
TEXT_COLUMNS = ("name", "uuid", "worker", "args", "kwargs", "result", "exception")


# A task its worker left behind: still STARTED, and begun before the worker's last start (online_at, in
# the worker's own clock, as `started`). A worker that restarts neither finishes what it ran nor says so:
# celery and Flower show such a task as STARTED for ever.
LOST_SQL = ("(tasks.state = 'STARTED' AND tasks.started < "
            "(SELECT workers.online_at FROM workers WHERE workers.hostname = tasks.worker))")


def lost_at(task: dict, worker: dict | None) -> float | None:
    """When `task`'s worker started again, leaving it behind (LOST_SQL's rule for one task), else None."""
    online_at = (worker or {}).get("online_at")
    if task.get("state") != "STARTED" or task.get("started") is None or online_at is None:
        return None
    return online_at if task["started"] < online_at else None


def is_online(worker: dict, now: float) -> bool:
    last = worker.get("last_heartbeat")
    if last is None:
        return False
    if worker.get("offline_at") and worker["offline_at"] >= last:
        return False
    return now < last + (worker.get("freq") or 2.0) * HEARTBEAT_EXPIRE_FACTOR

# One row per control action (monitor/control.py): who (`actor`), when, what, on what, with which arguments,
# and what the workers answered. `arguments` and `replies` are JSON.
AUDIT_FIELDS = ("at", "actor", "action", "target", "arguments", "outcome", "message", "replies")
# The columns the Audit page's search looks in.
AUDIT_SEARCHED = ("actor", "action", "target", "arguments", "outcome", "message")
