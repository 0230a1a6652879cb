"""Four questions a newcomer asks, answered in a real browser: how many seconds from the Dashboard to
the answer on screen, and by which clicks.

    python bench/questions.py            # prints each question's steps, the answer read and the seconds

  1. which task got slower than yesterday?   2. what fails most, and since when?
  3. which worker is overloaded?             4. is anything stuck?

The cluster (bench/questions_cluster.py): the demo's three workers and traffic (monitor/demo.py) plus
`demo-batch@flowerbed`, a pool of two kept full by a task that sends its successor as it starts, each
a process of its own (celery's workers) on a private redis-server;
Flowerbed (`cli.py --broker ...`) watches it. Its store is first given two days of history
(seed_history): the demo's task names at their demo run times and failures, except images.resize,
three times faster before the last hour, and reports.build, failing with a TimeoutError since 30 hours ago; one
email.send running for 10 minutes (stuck) and one reports.build received 5 minutes ago and not
started (waiting). Debian's chromium then starts each question on the Dashboard and clicks what a
newcomer would pick by its words (ask_all: the steps are the code, tests/test_questions.py runs the
same and checks the answers against the store).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from monitor.store import open_store  # noqa: E402
from monitor.store.schema import TASK_FIELDS  # noqa: E402
from stream import PrivateRedis, free_port, stop_processes  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HISTORY_SECONDS = 2 * 86400
TRAFFIC_RATE = 1.0  # tasks/s the live traffic sends
EVERY_SECONDS = 6  # one seeded task of each name per this many seconds: 1 task/s, as the live traffic (TRAFFIC_RATE)
# (name, median run time in s, as monitor/demo.py's tasks sleep); images.resize ran at a third before the last hour.
NAMES = (("shop.checkout", 0.25), ("email.send", 0.06), ("reports.build", 1.2), ("images.resize", 0.15),
         ("payments.charge", 0.18), ("inventory.sync", 0.1))
SLOWED_NAME, SLOWED_SINCE, SLOWED_FACTOR = "images.resize", 3600, 3.0
FAILING_NAME, FAILING_SINCE, FAILING_SHARE = "reports.build", 30 * 3600, 0.5
FAILURE = "TimeoutError('upstream timed out after {n} ms')"
DECLINED, DECLINED_SHARE = "ValueError('card declined for customer {n}')", 0.08  # payments.charge, as in the demo
WORKERS = ("demo-alpha@flowerbed", "demo-beta@flowerbed", "demo-gamma@flowerbed")
BATCH_WORKER, BATCH_CONCURRENCY = "demo-batch@flowerbed", 2
STUCK = ("email.send", 600)  # (name, running for s): far past its limit (max(3 × p99, 60 s))
# The stuck task's worker: none of the cluster's, which start after the seed (a task started before its
# worker's start is lost in the restart, not stuck).
STUCK_WORKER = "demo-delta@flowerbed"
WAITING = ("reports.build", 300)  # (name, received s ago, not started)
WAITING_UUID = "seed-waiting"

def _row(**fields) -> tuple:
    return tuple(fields.get(field) for field in TASK_FIELDS)


def history_rows(now: float, rng: random.Random) -> list[tuple]:
    """Finished tasks of the demo's names over HISTORY_SECONDS up to a minute ago, and the stuck and
    waiting ones."""
    rows = []
    for at in range(int(now - HISTORY_SECONDS), int(now - 60), EVERY_SECONDS):
        for name, median in NAMES:
            if name == SLOWED_NAME and at < now - SLOWED_SINCE:
                median /= SLOWED_FACTOR
            runtime = min(rng.lognormvariate(0, 0.4) * median, median * 12)
            started = at + rng.uniform(0, EVERY_SECONDS) + rng.expovariate(1 / 0.02)
            finished = started + runtime
            failing = ((FAILURE, FAILING_SHARE) if name == FAILING_NAME and at >= now - FAILING_SINCE else
                       (DECLINED, DECLINED_SHARE) if name == "payments.charge" else (None, 0))
            failed = rng.random() < failing[1]
            exception = failing[0].format(n=rng.randint(1000, 30000)) if failed else None
            rows.append(_row(uuid=f"seed-{name}-{at}", name=name, state="FAILURE" if failed else "SUCCESS",
                             worker=rng.choice(WORKERS), args="()", kwargs="{}", routing_key="celery",
                             sent=started - 0.03, received=started - 0.02, started=started, runtime=runtime,
                             timestamp=finished, exception=exception, traceback=exception,
                             **({"failed": finished} if failed else {"succeeded": finished, "result": "None"})))
    (stuck_name, running), (waiting_name, waited) = STUCK, WAITING
    rows.append(_row(uuid="seed-stuck", name=stuck_name, state="STARTED", worker=STUCK_WORKER, args="()", kwargs="{}",
                     routing_key="celery", sent=now - running - 0.1, received=now - running - 0.05,
                     started=now - running, timestamp=now - running))
    rows.append(_row(uuid=WAITING_UUID, name=waiting_name, state="RECEIVED", worker=WORKERS[1], args="()",
                     kwargs="{}", routing_key="celery", sent=now - waited - 0.05, received=now - waited,
                     timestamp=now - waited))
    return rows


def seed_history(db: str, now: float | None = None) -> int:
    """Write the history into the store `db` (a SQLite path or PostgreSQL URL) as the collector would
    have; returns the number of tasks."""
    now = time.time() if now is None else now
    rng = random.Random(10)
    rows = history_rows(now, rng)
    samples = [(worker, float(at), rng.randint(0, 2), round(rng.uniform(0.3, 1.5), 2), 0.8, 0.7)
               for at in range(int(now - HISTORY_SECONDS), int(now - 60), 60) for worker in WORKERS]
    store = open_store(db)
    try:
        for i in range(0, len(rows), 5000):
            store.write_batch(tasks=rows[i:i + 5000])
        store.write_batch(samples=samples)
        store.fold_rollups()
    finally:
        store.close()
    return len(rows)


def start_cluster(broker: str, folder: Path) -> list[subprocess.Popen]:
    """The demo's three workers, the batch worker and the traffic, each a process (bench/questions_cluster.py),
    logging into `folder`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "bench"))),
           "FLOWERBED_QUESTIONS_BROKER": broker}
    worker = [sys.executable, "-m", "celery", "-A", "questions_cluster", "worker", "-P", "threads", "-E",
              "--without-mingle", "--without-gossip", "-l", "WARNING"]
    commands = {name: [*worker, "-n", name, "-c", "4"] for name in WORKERS}
    commands[BATCH_WORKER] = [*worker, "-n", BATCH_WORKER, "-c", str(BATCH_CONCURRENCY), "-Q", "batch"]
    commands["traffic"] = [sys.executable, str(ROOT / "bench" / "questions_cluster.py"), str(TRAFFIC_RATE),
                           str(BATCH_CONCURRENCY)]
    return [subprocess.Popen(command, env=env, cwd=folder, stdout=open(folder / f"{name}.log", "wb"),
                             stderr=subprocess.STDOUT) for name, command in commands.items()]


def stop(processes: list[subprocess.Popen]) -> None:
    """Stop the cluster and Flowerbed: a worker finishes its tasks first (a batch.crunch: 20 s)."""
    stop_processes(processes, timeout=30)


def cluster_ready(base: str) -> bool:
    """Every worker online with its pool size inspected, and the batch pool full."""
    import json
    try:
        with urllib.request.urlopen(f"{base}/api/workers", timeout=5) as response:
            workers = json.loads(response.read())
    except OSError:
        return False
    batch = workers.get(BATCH_WORKER) or {}
    return (all(name in workers for name in (*WORKERS, BATCH_WORKER))
            and len((batch.get("active") or [])) == BATCH_CONCURRENCY
            and all((workers[name].get("stats") or {}).get("pool") for name in (*WORKERS, BATCH_WORKER)))


# -- the questions, as a newcomer answers them ------------------------------------------------------
class Steps(list):
    """What was done, each step with the seconds since the question began: (seconds, text)."""

    def __init__(self):
        super().__init__()
        self.began = time.perf_counter()

    def append(self, text: str) -> None:
        super().append((time.perf_counter() - self.began, text))


@dataclasses.dataclass
class Answer:
    question: str
    steps: Steps
    found: dict
    seconds: float


def _cells(page, grid: str, row_index: int = 0) -> dict:
    """{column id: text} of a grid's displayed row (AG Grid splits a row across pinned containers)."""
    return page.evaluate("""([grid, index]) => {
        const cells = document.querySelectorAll(`${grid} .ag-row[row-index="${index}"] .ag-cell`);
        return Object.fromEntries([...cells].map(c => [c.getAttribute('col-id'), c.textContent.trim()]));
    }""", [grid, row_index])


def _first_row(page, grid: str, wanted: str) -> dict:
    """The grid's first row once its `wanted` column holds text."""
    page.wait_for_function("([grid, column]) => { const cell = document.querySelector("
                           "`${grid} .ag-row[row-index=\"0\"] .ag-cell[col-id=\"${column}\"]`);"
                           " return cell && cell.textContent.trim() !== ''; }", arg=[grid, wanted])
    return _cells(page, grid)


def _open_dashboard(page, base: str, steps: Steps) -> None:
    page.goto(f"{base}/")
    # The page's picture (assets/first_screen.js) shows first; the live page, read here by ids, takes its place.
    page.wait_for_function("() => !document.getElementById('first-screen')")
    steps.append("open the Dashboard")


def slower_than_yesterday(page, base: str, steps: Steps) -> dict:
    _open_dashboard(page, base, steps)
    chip = page.locator("#dashboard-slower")
    page.wait_for_function("() => /Slower than yesterday: \\S+ p\\d+ ×/.test("
                           "(document.querySelector('#dashboard-slower') || {}).textContent || '')")
    steps.append(f"read the chip: “{chip.inner_text()}”")
    chip.click()
    steps.append("click it: Analytics opens at “Compare two windows”, Same time yesterday")
    row = _first_row(page, "#analytics-compare", "runtime_p50_ratio")
    steps.append("read the first row (worst change first)")
    return {"name": row["name"], "p50 before": row["runtime_p50_before"], "p50 after": row["runtime_p50_after"],
            "p50 change": row["runtime_p50_ratio"], "p95 change": row["runtime_p95_ratio"]}


def fails_most(page, base: str, steps: Steps) -> dict:
    _open_dashboard(page, base, steps)
    page.get_by_role("link", name="Analytics", exact=True).click()
    steps.append("click “Analytics” in the top bar")
    panel = page.locator(".panel", has_text="Failures by exception type and message")
    panel.scroll_into_view_if_needed()
    steps.append("scroll to “Failures by exception type and message” (sorted by count)")
    row = _first_row(page, "#analytics-exceptions", "first")
    steps.append("read the first row's Exception, Task names, Count and First seen")
    return {"exception": row["type"], "message": row["message"], "names": row["names"], "count": row["count"],
            "first seen": row["first"]}


def overloaded_worker(page, base: str, steps: Steps) -> dict:
    _open_dashboard(page, base, steps)
    page.wait_for_function("() => [...document.querySelectorAll('#workers-grid .ag-cell[col-id=\"utilisation\"]')]"
                           ".filter(c => c.textContent.includes('%')).length >= 4")
    page.locator("#workers-grid .ag-header-cell[col-id='utilisation']").click()
    steps.append("click the “Utilisation” column header (busiest first)")
    page.wait_for_function("() => document.querySelector('#workers-grid .ag-header-cell[col-id=\"utilisation\"]')"
                           ".getAttribute('aria-sort') === 'descending'")
    row = _first_row(page, "#workers-grid", "utilisation")
    steps.append("read the first row")
    busy = page.locator("#workers-grid .ag-row[row-index='0'] .cell-busy").count() > 0
    return {"worker": row["hostname"], "utilisation": row["utilisation"], "active": row["active"],
            "concurrency": row["concurrency"], "marked busy": busy}


def anything_stuck(page, base: str, steps: Steps) -> dict:
    _open_dashboard(page, base, steps)
    stuck, waiting = page.locator("#dashboard-stuck"), page.locator("#dashboard-waiting")
    page.wait_for_function("() => document.querySelector('#dashboard-stuck strong')")
    found = {"stuck": int(stuck.locator("strong").inner_text().replace(",", "")),
             "waiting": int(waiting.locator("strong").inner_text().replace(",", ""))}
    steps.append(f"read the chips: “{stuck.inner_text()}”, “{waiting.inner_text()}”")
    stuck.click()
    steps.append("click the stuck chip: Tasks lists them")
    row = _first_row(page, "#tasks-grid", "name")
    found["stuck names"] = row["name"]
    steps.append("read the task name")
    return found


QUESTIONS = (("which task got slower than yesterday?", slower_than_yesterday),
             ("what fails most, and since when?", fails_most),
             ("which worker is overloaded?", overloaded_worker),
             ("is anything stuck?", anything_stuck))


def ask_all(browser, base: str) -> list[Answer]:
    """Each question in a fresh 1440 × 900 page, timed from the Dashboard's navigation to the answer read."""
    answers = []
    for question, ask in QUESTIONS:
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        steps = Steps()
        found = ask(page, base, steps)
        answers.append(Answer(question, steps, found, time.perf_counter() - steps.began))
        context.close()
    return answers


@contextlib.contextmanager
def running_scenario(prefix: str) -> Iterator[str]:
    """A private redis-server, a store seeded with the history, the cluster and Flowerbed watching it
    (`cli.py`, in a temporary folder named with `prefix` that keeps the logs): yields Flowerbed's base
    URL once every worker is online and inspected; stops them all at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder, PrivateRedis() as redis_server:
        folder = Path(folder)
        db = str(folder / "flowerbed.db")
        seed_history(db)
        port = free_port()
        processes = [*start_cluster(redis_server.url, folder),
                     subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "--broker", redis_server.url, "--port",
                                       str(port), "--db", db], cwd=folder, stdout=open(folder / "flowerbed.log", "wb"),
                                      stderr=subprocess.STDOUT)]
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while not cluster_ready(base):
                if time.monotonic() > deadline:
                    raise SystemExit(f"the cluster was not ready within 2 minutes; logs in {folder}")
                time.sleep(1)
            yield base
        finally:
            stop(processes)


def main() -> None:
    from playwright.sync_api import sync_playwright

    with running_scenario("flowerbed-questions-") as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        answers = ask_all(browser, base)
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        browser.close()
    print(f"A fresh 1440 × 900 chromium page per question, on {HISTORY_SECONDS // 86400} days of seeded history "
          f"and a live cluster; {load}\n")
    for number, answer in enumerate(answers, 1):
        print(f"{number}. {answer.question}  {answer.seconds:.1f} s")
        for seconds, step in answer.steps:
            print(f"     {seconds:5.1f} s  {step}")
        print("     answer: " + "; ".join(f"{key} {value}" for key, value in answer.found.items()) + "\n")


if __name__ == "__main__":
    main()
