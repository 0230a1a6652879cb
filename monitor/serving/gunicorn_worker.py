"""gunicorn's threaded worker (gthread), made to stay responsive whatever its clients do.

- A connection waits for its request in the poller, not in a thread. When the request's head is in,
  a look at it (MSG_PEEK: nothing is consumed) decides where it goes: health checks to a small pool of
  their own, so that they never queue behind other requests; static files to the usual pool; any
  other request to the usual pool once admission control (admission.py) lets it run. Until then it
  waits in the main loop, holding no thread, or is refused with 429 from there.
- A client cannot hold a thread forever: a read or write gives up when the client has not moved for
  IO_TIMEOUT (one that stops reading its answer), and a request's head must be in within HEAD_SECONDS
  (one sent a byte at a time). What follows the head is bounded per user by admission control.
- Closing a connection never waits on the main loop, where every other connection would wait
  meanwhile (gunicorn lingers there up to 2 s for the client to close its side).
- The objects the app holds from its start are frozen out of the garbage collector, whose full
  collections otherwise stop every thread for ~100 ms while heavy requests churn objects.

The health lane and admission control read heads off the socket: both are off when gunicorn itself
terminates TLS (a proxy in front usually does).
"""
from __future__ import annotations

import errno
import gc
import math
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from gunicorn.workers.gthread import DEFAULT_WORKER_DATA_TIMEOUT, TConn, ThreadWorker

from monitor.serving import admission as admission_module

HEALTH_THREADS = 2
IO_TIMEOUT = 10.0
HEAD_SECONDS = 5.0  # below IO_TIMEOUT: a stalled head is cut here quietly, not by a timeout error
PEEK_BYTES = 16384  # more than gunicorn accepts for a request line and a header field
DRAIN_BYTES = 65536


class _Socket(socket.socket):
    def sendall(self, data, flags=0):
        """A loop of send(), so that the timeout bounds each wait for the client to read more, not
        the whole answer: a slow reader of a large file is not cut off while it reads."""
        with memoryview(data) as view, view.cast("B") as remaining:
            while remaining:
                remaining = remaining[self.send(remaining, flags):]


class _Connection(TConn):
    def init(self):
        super().init()
        # On every request: the worker makes the socket blocking, without a timeout, first.
        self.sock.settimeout(IO_TIMEOUT)

    def close(self, graceful=False):
        """gunicorn's close, without lingering: read what the client already sent (so that the
        kernel does not answer it with a reset, which could cut the response short) and close."""
        if graceful:
            try:
                self.sock.setblocking(False)  # what is there already, without waiting for more
                self.sock.shutdown(socket.SHUT_WR)
                drained = 0
                while drained < DRAIN_BYTES and (data := self.sock.recv(4096)):
                    drained += len(data)
            except OSError:  # gone already, or nothing more to read
                pass
        super().close()


class HealthFirstWorker(ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.health_pool: ThreadPoolExecutor | None = None
        self.admission: admission_module.Admission | None = None
        self._head_deadlines: dict[_Connection, float] = {}
        self._head_lock = threading.Lock()

    def init_process(self):
        self.health_pool = ThreadPoolExecutor(HEALTH_THREADS, thread_name_prefix="health")
        super().init_process()  # loads the app, then runs the loop

    def load_wsgi(self):
        super().load_wsgi()
        if not self.cfg.is_ssl:
            self.admission = getattr(self.wsgi, "config", {}).get(admission_module.CONFIG_KEY)
        gc.collect()
        gc.freeze()

    def run(self):
        try:
            super().run()
        finally:
            self.health_pool.shutdown(wait=False)

    def accept(self, listener):
        """Accept a connection and leave it in the poller until its request arrives (gunicorn hands
        it to a thread at once, which then waits for the request)."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        client_sock = _Socket(client_sock.family, client_sock.type, client_sock.proto, fileno=client_sock.detach())
        conn = _Connection(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.timeout = time.monotonic() + DEFAULT_WORKER_DATA_TIMEOUT  # murder_pending closes it then
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))

    def enqueue_req(self, conn):
        """Called on the main loop when a connection has a request for a thread."""
        if self.admission is None:
            self._submit(self.tpool, conn)
            return
        head = self._waiting_head(conn)
        if head is None:  # the client closed the connection
            self.nr_conns -= 1
            conn.close()
            return
        kind, user = self.admission.classify(head, conn.client[0] if isinstance(conn.client, tuple) else "")
        if kind == admission_module.HEALTH:
            self._submit(self.health_pool, conn)
        elif kind == admission_module.STATIC:
            self._submit(self.tpool, conn)
        else:
            decision = self.admission.enter(conn, user, time.monotonic())
            if decision is admission_module.Decision.RUN:
                self._submit(self.tpool, conn, user)
            elif decision is admission_module.Decision.REFUSE:
                self._refuse(conn, admission_module.TOO_MANY_WAITING)

    def _waiting_head(self, conn) -> bytes | None:
        """The next request's head (b"" when not all in), or None when the client closed."""
        waiting = conn.parser.unreader.buf.getvalue() if conn.parser is not None else b""
        if not waiting:  # else the next request was read along with the last one, and is not on the socket
            try:
                waiting = conn.sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return b""
            except OSError:
                return None
            if not waiting:
                return None
        head, end, _ = waiting.partition(b"\r\n\r\n")
        return head if end else b""

    def _submit(self, pool, conn, user: str | None = None):
        """Run the connection's request in `pool`; `user` holds an admission slot until it ends."""
        future = pool.submit(self.handle, conn)
        future.add_done_callback(lambda done: self.method_queue.defer(self._finished, conn, user, done))

    def _finished(self, conn, user, future):
        if user is not None:
            for waiting, waiting_user in self.admission.leave(user):
                self._submit(self.tpool, waiting, waiting_user)
        self.finish_request(conn, future)

    def _refuse(self, conn, reason: str):
        """Answer 429 from the main loop: the few hundred bytes fit in the socket's buffer at once."""
        try:
            conn.sock.send(admission_module.refusal(reason))
        except OSError:
            pass  # the client left, or never read its last answer: close all the same
        self.nr_conns -= 1
        conn.close(graceful=True)

    def handle(self, conn):
        with self._head_lock:
            self._head_deadlines[conn] = time.monotonic() + HEAD_SECONDS
        try:
            return super().handle(conn)
        finally:
            self._head_read(conn)

    def handle_request(self, req, conn):
        self._head_read(conn)
        try:
            return super().handle_request(req, conn)
        except TimeoutError:  # the client stopped reading its answer, or sending its body
            self.log.info("closed a connection from %s stalled for %g s", conn.client, IO_TIMEOUT)
            return False

    def _head_read(self, conn) -> None:
        with self._head_lock:
            self._head_deadlines.pop(conn, None)

    def murder_pending(self):
        """The main loop calls this every second at least: also refuse the requests that waited too
        long for admission (all of them once stopping), and cut connections whose request head is
        overdue (the thread reading one sees the end of the stream and lets go)."""
        super().murder_pending()
        now = time.monotonic()
        if self.admission is not None:
            for conn in self.admission.overdue(now if self.alive else math.inf):
                self._refuse(conn, admission_module.WAITED_TOO_LONG)
        with self._head_lock:
            overdue_heads = [conn for conn, deadline in self._head_deadlines.items() if deadline < now]
        for conn in overdue_heads:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
