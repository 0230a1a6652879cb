"""The page's scripts and styles are compressed once per process, not once per request.

Flask-Compress (Dash's `compress=True`) compresses every response as it leaves. For the scripts under
`_dash-component-suites/` (plotly.js 4.8 MB, AG Grid's 2 MB, Dash's own) that is 0.2-0.3 s of the
server's CPU for each browser's first visit, spent while the same 2 cores run the browser's start.
The assets, which Flask sends from their files, it compresses as a stream: zstd or br for today's
browsers, without a length, and under an ETag that Flask's file serving never matches, so asking again
whether a file changed brought the whole file back instead of a 304. The bodies never change while the
process runs (files of installed packages and of the assets folder), so each is gzipped the first time
it is asked for and kept, by its content's digest: the cache holds at most one entry per file Dash is
willing to serve (it refuses package paths it did not register), and one more each time an asset is
edited during development. They go out as gzip, which every browser takes (zstd or br: a first visit
moved 0.7 % fewer bytes).
"""
from __future__ import annotations

import gzip
import hashlib
import threading

import flask

# Smaller bodies cost next to nothing to compress each time, and callbacks' answers are never cached.
SMALLEST_KEPT = 16 * 1024
# Flask-Compress's default gzip level.
GZIP_LEVEL = 6


class CompressedBodies:
    """gzip bodies by the digest of what they compress."""

    def __init__(self):
        self._bodies: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def gzipped(self, body: bytes) -> bytes:
        digest = hashlib.blake2b(body, digest_size=20).digest()
        with self._lock:
            kept = self._bodies.get(digest)
        if kept is None:
            # Two first requests at once may both compress; the result is the same.
            kept = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
            with self._lock:
                self._bodies[digest] = kept
        return kept


def install(server: flask.Flask, routes_prefix: str) -> None:
    """Send the scripts Dash serves from its packages, and the assets, gzipped from `bodies`. Registered
    after Dash's Flask-Compress, so it runs first: a response it compressed already says so, and
    Flask-Compress leaves it as it is."""
    bodies = CompressedBodies()
    files = (f"{routes_prefix}_dash-component-suites/", f"{routes_prefix}assets/")

    def send_kept(response: flask.Response) -> flask.Response:
        request = flask.request
        if (request.method not in ("GET", "HEAD") or response.status_code != 200 or not request.path.startswith(files)
                or "Content-Encoding" in response.headers or (response.is_streamed and not response.direct_passthrough)
                or (response.content_length or 0) < SMALLEST_KEPT
                or request.accept_encodings["gzip"] <= 0):
            return response
        response.direct_passthrough = False  # an asset's file, read here to be compressed
        etag, weak = response.get_etag()
        response.set_data(bodies.gzipped(response.get_data()))
        response.headers["Content-Encoding"] = "gzip"
        # A range asked of a file is answered from the file as it is, not from this body.
        response.headers.pop("Accept-Ranges", None)
        response.vary.add("Accept-Encoding")
        if etag:  # Flask-Compress's rule: the compressed body is another representation
            response.set_etag(f"{etag}:gzip", weak=weak)
            response.make_conditional(request)
        return response

    server.after_request(send_kept)
