"""Soak: Flowerbed under a steady real workload for a settable time, with faults injected on a schedule.

    python bench/soak.py --minutes 30          # the long run: a fault every 150 s, cycling
    python bench/soak.py --minutes 3           # a short try: a fault every 30 s

Everything runs on loopback in a temporary directory removed at the end: a private redis-server (the
broker), a real `celery worker` running tests/sample_tasks.py, a producer sending a steady mix of
tasks (successes, failures, retries) and recording each uuid with its expected final state, an
independent subscriber to the event bus (the witness: what was published, and when), and Flowerbed
itself (`python cli.py`), its store on a small tmpfs so that the disk can be filled.

Faults, in turn: broker restart, `kill -9` of Flowerbed (its whole process group, then started again
on the same db and port), an exclusive lock held on the store, disk full, a burst of poison events.
Printed: per fault its time to recover (until /healthcheck/ready answers 200, or /api/collector says
connected where that route is missing, and until a task sent after the fault is stored in its final
state), Flowerbed's RSS and collector counters every --sample-seconds, and at the end the tasks sent,
stored, lost (in a documented window or otherwise) and the events dropped or malformed. Exit code 0
either way; the last line is the verdict.
"""
from __future__ import annotations

import argparse
import base64
import collections
import errno
import itertools
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuid_module
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT / "tests"), str(BENCH)]
from helpers import CeleryWorker, Process, RedisServer, free_port, get  # noqa: E402
from stream import print_table, record_templates  # noqa: E402

FAULTS = ("broker", "kill", "lock", "disk", "poison")
# (weight, task, args, expected final state): flaky(2) retries once then succeeds, flaky(4) runs out of retries.
WORKLOAD = (
    (60, "sample.add", (2, 3), "SUCCESS"),
    (15, "sample.sleep", (0.2,), "SUCCESS"),
    (12, "sample.fail", ("soak failure",), "FAILURE"),
    (8, "sample.flaky", (2,), "SUCCESS"),
    (5, "sample.flaky", (4,), "FAILURE"),
)
PROBE_TASK = "sample.add"  # recovery is "a task of this name sent after the fault is stored SUCCESS"
FINAL_EVENTS = {"task-succeeded": "SUCCESS", "task-failed": "FAILURE"}
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
# The longest a sample task lives (a sleep, or two retries 0.2 s apart), for tasks the witness never saw end.
TASK_SPAN_SECONDS = 5.0
COUNTERS = ("received", "stored", "dropped", "malformed", "disconnects")
KNOWN_STATS = {*COUNTERS, "merged", "backlog", "lag_seconds", "connected", "last_error"}
MIB = 1 << 20
# Between two kinds of poison: each lands in a batch of its own (the receiving process sends one every
# 0.1 s), so that a kind that breaks a whole batch does not hide what the next kind does.
POISON_PAUSE = 0.3


# -- the processes -------------------------------------------------------------------------------
class Flowerbed:
    """`python cli.py` on a fixed port and db, which may be killed and started again (one life each)."""

    def __init__(self, broker: str, db: Path, log_path: Path, max_tasks: int, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "cli.py", "--broker", broker, "--db", str(db), "--port", str(self.port),
                        "--max-tasks", str(max_tasks)]
        self.log_path = log_path
        self.process: Process | None = None
        self.lives: list[dict] = []  # per start: {"started": t, "stats": last /api/collector seen}
        self.errors_seen: dict[str, float] = {}  # each distinct last_error, when first seen
        self.extra_fields: set[str] = set()
        self.counter_restarts: list[float] = []  # when its counters went back to zero by themselves
        self.lifecycle = threading.Lock()  # a kill or a restart at a time (fault thread vs sampler)

    def start(self) -> None:
        self.process = Process(self.command, self.log_path, cwd=self.directory)
        self.lives.append({"started": time.time(), "stats": {}})

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def wait_connected(self, timeout: float) -> bool:
        """Until its collector says it listens to the broker: events before that reach nobody."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            if (self.collector() or {}).get("connected"):
                return True
            time.sleep(0.2)
        return False

    def kill(self) -> list[int]:
        """SIGKILL to the whole group (gunicorn master, worker, receiving process); returns pids still alive."""
        pids = [p.pid for p in self.processes()]
        os.killpg(self.process.proc.pid, signal.SIGKILL)
        self.process.proc.wait(10)
        self.process.log.close()
        time.sleep(1)
        return [pid for pid in pids if alive(pid)]

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def processes(self) -> list[psutil.Process]:
        try:
            main = psutil.Process(self.process.proc.pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []

    def rss_mb(self) -> dict[str, float]:
        """VmRSS per role: the gunicorn worker (web and collector), the receiving process, the rest."""
        roles = collections.Counter()
        processes = self.processes()
        for process in processes:
            try:
                command, rss, parent = " ".join(process.cmdline()), process.memory_info().rss, process.ppid()
            except psutil.Error:  # it ended meanwhile
                continue
            if "monitor.ingest.receiving" in command:
                role = "receiving"
            elif parent == processes[0].pid and "cli.py" in command:
                role = "worker"
            else:
                role = "other"  # gunicorn's master
            roles[role] += rss / MIB
        return {"total": sum(roles.values()), **roles}

    def collector(self) -> dict | None:
        """/api/collector now (None when unreachable), remembered as this life's latest."""
        try:
            status, body = get(f"{self.url}/api/collector", timeout=3)
            stats = json.loads(body) if status == 200 else None
        except (OSError, ValueError):
            return None
        if stats is not None:
            previous = self.lives[-1]["stats"]
            if (stats.get("received") or 0) < (previous.get("received") or 0):
                # Counting from zero again without a kill of ours: its collector was started again
                # (gunicorn replaces a worker it finds silent for 30 s).
                self.counter_restarts.append(time.time())
                self.lives.append({"started": time.time(), "stats": {}})
            self.lives[-1]["stats"] = stats
            if stats.get("last_error"):
                self.errors_seen.setdefault(stats["last_error"], time.time())
            self.extra_fields.update(set(stats) - KNOWN_STATS)
        return stats

    def readiness(self, stats: dict | None) -> tuple[bool | None, str]:
        """(healthy, why): /healthcheck/ready, or where it is missing /api/collector's `connected`."""
        try:
            status, body = get(f"{self.url}/healthcheck/ready", timeout=3)
        except OSError as exc:
            return None, f"unreachable ({type(exc).__name__})"
        try:
            why = "; ".join(json.loads(body)["problems"]) or "no problems"
            return status == 200, f"{status} {why[:200]}"
        except (ValueError, KeyError, TypeError):  # 404, or Dash's page for a route it does not know
            pass
        if stats is None:
            return None, "no /healthcheck/ready and no /api/collector"
        healthy = bool(stats.get("connected")) and not stats.get("last_error")
        return healthy, f"(no /healthcheck/ready) connected={stats.get('connected')} last_error={stats.get('last_error')}"

    def stored_since(self, moment: float) -> bool:
        """Whether a probe task the worker received after `moment` is stored in its final state."""
        query = f"taskname={PROBE_TASK}&state=SUCCESS&received_start={moment:.3f}&limit=1"
        try:
            status, body = get(f"{self.url}/api/tasks?{query}", timeout=3)
            return status == 200 and bool(json.loads(body))
        except (OSError, ValueError):
            return False

    def totals(self) -> dict[str, int]:
        """The collector's counters summed over every life (each life counts from zero)."""
        return {key: sum(life["stats"].get(key) or 0 for life in self.lives) for key in COUNTERS}

    def log_summary(self, limit: int = 8) -> list[tuple[int, str]]:
        """The most frequent warning and error lines of Flowerbed's log, numbers masked."""
        counts = collections.Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = re.search(r"[\[ ](WARNING|ERROR|CRITICAL)[\] ] ?(.*)", line)
            if match:
                counts[re.sub(r"\d+(\.\d+)?", "N", match.group(0).strip())[:150]] += 1
            elif re.match(r"\w*(Error|Exception)\b", line):  # a traceback's last line
                counts[re.sub(r"\d+(\.\d+)?", "N", line.strip())[:150]] += 1
        return [(count, text) for text, count in counts.most_common(limit)]


class Producer(threading.Thread):
    """Sends WORKLOAD at `rate` tasks/s; `ledger` holds (sent at, uuid, expected final state)."""

    def __init__(self, worker: CeleryWorker, rate: float, max_seconds: float, seed: int):
        super().__init__(name="soak-producer", daemon=True)
        self.worker, self.rate, self.max_seconds = worker, rate, max_seconds
        self.random = random.Random(seed)
        self.ledger: list[tuple[float, str, str]] = []
        self.send_failures = collections.Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        weights = [weight for weight, *_ in WORKLOAD]
        interval, started = 1 / self.rate, time.monotonic()
        next_at = started
        for _ in range(int(self.rate * self.max_seconds) + 1):
            if self.stopping.wait(max(0.0, next_at - time.monotonic())) or time.monotonic() - started > self.max_seconds:
                return
            # After a send blocked (broker down), go on at the rate instead of catching up in a burst.
            next_at = max(next_at + interval, time.monotonic() - 1)
            _weight, name, args, expected = self.random.choices(WORKLOAD, weights)[0]
            sent_at = time.time()
            try:
                self.ledger.append((sent_at, self.worker.send(name, *args), expected))
            except Exception as exc:  # the broker is down: kombu gave up after its retries
                self.send_failures[type(exc).__name__] += 1


class Witness(threading.Thread):
    """An independent subscriber to the event bus: events seen per type and when each task's final
    event was published, so that a task Flowerbed lost can be placed in time."""

    def __init__(self, port: int, pattern: str, max_seconds: float):
        super().__init__(name="soak-witness", daemon=True)
        self.port, self.pattern, self.max_seconds = port, pattern, max_seconds
        self.events = collections.Counter()
        self.final: dict[str, tuple[str, float]] = {}
        self.undecodable = self.reconnects = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            pubsub = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5).pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(self.pattern)
                while not self.stopping.is_set() and time.monotonic() < deadline:
                    message = pubsub.get_message(timeout=0.5)
                    if message:
                        self.record(message["data"], time.time())
            except redis.RedisError:  # the broker restarts: subscribe again
                self.reconnects += 1
                self.stopping.wait(0.2)
            finally:
                pubsub.close()

    def record(self, payload: bytes, at: float) -> None:
        try:
            envelope = json.loads(payload)
            body = json.loads(base64.b64decode(envelope["body"]))
            events = body if isinstance(body, list) else [body]
            for event in events:
                self.events[event["type"]] += 1
                if event["type"] in FINAL_EVENTS and isinstance(event.get("uuid"), str):
                    self.final[event["uuid"]] = (FINAL_EVENTS[event["type"]], at)
        except Exception:  # the poison burst, on purpose
            self.undecodable += 1


class Sampler(threading.Thread):
    """Every `interval` seconds: `supervise()`, then Flowerbed's RSS, its collector counters and the store's size."""

    def __init__(self, flowerbed: Flowerbed, supervise, store_dir: Path, origin: float, interval: float,
                 max_seconds: float):
        super().__init__(name="soak-sampler", daemon=True)
        self.flowerbed, self.supervise, self.store_dir, self.origin = flowerbed, supervise, store_dir, origin
        self.interval, self.max_seconds = interval, max_seconds
        self.samples: list[dict] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        for _ in range(int(self.max_seconds / self.interval) + 1):
            if self.stopping.wait(self.interval):
                return
            self.supervise()
            self.sample()

    def sample(self) -> None:
        flowerbed, now = self.flowerbed, time.time()
        with flowerbed.lifecycle:
            rss = flowerbed.rss_mb()
        stats = flowerbed.collector() or {}
        store_mb = sum(path.stat().st_size for path in self.store_dir.glob("*.db*")) / MIB
        self.samples.append({"at": now, "rss": rss, "stats": stats, "store_mb": store_mb, "life": len(flowerbed.lives)})
        extra = " ".join(f"{key}={stats[key]}" for key in sorted(set(stats) - KNOWN_STATS))
        print(f"t={now - self.origin:6.0f}s  RSS {rss['total']:6.1f} MB (worker {rss.get('worker', 0):.1f}, "
              f"receiving {rss.get('receiving', 0):.1f})  received {stats.get('received')} stored {stats.get('stored')} "
              f"dropped {stats.get('dropped')} malformed {stats.get('malformed')} backlog {stats.get('backlog')} "
              f"lag {stats.get('lag_seconds')} connected {stats.get('connected')} store {store_mb:.1f} MB "
              f"last_error {str(stats.get('last_error'))[:80]} {extra}", flush=True)


# -- the faults ----------------------------------------------------------------------------------
@dataclass
class Fault:
    kind: str
    started: float = 0.0
    ended: float = 0.0
    notes: list[str] = field(default_factory=list)
    skipped: str = ""
    first_unready: tuple[float, str] | None = None  # when readiness first said no, during or after the fault
    ready_at: float | None = None  # start of the healthy stretch that lasted to the end of the measure
    stored_at: float | None = None
    connected_at: float | None = None
    window: tuple[float, float] | None = None  # events published inside went to no Flowerbed subscriber


class Soak:
    def __init__(self, args, workdir: Path, store_dir: Path, on_tmpfs: bool):
        self.args, self.workdir, self.store_dir, self.on_tmpfs = args, workdir, store_dir, on_tmpfs
        self.db = store_dir / "soak.db"
        self.origin = time.time()
        self.faults: list[Fault] = []
        self.poison_sent = collections.Counter()
        self.interrupted = False
        self.redis = self.worker = self.flowerbed = None
        self.witness = self.producer = self.sampler = None
        # What ended by itself and was started again, as a service manager would: (when, what).
        self.incidents: list[tuple[float, str]] = []
        self.flowerbed_exits = 0
        self.worker_windows: list[tuple[float, float]] = []  # from last seen alive to its replacement ready
        self.worker_seen_alive = time.time()
        self.supervising = threading.Lock()

    def setup(self) -> None:
        """Start everything; what started is stopped by stop() even when a later step fails."""
        args = self.args
        run_seconds = args.minutes * 60
        horizon = run_seconds + args.recover_timeout + args.drain_seconds + 120  # every thread ends by then
        self.redis = RedisServer(self.workdir)
        self.channel, self.envelope, _body = record_templates(self.redis.url)["task-succeeded"]
        self.witness = Witness(self.redis.port, self.channel.rsplit("/", 1)[0] + "/*", horizon)
        self.witness.start()
        self.worker = self.start_worker()
        # Flowerbed must keep every task of the run: a trimmed task would count as lost.
        max_tasks = max(100_000, int(args.rate * (run_seconds + args.recover_timeout) * 1.5))
        self.flowerbed = Flowerbed(self.redis.url, self.db, self.workdir / "flowerbed.log", max_tasks,
                                   args.flowerbed_dir)
        self.flowerbed.start()
        if not self.flowerbed.wait_connected(60):
            raise RuntimeError(f"Flowerbed did not start:\n{self.flowerbed.log_path.read_text()[-3000:]}")
        time.sleep(1)  # its receiving process subscribes just after it says connected
        self.producer = Producer(self.worker, args.rate, run_seconds + args.recover_timeout + 60, args.seed)
        self.sampler = Sampler(self.flowerbed, self.supervise, self.store_dir, self.origin, args.sample_seconds,
                               horizon)

    def start_worker(self) -> CeleryWorker:
        return CeleryWorker(self.redis.url, "soak@localhost", self.workdir, concurrency=self.args.worker_concurrency)

    def supervise(self) -> None:
        """Start again what ended by itself, as a service manager would, and note it.

        A new celery worker listens on a queue of its own (CeleryWorker's): what waited in the old
        one is lost with it, in the window from when the old one was last seen alive."""
        with self.supervising:
            now = time.time()
            with self.flowerbed.lifecycle:
                if not self.flowerbed.running():
                    self.flowerbed_exits += 1
                    self.incidents.append((now, f"Flowerbed exited by itself ({self.flowerbed.process.proc.returncode})"))
                    print(f"t={now - self.origin:6.0f}s  {self.incidents[-1][1]}; starting it again", flush=True)
                    self.flowerbed.start()
            if self.worker.process.running():
                self.worker_seen_alive = now
                return
            returncode = self.worker.process.proc.returncode
            self.worker.stop()
            self.worker = self.producer.worker = self.start_worker()
            self.worker_windows.append((self.worker_seen_alive, time.time()))
            self.incidents.append((now, f"celery worker exited ({returncode}): {worker_error(self.workdir)}"))
            print(f"t={now - self.origin:6.0f}s  {self.incidents[-1][1]}; started again", flush=True)

    def t(self, moment: float | None) -> str:
        return "-" if not moment else f"{moment - self.origin:.1f}"  # 0.0: a skipped fault never started

    # -- schedule ----------------------------------------------------------------------------
    def run(self) -> None:
        args = self.args
        self.producer.start()
        self.sampler.start()
        run_end = time.monotonic() + args.minutes * 60
        next_fault = time.monotonic() + args.warmup_seconds
        kinds = itertools.cycle(args.faults)
        for _ in range(int(args.minutes * 60 / args.fault_every) + 1):
            time.sleep(max(0.0, min(next_fault, run_end) - time.monotonic()))
            kind = next(kinds)
            if time.monotonic() + self.hold_seconds(kind) > run_end:
                break  # it would not end before the traffic stops
            fault = Fault(kind)
            self.faults.append(fault)
            print(f"t={time.time() - self.origin:6.0f}s  fault: {kind}", flush=True)
            getattr(self, f"fault_{kind}")(fault)
            if not fault.skipped:
                self.measure_recovery(fault)
            print(f"t={time.time() - self.origin:6.0f}s  {self.describe(fault)}", flush=True)
            next_fault = max(next_fault + args.fault_every, time.monotonic() + 2)
        time.sleep(max(0.0, run_end - time.monotonic()))

    def hold_seconds(self, kind: str) -> float:
        return {"broker": self.args.broker_down_seconds, "kill": self.args.kill_down_seconds + 5,
                "lock": self.args.lock_seconds, "disk": self.args.disk_seconds, "poison": 6}[kind]

    def watch(self, fault: Fault, seconds: float) -> None:
        """Hold a fault for `seconds`, noting when Flowerbed's readiness first says no."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.note_readiness(fault)
            time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))

    def note_readiness(self, fault: Fault) -> bool | None:
        stats = self.flowerbed.collector()
        healthy, why = self.flowerbed.readiness(stats)
        if not healthy and fault.first_unready is None:
            fault.first_unready = (time.time(), why)
        if stats and stats.get("connected") and fault.connected_at is None and fault.ended:
            fault.connected_at = time.time()
        return healthy

    def fault_broker(self, fault: Fault) -> None:
        fault.started = time.time()
        self.redis.stop()
        self.watch(fault, self.args.broker_down_seconds)
        self.redis.start()
        fault.ended = time.time()

    def fault_kill(self, fault: Fault) -> None:
        with self.flowerbed.lifecycle:
            self.flowerbed.collector()  # this life's counters, as late as possible
            fault.started = time.time()
            survivors = self.flowerbed.kill()
            if survivors:
                fault.notes.append(f"processes alive 1 s after SIGKILL: {survivors}")
            time.sleep(self.args.kill_down_seconds)
            self.flowerbed.start()
        fault.ended = time.time()

    def fault_lock(self, fault: Fault) -> None:
        holder = sqlite3.connect(self.db, timeout=60, isolation_level=None)
        try:
            try:
                holder.execute("BEGIN EXCLUSIVE")
            except sqlite3.OperationalError as exc:  # Flowerbed held its write lock for a whole minute
                fault.skipped = f"the lock was not granted within 60 s: {exc}"
                return
            fault.started = time.time()
            self.watch(fault, self.args.lock_seconds)
            holder.execute("COMMIT")
        finally:
            holder.close()
        fault.ended = time.time()

    def fault_disk(self, fault: Fault) -> None:
        if not self.on_tmpfs:
            fault.skipped = "no tmpfs (mount refused): disk full skipped"
            return
        filler = self.store_dir / "soak-filler"
        fault.started = time.time()
        try:
            fault.notes.append(f"filler {fill(filler, self.args.tmpfs_mb * MIB) / MIB:.1f} MB")
            self.watch(fault, self.args.disk_seconds)
        finally:
            filler.unlink(missing_ok=True)
        fault.ended = time.time()

    def fault_poison(self, fault: Fault) -> None:
        sent_before = sum(self.poison_sent.values())
        fault.started = time.time()
        failures = self.send_poison(self.args.poison_repeat)
        fault.ended = time.time()
        fault.notes.append(f"sent {sum(self.poison_sent.values()) - sent_before} poison messages"
                           + (f"; not sent: {failures}" if failures else ""))

    def send_poison(self, repeat: int) -> list[str]:
        """The poison burst, kind after kind. Returns what could not be sent, and why."""
        from celery import Celery

        failures = []
        app = Celery("soak-poison", broker=self.redis.url, set_as_current=False)
        client = redis.Redis(host="127.0.0.1", port=self.redis.port)
        with app.events.default_dispatcher(hostname="soak-poison@localhost") as dispatcher:
            for label, repeated, messages in poison_burst():
                for _ in range(repeat if repeated else 1):
                    for kind, payload in messages:
                        try:
                            if kind is None:
                                client.publish(self.channel, self.enveloped(payload))
                            else:
                                dispatcher.send(kind, **payload)
                            self.poison_sent[label] += 1
                        except Exception as exc:  # celery or kombu refused it: part of what we learn
                            failures.append(f"{label}: {type(exc).__name__}")
                time.sleep(POISON_PAUSE)
        client.close()
        app.close()
        return sorted(set(failures))

    def enveloped(self, body: bytes) -> str:
        """`body` in the envelope kombu put around the recorded event, as kombu publishes on Redis."""
        properties = {**self.envelope["properties"], "delivery_tag": str(uuid_module.uuid4())}
        return json.dumps({**self.envelope, "body": base64.b64encode(body).decode(), "properties": properties})

    def measure_recovery(self, fault: Fault) -> None:
        """Until readiness says yes (and stays so) and a task sent after the fault is stored final."""
        deadline = time.monotonic() + self.args.recover_timeout
        settle_until = time.monotonic() + 5  # let a fault that acts late (poison) show first
        while time.monotonic() < deadline:
            self.supervise()
            healthy = self.note_readiness(fault)
            if not healthy:
                fault.ready_at = None
            elif fault.ready_at is None:
                fault.ready_at = time.time()
            if fault.stored_at is None and self.flowerbed.stored_since(fault.ended):
                fault.stored_at = time.time()
            if fault.ready_at and fault.stored_at and time.monotonic() >= settle_until:
                break
            time.sleep(0.5)
        margin = self.args.window_margin
        if fault.kind in ("broker", "kill"):  # Redis pub/sub keeps nothing for a subscriber that is away
            back = fault.connected_at or time.time()
            fault.window = (fault.started - margin, back + margin)

    def describe(self, fault: Fault) -> str:
        if fault.skipped:
            return f"{fault.kind}: skipped ({fault.skipped})"
        return (f"{fault.kind}: {self.t(fault.started)}-{self.t(fault.ended)} s, ready after "
                f"{seconds_after(fault.ready_at, fault.ended)}, task stored after {seconds_after(fault.stored_at, fault.ended)}"
                f"{'; ' + '; '.join(fault.notes) if fault.notes else ''}")

    # -- the end -----------------------------------------------------------------------------
    def drain(self, at_most: float) -> float:
        """After the traffic stops: until no task has finished on the bus for 5 s and Flowerbed's inbox is
        empty (heartbeats go on), at most `at_most` seconds."""
        started = time.monotonic()
        last, quiet_since = None, time.monotonic()
        while time.monotonic() - started < at_most:
            stats = self.flowerbed.collector() or {}
            finished = len(self.witness.final)
            if finished != last:
                last, quiet_since = finished, time.monotonic()
            elif time.monotonic() - quiet_since >= 5 and stats.get("backlog") == 0:
                break
            time.sleep(0.5)
        return time.monotonic() - started

    def stored_states(self) -> dict[str, str]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as conn:
            return dict(conn.execute("SELECT uuid, state FROM tasks"))

    def classify(self, stored: dict[str, str]) -> dict:
        """Every task sent: stored right, stored in another final state, or lost (in which window)."""
        windows = [(f"{fault.kind} at {self.t(fault.started)} s", fault.window) for fault in self.faults if fault.window]
        windows += [(f"celery worker restart at {self.t(start)} s", (start, end)) for start, end in self.worker_windows]
        result = {"right": 0, "wrong": 0, "documented": collections.Counter(), "otherwise": []}
        for sent_at, uuid, expected in self.producer.ledger:
            state = stored.get(uuid)
            if state == expected:
                result["right"] += 1
                continue
            seen = self.witness.final.get(uuid)
            span = (sent_at, seen[1]) if seen else (sent_at, sent_at + TASK_SPAN_SECONDS)
            inside = next((label for label, (start, end) in windows if span[0] <= end and span[1] >= start), None)
            if inside is not None:
                result["documented"][inside] += 1
            elif state in FINAL_STATES:
                result["wrong"] += 1
            else:
                result["otherwise"].append((sent_at, uuid, expected, state, seen))
        return result

    def report(self, drained: float) -> None:
        args, flowerbed = self.args, self.flowerbed
        final_stats = flowerbed.collector()
        stored = self.stored_states()
        outcome = self.classify(stored)
        sent = len(self.producer.ledger)
        lost_documented = sum(outcome["documented"].values())
        print(f"\nSoak: {args.minutes:g} min at {args.rate:g} tasks/s, faults every {args.fault_every:g} s "
              f"({', '.join(args.faults)}; lock {args.lock_seconds:g} s, disk full {args.disk_seconds:g} s), store on {'tmpfs ' + str(args.tmpfs_mb) + ' MB' if self.on_tmpfs else 'disk (no tmpfs)'}"
              f"{', INTERRUPTED' if self.interrupted else ''}; drained {drained:.0f} s")
        rows = [(fault.kind, self.t(fault.started), self.t(fault.ended),
                 seconds_after(fault.first_unready[0], fault.started) if fault.first_unready else "never",
                 seconds_after(fault.ready_at, fault.ended), seconds_after(fault.stored_at, fault.ended),
                 fault.skipped or "; ".join(fault.notes)) for fault in self.faults]
        if rows:
            print_table("Faults (t in s from the run's start; 'unready' counted from the fault's start, recovery from its end)",
                        ("fault", "start", "end", "unready after", "ready after", "task stored after", "notes"), rows)
            for fault in self.faults:
                if fault.first_unready:
                    print(f"  {fault.kind} at {self.t(fault.started)}: readiness first said: {fault.first_unready[1]}")
        print(f"\nTasks: sent {sent:,} (sends refused while the broker was down: {sum(self.producer.send_failures.values())}),"
              f" stored in the right final state {outcome['right']:,}, in another final state {outcome['wrong']:,}")
        print(f"  lost in a documented window {lost_documented:,}: "
              + (", ".join(f"{k}: {v}" for k, v in outcome["documented"].items()) or "none"))
        otherwise = outcome["otherwise"]
        print(f"  lost otherwise {len(otherwise):,}"
              + (f" (stored states: {dict(collections.Counter(s for *_, s, _seen in otherwise))}; "
                 f"final event seen on the bus: {sum(1 for *_, seen in otherwise if seen)}; "
                 f"sent from t={self.t(otherwise[0][0])} to t={self.t(otherwise[-1][0])} s)" if otherwise else ""))
        totals = flowerbed.totals()
        on_bus = sum(self.witness.events.values())
        print(f"\nEvents: on the bus {on_bus:,} (seen by the witness; poison included: {sum(self.poison_sent.values())} sent), "
              f"received by Flowerbed {totals['received']:,}, stored {totals['stored']:,}, dropped {totals['dropped']:,}, "
              f"malformed {totals['malformed']:,}, disconnects {totals['disconnects']:,}, "
              f"not received {on_bus - totals['received']:,} (over {len(flowerbed.lives)} lives)")
        print(f"  last /api/collector: {final_stats}")
        if flowerbed.extra_fields:
            print(f"  /api/collector fields beyond {sorted(KNOWN_STATS)}: {sorted(flowerbed.extra_fields)}")
        print("  last_error values seen: " + ("; ".join(f"t={self.t(at)} {error[:120]}" for error, at in
                                                    flowerbed.errors_seen.items()) or "none"))
        for at, what in self.incidents:
            print(f"  t={self.t(at)} s: {what}")
        for at in flowerbed.counter_restarts:
            print(f"  t={self.t(at)} s: Flowerbed's collector counters went back to zero (its process was replaced)")
        self.print_rss()
        summary = flowerbed.log_summary()
        if summary:
            print_table("Flowerbed's log: most frequent warnings and errors", ("count", "line"), summary)
        self.print_verdict(outcome, stored)

    def print_rss(self) -> None:
        by_minute: dict[int, dict] = {}
        for sample in self.sampler.samples:
            minute = int((sample["at"] - self.origin) // 60)
            if minute not in by_minute or sample["rss"]["total"] > by_minute[minute]["rss"]["total"]:
                by_minute[minute] = sample
        rows = [(minute, s["rss"]["total"], s["rss"].get("worker"), s["rss"].get("receiving"), s["stats"].get("backlog"),
                 s["store_mb"], s["life"]) for minute, s in sorted(by_minute.items())]
        if rows:
            print_table("RSS over time (the largest sample of each minute)",
                        ("minute", "RSS MB", "worker MB", "receiving MB", "backlog", "store MB", "life"), rows)

    def print_verdict(self, outcome: dict, stored: dict) -> None:
        problems = []
        if outcome["otherwise"]:
            problems.append(f"{len(outcome['otherwise'])} tasks lost outside a documented window")
        if outcome["wrong"]:
            problems.append(f"{outcome['wrong']} tasks in a wrong final state")
        slow = [f"{f.kind}@{self.t(f.started)}" for f in self.faults
                if not f.skipped and (f.ready_at is None or f.stored_at is None)]
        if slow:
            problems.append(f"not recovered within {self.args.recover_timeout:g} s: {', '.join(slow)}")
        if self.flowerbed_exits:
            problems.append(f"Flowerbed exited by itself {self.flowerbed_exits} times")
        if self.flowerbed.counter_restarts:
            problems.append(f"Flowerbed's collector restarted by itself {len(self.flowerbed.counter_restarts)} times")
        print(f"\nVERDICT: {'FAIL: ' + '; '.join(problems) if problems else 'PASS'} "
              f"({len(self.faults)} faults, {len(self.producer.ledger):,} tasks, {len(stored):,} rows stored)")

    def stop(self) -> None:
        """Stop whatever was started, in reverse order; each step bounded (Process.stop waits at most 20 s)."""
        for thread in (self.producer, self.sampler, self.witness):
            if thread is not None:
                thread.stopping.set()
                if thread.is_alive():
                    thread.join(10)
        for process in (self.flowerbed, self.worker, self.redis):
            if process is not None:
                process.stop()


def worker_error(workdir: Path) -> str:
    """The celery worker's last 'Unrecoverable error' line, if its log has one."""
    lines = [line for path in workdir.glob("worker-*.log")
             for line in path.read_text(errors="replace").splitlines() if "Unrecoverable error" in line]
    return lines[-1].split("] ", 1)[-1][:160] if lines else "no 'Unrecoverable error' in its log"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def seconds_after(moment: float | None, origin: float) -> str:
    return "not yet" if moment is None else f"{moment - origin:.1f}"


def fill(path: Path, at_most: int) -> int:
    """Fill the filesystem holding `path`: what it says is free at once, then 4 KiB blocks until
    ENOSPC (the store may grow meanwhile). Returns the filler's size."""
    with open(path, "wb", buffering=0) as filler:
        stats = os.statvfs(path)
        try:
            os.posix_fallocate(filler.fileno(), 0, max(1, stats.f_bavail * stats.f_frsize - MIB))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        filler.seek(0, os.SEEK_END)
        block = bytes(4096)
        for _ in range(at_most // len(block) + 1):
            try:
                filler.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        return filler.tell()


def poison_burst() -> list[tuple[str, bool, list[tuple[str | None, dict | bytes]]]]:
    """The poison burst by kind: (label, repeated, messages). A message is (event type, fields) for
    celery's EventDispatcher, which adds hostname, clock, pid and timestamp, or (None, raw body) for
    what json.dumps would not write, sent in kombu's envelope."""
    def poison_uuid():
        return f"poison-{uuid_module.uuid4()}"
    deep: list = []
    for _ in range(899):  # 900 levels of lists
        deep = [deep]
    stamp = f'"hostname": "soak-poison@localhost", "timestamp": {time.time():.3f}, "clock": 1'.encode()
    return [
        ("uuid null", True, [("task-received", {"uuid": None, "name": "soak.poison", "args": "()"}),
                             ("task-succeeded", {"uuid": None, "result": "1", "runtime": 0.1})]),
        ("wrong types", True, [
            ("task-started", {"uuid": poison_uuid(), "retries": "three", "runtime": [1]}),
            ("task-succeeded", {"uuid": 12345, "result": {"a": 1}, "runtime": "fast"}),
            ("task-received", {"uuid": poison_uuid(), "name": 7, "args": {"a": 1}, "kwargs": [1, 2], "eta": 5}),
            ("task-failed", {"uuid": poison_uuid(), "timestamp": "yesterday", "exception": None}),
            ("worker-heartbeat", {"freq": "often", "active": "x", "processed": None, "loadavg": "high"})]),
        # Once per burst: each copy would land on the small tmpfs.
        ("2 MB field", False, [("task-succeeded", {"uuid": poison_uuid(), "result": "x" * (2 * MIB)})]),
        ("900-deep args", True, [("task-received", {"uuid": poison_uuid(), "name": "soak.poison", "args": deep})]),
        ("lone surrogate", True, [("task-received", {"uuid": poison_uuid(), "name": "soak.\ud800",
                                                     "kwargs": {"k": "\udcff"}})]),
        ("unknown type", True, [("task-exploded", {"uuid": poison_uuid()}), ("bogus", {})]),
        ("raw invalid UTF-8", True, [(None, b'{"type": "task-received", "uuid": "poison-\xff\xfe", ' + stamp + b"}")]),
        ("raw lone surrogate bytes", True, [
            (None, b'{"type": "task-received", "uuid": "poison-\xed\xa0\x80", "name": "soak.poison", ' + stamp + b"}")]),
        ("raw truncated JSON", True, [(None, b'{"type": "task-succeeded", "uuid": ')]),
        ("raw JSON scalar", True, [(None, b"42")]),
        ("raw list of non-events", True, [(None, b'[1, "two", null, {"type": 3}]')]),
        ("raw huge numbers", True, [
            (None, b'{"type": "task-succeeded", "uuid": "poison-huge", "hostname": "soak-poison@localhost", '
                   b'"timestamp": 1e999, "clock": 1000000000000000000000000000000, "runtime": NaN}')]),
        ("raw hostname not a string", True, [
            (None, b'{"type": "worker-heartbeat", "hostname": 7, "timestamp": 1.0, "clock": 1, "freq": 2}')]),
        ("raw no fields", True, [(None, b'{"type": "task-succeeded"}')]),
    ]


# -- setup and teardown --------------------------------------------------------------------------
def mount_tmpfs(directory: Path, size_mb: int) -> bool:
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(directory)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        print(f"mount of a tmpfs refused ({result.stderr.strip() or result.returncode}): the store goes on disk "
              "and the disk-full fault is skipped", flush=True)
    return result.returncode == 0


def unmount(directory: Path) -> None:
    for _ in range(5):  # a process that just ended may hold it a moment
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode == 0:
            return
        time.sleep(1)
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def interrupt(_signum, _frame):
    """SIGTERM ends the run like Ctrl-C: main's finally stops everything and unmounts."""
    raise KeyboardInterrupt


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="how long the traffic runs (default 30)")
    parser.add_argument("--rate", type=float, default=50, help="tasks sent per second (default 50)")
    parser.add_argument("--faults", type=lambda text: [f.strip() for f in text.split(",") if f.strip()],
                        default=list(FAULTS), help=f"the cycle, comma-separated (default {','.join(FAULTS)})")
    # Defaults marked "long/short" differ for runs under 15 minutes, so that a short try meets every fault.
    parser.add_argument("--fault-every", type=float, help="seconds between fault starts (long/short: 150/30)")
    parser.add_argument("--warmup-seconds", type=float, default=20)
    parser.add_argument("--broker-down-seconds", type=float, default=5)
    parser.add_argument("--kill-down-seconds", type=float, default=3, help="after the kill, before starting again")
    parser.add_argument("--lock-seconds", type=float, help="long/short: 45/35, past the store's 10 s busy timeout")
    parser.add_argument("--disk-seconds", type=float, help="long/short: 30/15")
    parser.add_argument("--poison-repeat", type=int, default=3, help="rounds of the poison burst")
    parser.add_argument("--recover-timeout", type=float, help="long/short: 120/45")
    parser.add_argument("--window-margin", type=float, default=1.0,
                        help="seconds around a kill or broker window still counted in it (the last batch)")
    parser.add_argument("--sample-seconds", type=float, default=10)
    parser.add_argument("--drain-seconds", type=float, default=60, help="at most, after the traffic stops")
    parser.add_argument("--tmpfs-mb", type=int, help="size of the store's tmpfs (default 256, more for long runs)")
    parser.add_argument("--worker-concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--flowerbed-dir", type=Path, default=ROOT,
                        help="the Flowerbed tree to run cli.py from (default this checkout), e.g. a `git archive` of a commit")
    parser.add_argument("--logs", type=Path, help="copy the logs (Flowerbed, worker, Redis) into this directory at the end")
    args = parser.parse_args(argv)
    unknown = set(args.faults) - set(FAULTS)
    if unknown or not args.faults:
        parser.error(f"--faults takes some of {', '.join(FAULTS)}")
    short = args.minutes < 15
    for name, long_default, short_default in (("fault_every", 150, 30), ("lock_seconds", 45, 35),
                                              ("disk_seconds", 30, 15), ("recover_timeout", 120, 45)):
        if getattr(args, name) is None:
            setattr(args, name, short_default if short else long_default)
    if args.tmpfs_mb is None:  # the store takes ~1.1 KB per task here: room for three times that
        args.tmpfs_mb = max(256, int(args.rate * args.minutes * 60 * 3300 / MIB))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="flowerbed-soak-"))
    store_dir = workdir / "store"
    store_dir.mkdir()
    on_tmpfs = mount_tmpfs(store_dir, args.tmpfs_mb)
    soak = Soak(args, workdir, store_dir, on_tmpfs)
    try:
        soak.setup()
        try:
            soak.run()
        except KeyboardInterrupt:
            soak.interrupted = True
            print("interrupted: reporting what was measured", flush=True)
        soak.producer.stopping.set()
        # Interrupted: a short drain, so that the tasks still running are not counted lost.
        drained = soak.drain(10 if soak.interrupted else args.drain_seconds)
        soak.report(drained)
    finally:
        soak.stop()
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*.log"):
                shutil.copy(log, args.logs)
        if on_tmpfs:
            unmount(store_dir)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
