"""The collector's merge: celery's `State` rules for task and worker events, without its objects.

celery's State builds a `Task` object per task (a WeakSet of children, bound serializers), keeps
an LRU cache behind a lock, a time-ordered heap of events and indexes by name and worker, none of
which the collector reads: that was half of the writing thread's time (bench/cpu.py). Here a
task is a plain dict of its fields, merged with the same rules, so that the store gets the same
rows (tests/test_merge.py runs both on the same streams):

- an event sets the field of its name to its time (`started`…); a custom state's event does not;
- an event of a state that logically comes before the task's current one (celery's `precedence`,
  RETRY excepted both ways) keeps only what its state is the source of (task-received: name, args,
  kwargs…), else its fields win and it sets `state` and `timestamp`;
- a finished task (SUCCESS, FAILURE, REVOKED) stays finished: a late received, started or retried
  event (or a custom state) only sets its time and what its merge rule keeps. celery lets RETRY win
  over any state; a monitor must not show a task that succeeded as retrying because that event came
  last.

Tasks are let go oldest first beyond `tasks_in_memory`, as celery's cache does (it never moves a
task up when merging); a late event for a task let go is merged by the store's upsert. Workers stay
celery's `Worker` objects (a few, and their heartbeat and drift rules are theirs).

This is the per-event hot path: closures over locals, as celery's own `State._create_dispatcher`.
"""
from __future__ import annotations

from celery import states
from celery.events.state import TASK_EVENT_TO_STATE, Task, Worker

from monitor.store.schema import TERMINAL_STATES

_RECEIVED_KEEPS = Task.merge_rules[states.RECEIVED]


class MergeState:
    """Tasks (dicts) and workers (celery's Worker) as the merged events leave them.

    `merge_task(event, subject)` returns (task, worker): the task's dict and the Worker that sent
    the event (None for a client's task-sent); `merge_worker(event, subject)` returns the Worker.
    Both raise (KeyError, TypeError…) on an event celery's State could not merge either: the
    caller counts it as malformed."""

    def __init__(self, tasks_in_memory: int = 5_000, workers_in_memory: int = 10_000):
        self.tasks: dict[str, dict] = {}
        self.workers: dict[str, Worker] = {}
        self.merge_task = self._task_merger(tasks_in_memory, workers_in_memory)
        self.merge_worker = self._worker_merger(workers_in_memory)

    def _add_worker(self, hostname: str, limit: int) -> Worker:
        workers = self.workers
        if len(workers) >= limit:
            del workers[next(iter(workers))]
        worker = workers[hostname] = Worker(hostname)
        return worker

    def _task_merger(self, limit: int, workers_limit: int):
        tasks, workers, add_worker = self.tasks, self.workers, self._add_worker
        get_task, get_worker = tasks.get, workers.get
        event_state, precedence = TASK_EVENT_TO_STATE.get, states.precedence
        RETRY, RECEIVED, PENDING, terminal = states.RETRY, states.RECEIVED, states.PENDING, TERMINAL_STATES
        keeps = _RECEIVED_KEEPS

        def merge_task(event, subject):
            # celery's State reads these five first and merges nothing without them.
            uuid, hostname, timestamp, local_received = (
                event["uuid"], event["hostname"], event["timestamp"], event["local_received"])
            event["clock"]
            task = get_task(uuid)
            if task is None:
                if len(tasks) >= limit:
                    del tasks[next(iter(tasks))]
                task = tasks[uuid] = {"uuid": uuid, "state": PENDING, "clock": 0}  # celery's Task.clock until set
            if subject == "sent":  # sent by the client, not by a worker
                task["client"] = hostname
                worker = None
            else:
                worker = get_worker(hostname) or add_worker(hostname, workers_limit)
                task["worker"] = hostname
                if local_received:  # a task event is a sign of life too
                    worker.event(None, local_received, timestamp)
            state, current = event_state(subject), task["state"]
            if current in terminal and state not in terminal:
                if state is not None:
                    task[subject] = timestamp  # e.g. `started`: when it happened is still true
                if state == RECEIVED:
                    task.update({key: value for key, value in event.items() if key in keeps})
                return task, worker
            if state is not None:
                task[subject] = timestamp
            else:
                state = subject.upper()  # a custom state
            if state != RETRY and current != RETRY and precedence(state) > precedence(current):
                # This state comes before the current one: merge only what it is the source of.
                if state == RECEIVED:
                    task.update({key: value for key, value in event.items() if key in keeps})
                else:
                    task.update(event)
            else:
                task.update(event)
                task["state"] = state
                task["timestamp"] = timestamp
            return task, worker
        return merge_task

    def _worker_merger(self, limit: int):
        add_worker, get_worker = self._add_worker, self.workers.get

        def merge_worker(event, subject):
            hostname, timestamp, local_received = event["hostname"], event["timestamp"], event["local_received"]
            worker = get_worker(hostname)
            if worker is None:  # an unknown worker's goodbye is written, not kept (celery's rule)
                worker = Worker(hostname) if subject == "offline" else add_worker(hostname, limit)
            worker.event(subject, timestamp, local_received, event)
            return worker
        return merge_worker
