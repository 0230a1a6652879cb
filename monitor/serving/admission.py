"""Admission control: which requests may run now, so that no user can take every thread.

The gunicorn worker (gunicorn_worker.py) asks before it hands a request to a thread, from the request's
head as it waits on the socket:

- health checks and static files are never held back (health checks have threads of their own);
- any other request (an API query, a Dash callback, a page) is heavy: at most PER_USER of them run at
  once for one user and TOTAL for everyone. TOTAL is below the worker's 8 threads, so that some stay
  free for static files; PER_USER is below TOTAL, so that one user cannot shut out another;
- a heavy request over a limit waits, in the worker's main loop and not in a thread, up to
  WAIT_SECONDS. A freed slot goes to the waiting request whose user has the fewest running (the
  oldest among those), so a user who floods waits behind nobody but himself. When it has waited that
  long, or when MAX_WAITING requests of its user wait already, it is refused with 429.

A user is the Authorization header when basic auth is on (someone without the password cannot use up a
user's share) and the client address otherwise. Not thread-safe: the worker's main loop is the caller.
"""
from __future__ import annotations

import bisect
import enum
import json

PER_USER = 4
TOTAL = 6
MAX_WAITING = 200
WAIT_SECONDS = 10.0
RETRY_AFTER_SECONDS = 2
# Where the worker finds this app's Admission (install puts it there).
CONFIG_KEY = "flowerbed_admission"

HEALTH, STATIC, HEAVY = "health", "static", "heavy"
HEALTH_PATH = b"healthcheck"
# Served from files or from memory, and fetched many at a time by every page load.
STATIC_PATHS = (b"_dash-component-suites/", b"assets/", b"_favicon")
_BODY_HEADERS = (b"content-length", b"transfer-encoding")

TOO_MANY_WAITING = f"{MAX_WAITING} requests of yours are waiting already; retry in {RETRY_AFTER_SECONDS} s"
WAITED_TOO_LONG = f"the server stayed busy for {WAIT_SECONDS:g} s; retry in {RETRY_AFTER_SECONDS} s"


class Decision(enum.Enum):
    RUN = "run"  # a slot was taken: run it now
    WAIT = "wait"  # queued: leave() or overdue() will hand it back
    REFUSE = "refuse"  # answer 429 with TOO_MANY_WAITING


class Admission:
    def __init__(self, prefix: str = "/", by_credentials: bool = False, per_user: int = PER_USER,
                 total: int = TOTAL, max_waiting: int = MAX_WAITING, wait_seconds: float = WAIT_SECONDS):
        self.health_path = prefix.encode() + HEALTH_PATH
        self.static_paths = tuple(prefix.encode() + path for path in STATIC_PATHS)
        self.by_credentials = by_credentials
        self.per_user, self.total, self.max_waiting, self.wait_seconds = per_user, total, max_waiting, wait_seconds
        self._running: dict[str, int] = {}  # user -> heavy requests running (users at 0 are removed)
        self._running_total = 0
        self._waiting: list[tuple[float, object, str]] = []  # (deadline, item, user), oldest first
        self._waiting_per_user: dict[str, int] = {}

    def classify(self, head: bytes, address: str) -> tuple[str, str]:
        """(kind, user) of a request from its head: the bytes before the blank line, b"" when they
        are not all in yet (then it is heavy, and the user its address)."""
        request_line, _, header_lines = head.partition(b"\r\n")
        method, _, rest = request_line.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        headers = {}
        for line in header_lines.split(b"\r\n"):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        authorization = headers.get(b"authorization")
        user = authorization.decode("latin-1") if self.by_credentials and authorization else address
        if path == self.health_path or path.startswith(self.health_path + b"/"):
            # A health check with a body would have its thread wait for that body.
            if method in (b"GET", b"HEAD") and not any(header in headers for header in _BODY_HEADERS):
                return HEALTH, user
        elif path.startswith(self.static_paths):
            return STATIC, user
        return HEAVY, user

    def enter(self, item, user: str, now: float) -> Decision:
        """Whether heavy request `item` of `user` runs now (its slot taken), waits, or is refused."""
        if self._may_run(user):
            self._take(user)
            return Decision.RUN
        if self._waiting_per_user.get(user, 0) >= self.max_waiting:
            return Decision.REFUSE
        self._waiting.append((now + self.wait_seconds, item, user))
        self._waiting_per_user[user] = self._waiting_per_user.get(user, 0) + 1
        return Decision.WAIT

    def leave(self, user: str) -> list[tuple[object, str]]:
        """A heavy request of `user` ended: its slot back. Returns the waiting (item, user) that run
        now, their slots taken: first the request of the user with the fewest running, then the
        oldest, so that a user who floods waits behind nobody but himself."""
        self._running_total -= 1
        self._running[user] -= 1
        if not self._running[user]:
            del self._running[user]
        started = []
        while self._waiting and self._running_total < self.total:
            runnable = [(self._running.get(waiting_user, 0), index)
                        for index, (_deadline, _item, waiting_user) in enumerate(self._waiting)
                        if self._running.get(waiting_user, 0) < self.per_user]
            if not runnable:
                break
            _deadline, item, waiting_user = self._waiting.pop(min(runnable)[1])
            self._take(waiting_user)
            self._stop_waiting(waiting_user)
            started.append((item, waiting_user))
        return started

    def overdue(self, now: float) -> list:
        """The waiting items whose time is up (refuse them with WAITED_TOO_LONG); no longer waiting."""
        count = bisect.bisect_right(self._waiting, now, key=lambda entry: entry[0])  # deadlines only grow
        expired, self._waiting = self._waiting[:count], self._waiting[count:]
        for _deadline, _item, user in expired:
            self._stop_waiting(user)
        return [item for _deadline, item, _user in expired]

    def _may_run(self, user: str) -> bool:
        return self._running_total < self.total and self._running.get(user, 0) < self.per_user

    def _take(self, user: str) -> None:
        self._running[user] = self._running.get(user, 0) + 1
        self._running_total += 1

    def _stop_waiting(self, user: str) -> None:
        self._waiting_per_user[user] -= 1
        if not self._waiting_per_user[user]:
            del self._waiting_per_user[user]


def refusal(reason: str) -> bytes:
    """The whole 429 answer, closing the connection: a client over its limit gets no keep-alive."""
    body = json.dumps({"error": reason}).encode()
    return (f"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Retry-After: {RETRY_AFTER_SECONDS}\r\nConnection: close\r\n\r\n").encode() + body


def install(flask_server, prefix: str, by_credentials: bool) -> Admission:
    """Admission control for `flask_server` (routes under `prefix`; `by_credentials` when basic auth
    is on), applied by the gunicorn worker that serves it."""
    admission = Admission(prefix, by_credentials)
    flask_server.config[CONFIG_KEY] = admission
    return admission
