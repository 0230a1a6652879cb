"""Basic auth for every page, callback and API route, with an admin and a read-only role.

dash-auth's BasicAuth does the session and groups; this subclass parses the Authorization header
defensively (a malformed one is a 401, never a 500), compares in constant time, accepts werkzeug
password hashes, and guards every route itself so that only the health check is public.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import secrets

import flask
from dash_auth import BasicAuth
from dash_auth.group_protection import check_groups
from werkzeug.security import check_password_hash

from monitor.settings import Settings
from monitor.store import Store

ADMIN, VIEWER = "admin", "viewer"
# The ids of the components a Dash callback that acts (control, re-run) writes to start with this:
# such a callback is refused on the server to anyone who may not act, whatever the page shows.
ACTION_PREFIX = "act-"
_HASH_PREFIXES = ("pbkdf2:", "scrypt:")
log = logging.getLogger(__name__)


def credentials_from_header(header: str | None) -> tuple[str, str] | None:
    """(user, password) from 'Basic base64(user:password)', or None for anything else."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def password_matches(given: str, expected: str) -> bool:
    if expected.startswith(_HASH_PREFIXES):
        return check_password_hash(expected, given)
    return hmac.compare_digest(given.encode(), expected.encode())


class FlowerbedAuth(BasicAuth):
    def __init__(self, app, settings: Settings, store: Store, public_paths: tuple[str, ...]):
        admins, viewers = settings.admins, settings.viewers
        self._passwords = {**admins, **viewers}
        self._public_paths = public_paths
        super().__init__(
            app,
            auth_func=self._check,
            user_groups={**{user: [ADMIN] for user in admins}, **{user: [VIEWER] for user in viewers}},
            secret_key=secret_key(settings, store),
        )

    def _check(self, user: str, password: str) -> bool:
        expected = self._passwords.get(user)
        if expected is None:
            password_matches(password, "x" * len(password))  # same work for unknown users
            return False
        return password_matches(password, expected)

    def _protect(self):
        # Replaces dash-auth's guard, whose default public routes would leave Dash's layout and
        # dependency routes open: here only the health check is.
        @self.app.server.before_request
        def require_login():
            if flask.request.path in self._public_paths or self.is_authorized():
                return None
            return self.login_request()

    def is_authorized(self) -> bool:
        credentials = credentials_from_header(flask.request.headers.get("Authorization"))
        if credentials is None:
            return False
        user, password = credentials
        if not self._check(user, password):
            return False
        flask.session["user"] = {"email": user, "groups": self._user_groups.get(user, [])}
        return True

    def login_request(self):
        return flask.Response("Login required", status=401,
                              headers={"WWW-Authenticate": 'Basic realm="Flowerbed", charset="UTF-8"'})


def can_act() -> bool:
    """Whether the current request may trigger actions (inspect, control): admins, or anyone
    when auth is off. Checked on the server, whatever the page shows."""
    if not flask.current_app.config.get("flowerbed_auth"):
        return True
    return bool(check_groups([ADMIN]))


def _acting_outputs() -> list[str]:
    """The output component ids of the Dash callback request being served."""
    body = flask.request.get_json(silent=True)
    outputs = body.get("outputs") if isinstance(body, dict) else None
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return [str(output.get("id")) for output in outputs if isinstance(output, dict)]


def guard_action_callbacks(server: flask.Flask, routes_prefix: str) -> None:
    """403 for a read-only user's request to a callback that acts (see ACTION_PREFIX)."""
    update_path = f"{routes_prefix}_dash-update-component"

    @server.before_request
    def refuse_viewers_actions():
        if flask.request.path != update_path or can_act():
            return None
        if any(output.startswith(ACTION_PREFIX) for output in _acting_outputs()):
            response = flask.jsonify(error="read-only users cannot act on workers or tasks")
            response.status_code = 403
            return response
        return None


def current_user() -> str:
    """Who the current request acts as, for the audit log: the basic-auth user, or "anonymous"
    when auth is off."""
    credentials = credentials_from_header(flask.request.headers.get("Authorization"))
    if credentials and flask.current_app.config.get("flowerbed_auth"):
        return credentials[0]
    return "anonymous"


def secret_key(settings: Settings, store: Store) -> str:
    """FLOWERBED_SECRET_KEY, or a key generated once and kept in the store, so that every web
    process and host signs sessions alike."""
    if os.environ.get("FLOWERBED_SECRET_KEY"):
        return os.environ["FLOWERBED_SECRET_KEY"]
    return store.meta_once("session_secret_key", lambda: secrets.token_urlsafe(32))


def install(app, settings: Settings, store: Store, public_paths: tuple[str, ...]) -> None:
    """Protect the app when users are configured; otherwise warn once."""
    app.server.config["flowerbed_auth"] = settings.auth_enabled
    if settings.auth_enabled:
        FlowerbedAuth(app, settings, store, public_paths)
    else:
        log.warning("basic auth is OFF: anyone who can reach %s can see and control your cluster; "
                    "set --basic-auth user:password (or FLOWERBED_BASIC_AUTH)", settings.address)
