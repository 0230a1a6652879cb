"""Refuses state-changing requests another site makes the user's browser send (CSRF).

Flower's CVE-2022-30034: a page on any site posted a form to Flower's API, and the browser added
the user's credentials. Basic auth is sent by the browser on every request, so credentials alone
prove nothing. A POST (PUT, PATCH, DELETE) is refused with 403 and the reason when:

- its `Origin`, or without one its `Referer`, names another host than the one it was sent to
  (`Origin: null`, from a sandboxed frame or a redirect, counts as another), unless the browser says
  `Sec-Fetch-Site: same-origin`;
- it is a browser's form post (urlencoded, multipart or text/plain, the bodies a form can send
  without asking the server first) and carries no valid page token (`X-Flowerbed-Token` header or
  `_token` field, from GET /api/token). A browser says it sent the request by its Origin, Referer
  or Sec-Fetch-* headers; a script (curl, requests) sends none, and keeps working as with Flower.

Dash's own callback POSTs are JSON, which a form cannot send: the Origin check covers them.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import urllib.parse

import flask

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
TOKEN_HEADER = "X-Flowerbed-Token"
TOKEN_FIELD = "_token"
_BROWSER_HEADERS = ("Origin", "Referer", "Sec-Fetch-Site", "Sec-Fetch-Mode")


def page_token(user: str) -> str:
    """The token a page of `user` sends with a form post: signed with the app's secret key, so
    another site can neither read nor make it."""
    key = (flask.current_app.secret_key or flask.current_app.config.get("flowerbed_token_key", "")).encode()
    return hmac.new(key, f"form-post:{user}".encode(), hashlib.sha256).hexdigest()


def _hostname(netloc: str) -> str:
    """A host[:port] without its port: nginx's `proxy_set_header Host $host` drops the port the
    browser named in Origin (and another port of the same host is the same site to a browser)."""
    return urllib.parse.urlsplit(f"//{netloc}").hostname or ""


def _host_of(url: str) -> str | None:
    try:
        parsed = urllib.parse.urlsplit(url)
        return _hostname(parsed.netloc) if parsed.scheme in ("http", "https") and parsed.netloc else None
    except ValueError:  # a malformed address or port
        return None


def _own_hosts() -> set[str]:
    """The host this request was sent to, as the browser named it: Host, or a proxy's X-Forwarded-Host."""
    hosts = {_hostname(flask.request.host)}
    forwarded = flask.request.headers.get("X-Forwarded-Host")
    if forwarded:
        hosts.add(_hostname(forwarded.split(",")[0].strip()))
    return hosts


def refusal(current_user) -> str | None:
    """Why the current request must be refused, or None when it may go on."""
    request = flask.request
    if request.method in SAFE_METHODS:
        return None
    origin, referer = request.headers.get("Origin"), request.headers.get("Referer")
    if request.headers.get("Sec-Fetch-Site") == "same-origin":
        # The browser itself says the page that sent it is this site (a page cannot forge Sec-Fetch-*):
        # this holds behind a proxy that passes neither the Host the browser named nor X-Forwarded-Host.
        origin = referer = None
    if origin is not None:
        if _host_of(origin) not in _own_hosts():
            return f"cross-site request refused: it comes from {origin[:100]!r}, not from this site"
    elif referer and _host_of(referer) not in _own_hosts():
        return "cross-site request refused: it comes from another site (Referer)"
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return "cross-site request refused (Sec-Fetch-Site: cross-site)"
    from_browser = any(request.headers.get(header) for header in _BROWSER_HEADERS)
    if from_browser and request.mimetype in FORM_TYPES:
        given = request.headers.get(TOKEN_HEADER) or (request.form.get(TOKEN_FIELD) if request.mimetype != "text/plain"
                                                      else None)
        if not given or not hmac.compare_digest(given, page_token(current_user())):
            return "a form post from a browser needs the page's token (X-Flowerbed-Token); refused"
    return None


def install(server: flask.Flask, routes_prefix: str, current_user) -> None:
    """Check every request to `server`; GET {prefix}api/token gives the current user's page token."""
    server.config["flowerbed_token_key"] = secrets.token_hex(32)  # signs tokens when auth (and its key) is off
    @server.before_request
    def refuse_cross_site():
        reason = refusal(current_user)
        if reason is not None:
            response = flask.jsonify(error=reason)
            response.status_code = 403
            return response
        return None

    @server.get(f"{routes_prefix}api/token")
    def token():
        # Readable by this site's pages and scripts only: a browser never lets another site read it.
        return flask.jsonify(token=page_token(current_user()))
