"""One Settings object, built from CLI flags and the environment.

Every option has a flag and an environment variable; a flag wins over the environment. Flower's
variable names and underscore flags are accepted, in Flower's units, so an existing deployment keeps
working; a Flower setting Flowerbed lacks either stops the start (when ignoring it would weaken
security) or is named in a warning (when ignoring it is harmless): none vanishes silently.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from typing import Mapping, Sequence

from monitor.store import is_postgres_url
from monitor.store.event_counts import DEFAULT_RUNTIME_BUCKETS, parse_buckets

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_PORT = 5555
# The ways to run: everything in one process, the collector alone, the pages and API alone.
COMMANDS = ("all", "collect", "web")
DEMO_BROKER = "memory://localhost/"
DEMO_DB = "flowerbed-demo.db"


class SettingsError(ValueError):
    """A malformed or unknown option; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class Settings:
    command: str = "all"
    broker: str = DEFAULT_BROKER  # the first (with one, the only) broker's URL
    # Every broker as (name, URL), in the order given; empty: `broker` alone, named by broker_name().
    brokers: tuple[tuple[str, str], ...] = ()
    address: str = "127.0.0.1"
    port: int | None = None  # the web server's (DEFAULT_PORT when not set); the collector's status port (off)
    workers: int = 1
    db: str = "flowerbed.db"
    max_tasks: int = 100_000
    max_field_size: int = 65_536
    stall_seconds: float = 30.0
    refresh_seconds: float = 3.0
    inspect_seconds: float = 10.0
    inspect_timeout: float = 1.0
    # A running task is stuck past max(stuck_factor × its name's p99 runtime, stuck_floor) seconds;
    # a received one waits too long past waiting_seconds (the Analytics page may change them).
    stuck_factor: float = 3.0
    stuck_floor: float = 60.0
    waiting_seconds: float = 60.0
    enable_events: bool = True
    url_prefix: str = ""
    url_prefix_stripped: bool = False
    basic_auth: str = ""
    basic_auth_readonly: str = ""
    no_auth: bool = False
    demo: bool = False
    # A durable queue on RabbitMQ that keeps events while no collector listens (none: a subscription).
    events_queue: str = ""
    events_queue_max_length: int = 1_000_000
    events_queue_ttl: float = 86_400.0
    app: str = ""  # the user's Celery app (`-A proj`): its broker settings, task registry, result backend
    certfile: str = ""  # with keyfile: serve HTTPS
    keyfile: str = ""
    ca_certs: str = ""
    purge_offline_workers: int | None = None  # seconds offline after which a worker is hidden
    # The upper bounds of /metrics' runtime histogram, in seconds, separated by commas (Flower's option).
    task_runtime_metric_buckets: str = ""
    # Flower settings given that Flowerbed has no use for, as Flower names them (for the warning at start).
    ignored_flower_settings: tuple[str, ...] = ()
    # RabbitMQ's management HTTP API, e.g. http://guest:guest@rabbit:15672/api/ (queue depths).
    broker_api: str = ""
    # kombu's transport options as the workers have them (JSON object), e.g. a Redis global_keyprefix.
    broker_transport_options: str = ""
    # Where the workers keep task results: /api/task/result reads them, abort writes its state there.
    result_backend: str = ""

    @property
    def runtime_buckets(self) -> tuple[float, ...]:
        return parse_buckets(self.task_runtime_metric_buckets) if self.task_runtime_metric_buckets \
            else DEFAULT_RUNTIME_BUCKETS

    @property
    def transport_options(self) -> dict:
        return json.loads(self.broker_transport_options) if self.broker_transport_options else {}

    @property
    def named_brokers(self) -> tuple[tuple[str, str], ...]:
        """(name, URL) of every broker to watch: one collector and one inspector each."""
        return self.brokers or ((broker_name(self.broker), self.broker),)

    @property
    def admins(self) -> dict[str, str]:
        return parse_users(self.basic_auth, "basic-auth")

    @property
    def viewers(self) -> dict[str, str]:
        return parse_users(self.basic_auth_readonly, "basic-auth-readonly")

    @property
    def web_port(self) -> int:
        return self.port or DEFAULT_PORT

    @property
    def collects(self) -> bool:
        """Whether this process runs the collector and the inspector."""
        return self.command != "web"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth or self.basic_auth_readonly)

    @property
    def tls(self) -> bool:
        return bool(self.certfile)


# (field, flags, environment variables in order of preference, type, help); Flower's spelling of a
# flag (--max_tasks) is an alias of ours, in Flower's unit (see _FLOWER_UNITS).
_OPTIONS = (
    ("broker", ("--broker", "-b"), ("FLOWERBED_BROKERS", "FLOWERBED_BROKER", "CELERY_BROKER_URL", "FLOWER_BROKER_URL"),
     str, "Celery broker URL, e.g. redis://host:6379/0 or amqp://user:pass@host:5672//; repeat it to watch several "
          "brokers, each optionally named NAME=URL (FLOWERBED_BROKERS: a comma list), else named after its "
          "address, e.g. host:6379/0"),
    ("app", ("--app", "-A"), ("FLOWERBED_APP", "CELERY_APP"), str,
     "your Celery app, as `celery -A` takes it (proj, proj.celery:app): its broker and broker settings (SSL, "
     "transport options), its task names (/api/task/types with no worker up) and its result backend "
     "(/api/task/result)"),
    ("address", ("--address",), ("FLOWERBED_ADDRESS", "FLOWER_ADDRESS"), str,
     "address the web server binds to"),
    ("port", ("--port",), ("FLOWERBED_PORT", "PORT", "FLOWER_PORT"), int,
     "port the web server listens on; with `collect`, the port of its health checks and counters"),
    ("workers", ("--workers",), ("FLOWERBED_WORKERS", "WEB_CONCURRENCY"), int,
     "web server processes, with `web` only (the collector runs in the one process otherwise)"),
    ("db", ("--db",), ("FLOWERBED_DB", "DATABASE_URL"), str,
     "where history is kept: a SQLite file, or a postgresql://user@host/dbname URL to scale out"),
    ("max_tasks", ("--max-tasks", "--max_tasks"), ("FLOWERBED_MAX_TASKS", "FLOWER_MAX_TASKS"), int,
     "tasks kept in the store; the oldest go first"),
    ("max_field_size", ("--max-field-size",), ("FLOWERBED_MAX_FIELD_SIZE",), int,
     "characters kept of a task's text field (args, kwargs, result, traceback…); the rest is cut, with a marker"),
    ("stall_seconds", ("--stall-seconds",), ("FLOWERBED_STALL_SECONDS",), float,
     "/healthcheck/ready fails once events wait this long with nothing stored"),
    ("refresh_seconds", ("--refresh-seconds",), ("FLOWERBED_REFRESH_SECONDS",), float,
     "how often the pages refresh themselves"),
    ("inspect_seconds", ("--inspect-seconds",), ("FLOWERBED_INSPECT_SECONDS",), float,
     "how often workers are inspected (stats, active, registered, queues)"),
    ("stuck_factor", ("--stuck-factor",), ("FLOWERBED_STUCK_FACTOR",), float,
     "a running task is stuck past this many times its name's p99 runtime of the last day..."),
    ("stuck_floor", ("--stuck-floor",), ("FLOWERBED_STUCK_FLOOR",), float,
     "...and past this many seconds at least"),
    ("waiting_seconds", ("--waiting-seconds",), ("FLOWERBED_WAITING_SECONDS",), float,
     "a task received (or sent) and not started for this many seconds is waiting too long"),
    ("inspect_timeout", ("--inspect-timeout", "--inspect_timeout"),
     ("FLOWERBED_INSPECT_TIMEOUT", "FLOWER_INSPECT_TIMEOUT"), float,
     "seconds to wait for workers' inspect replies (--inspect_timeout and FLOWER_INSPECT_TIMEOUT: "
     "milliseconds, as in Flower)"),
    ("url_prefix", ("--url-prefix", "--url_prefix"), ("FLOWERBED_URL_PREFIX", "FLOWER_URL_PREFIX"), str,
     "serve under this path, e.g. /flower"),
    ("purge_offline_workers", ("--purge-offline-workers", "--purge_offline_workers"),
     ("FLOWERBED_PURGE_OFFLINE_WORKERS", "FLOWER_PURGE_OFFLINE_WORKERS"), int,
     "hide workers offline for longer than this many seconds, on the pages, in the API and in /metrics"),
    ("task_runtime_metric_buckets", ("--task-runtime-metric-buckets", "--task_runtime_metric_buckets"),
     ("FLOWERBED_TASK_RUNTIME_METRIC_BUCKETS", "FLOWER_TASK_RUNTIME_METRIC_BUCKETS"), str,
     "upper bounds in seconds of the buckets of the runtime histogram of /metrics, separated by commas; "
     "set it on the collector"),
    ("certfile", ("--certfile",), ("FLOWERBED_CERTFILE", "FLOWER_CERTFILE"), str,
     "serve HTTPS with this certificate (PEM), with --keyfile"),
    ("keyfile", ("--keyfile",), ("FLOWERBED_KEYFILE", "FLOWER_KEYFILE"), str,
     "the private key (PEM) of --certfile"),
    ("ca_certs", ("--ca-certs", "--ca_certs"), ("FLOWERBED_CA_CERTS", "FLOWER_CA_CERTS"), str,
     "certificate authorities (PEM) to offer clients along with --certfile"),
    ("basic_auth", ("--basic-auth", "--basic_auth"), ("FLOWERBED_BASIC_AUTH", "FLOWER_BASIC_AUTH"), str,
     "admin users as user:password pairs separated by commas; a password may be a werkzeug hash"),
    ("basic_auth_readonly", ("--basic-auth-readonly",), ("FLOWERBED_BASIC_AUTH_READONLY",), str,
     "read-only users (see everything, can trigger no action), same format as --basic-auth"),
    ("events_queue", ("--events-queue",), ("FLOWERBED_EVENTS_QUEUE",), str,
     "RabbitMQ only: receive events from this durable queue, which keeps them while no collector listens "
     "(several collectors on one queue share the load); without it events published meanwhile are lost"),
    ("events_queue_max_length", ("--events-queue-max-length",), ("FLOWERBED_EVENTS_QUEUE_MAX_LENGTH",), int,
     "messages --events-queue keeps at most; beyond that the oldest are dropped"),
    ("events_queue_ttl", ("--events-queue-ttl",), ("FLOWERBED_EVENTS_QUEUE_TTL",), float,
     "seconds a message waits in --events-queue before the broker drops it"),
    ("broker_api", ("--broker-api", "--broker_api"), ("FLOWERBED_BROKER_API", "FLOWER_BROKER_API"), str,
     "RabbitMQ's management HTTP API, e.g. http://guest:guest@rabbit:15672/api/, to read queue depths from "
     "(else a passive queue_declare per queue)"),
    ("broker_transport_options", ("--broker-transport-options",), ("FLOWERBED_BROKER_TRANSPORT_OPTIONS",), str,
     "kombu transport options as a JSON object, as your workers' broker_transport_options, e.g. "
     '\'{"global_keyprefix": "app1:"}\' or Redis priority_steps and sep'),
    ("result_backend", ("--result-backend",), ("FLOWERBED_RESULT_BACKEND", "CELERY_RESULT_BACKEND"), str,
     "the workers' result backend (e.g. redis://host/1), for /api/task/result and to abort an AbortableTask "
     "(else --app's)"),
)
# (field, flag, environment variables, help) for on/off switches
_SWITCHES = (
    ("enable_events", "--no-enable-events", ("FLOWERBED_ENABLE_EVENTS", "FLOWER_ENABLE_EVENTS"),
     "do not ask workers to turn task events on"),
    ("url_prefix_stripped", "--url-prefix-stripped", ("FLOWERBED_URL_PREFIX_STRIPPED",),
     "the reverse proxy removes --url-prefix before forwarding (nginx: proxy_pass http://host:port/;)"),
    ("no_auth", "--no-auth", ("FLOWERBED_NO_AUTH",),
     "allow binding to a non-loopback address without basic auth"),
    ("demo", "--demo", ("FLOWERBED_DEMO",),
     "run an embedded demo cluster (in-memory broker, workers and traffic)"),
)
# Flower's own switch flags, which take a value as tornado's do (--enable_events=False): (flag, help).
_FLOWER_SWITCHES = {"enable_events": ("--enable_events", "Flower's spelling of the switch above: "
                                                         "--enable_events=False stops asking workers for task events")}

# Flower settings Flowerbed does not implement, by Flower's option name (its flag is --NAME, its
# variable FLOWER_NAME). Ignoring one of these would weaken security: the start stops, saying what
# to use instead.
_REFUSED = {
    **dict.fromkeys(("auth", "oauth2_key", "oauth2_secret", "oauth2_redirect_uri", "auth_provider"),
                    "Flowerbed has no OAuth login: use --basic-auth (and --basic-auth-readonly), or a proxy that "
                    "authenticates in front of it"),
    "read_only": "Flowerbed has no read-only switch: give the users who may not act --basic-auth-readonly",
    "unix_socket": "Flowerbed listens on TCP only: use --address and --port (a proxy can listen on the socket)",
    "conf": "Flowerbed reads no flowerconfig.py: give its settings as flags or FLOWERBED_/FLOWER_ variables",
}
# Harmless to ignore: named in one warning line at start. (what Flowerbed does instead)
_IGNORED = {
    "persistent": "history is always kept, in --db", "db": "history is kept in --db",
    "state_save_interval": "history is written as it comes", "natural_time": "times are shown as dates",
    "auto_refresh": "pages refresh every --refresh-seconds", "tasks_columns": "the Tasks page picks its columns",
    "max_workers": "every worker is kept", "debug": "", "xheaders": "",
    "cookie_secret": "FLOWERBED_SECRET_KEY, else a key kept in the store",
    "format_task": "",
}
# Options that may be given several times, each time one value.
_REPEATED = ("broker",)
# Environment variables holding several values separated by commas (the others hold one value).
_LISTS = ("FLOWERBED_BROKERS",)
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


# Defaults that depend on the command, as --help shows them.
_SHOWN_DEFAULTS = {"port": f"{DEFAULT_PORT}, or none with collect",
                   "task_runtime_metric_buckets": ",".join(f"{bound:g}" for bound in DEFAULT_RUNTIME_BUCKETS)}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit; we want one clear line
        raise SettingsError(message)


def _positive(name: str, value):
    if not math.isfinite(value) or value <= 0:  # nan and inf would reach the timers and the layout
        raise SettingsError(f"{name} must be a finite number greater than 0, got {value}")
    return value


def _convert(kind, raw: str, source: str):
    try:
        return kind(raw)
    except ValueError:
        expected = {int: "a whole number", float: "a number"}.get(kind, "text")
        raise SettingsError(f"{source}: expected {expected}, got {raw!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flowerbed", usage="flowerbed [collect | web] [options]",
                     description="Flowerbed: a Celery monitor with history and runtime charts. `flowerbed` runs "
                                 "the collector and the web server in one process; `flowerbed collect` only the "
                                 "collector (events into the store); `flowerbed web` only the pages and API, "
                                 "reading the store, with any number of --workers.")
    for field, flags, env, kind, help_text in _OPTIONS:
        default = getattr(Settings, field)
        shown = _SHOWN_DEFAULTS.get(field) or ("none" if default in ("", None) else repr(default))
        parser.add_argument(*flags, dest=field, default=None, metavar=field.upper(),
                            action="append" if field in _REPEATED else "store",
                            help=f"{help_text} (env {', '.join(env)}; default {shown})")
    for field, flag, env, help_text in _SWITCHES:
        turns_off = flag.startswith("--no-") and not field.startswith("no_")
        parser.add_argument(flag, dest=field, action="store_false" if turns_off else "store_true", default=None,
                            help=f"{help_text} (env {'/'.join(env)}={'0' if turns_off else '1'})")
    for field, (flag, help_text) in _FLOWER_SWITCHES.items():
        parser.add_argument(flag, dest=f"flower_{field}", nargs="?", const="true", default=None, metavar="BOOL",
                            help=help_text)
    # Flower's flags that Flowerbed lacks: taken so that load_settings can refuse or name them.
    ours = {flag for action in parser._actions for flag in action.option_strings}
    for name in (*_REFUSED, *_IGNORED):
        if f"--{name}" not in ours:  # Flower's --db is a file of its own: FLOWER_DB only is Flower's
            parser.add_argument(f"--{name}", dest=f"flower_unsupported_{name}", nargs="?", const="true",
                                default=None, help=argparse.SUPPRESS)
    return parser


# Flower's variables and flags in Flower's own units: a script or a deployment moved over means what it meant.
_FLOWER_UNITS = {"FLOWER_INSPECT_TIMEOUT": 0.001, "--inspect_timeout": 0.001}  # milliseconds in Flower; seconds here


def _flag_given(argv: Sequence[str], flags: Sequence[str]) -> str:
    """Which of `flags` (one option's spellings) the command line used, the last one winning as
    argparse lets it; the first when none (the value then came from elsewhere)."""
    used = [arg.split("=", 1)[0] for arg in argv if arg.split("=", 1)[0] in flags]
    return used[-1] if used else flags[0]


def _flower_unsupported(args, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The Flower settings given (flags and FLOWER_ variables) that Flowerbed lacks; SettingsError for
    one whose absence would weaken security. Returns the harmless ones, as Flower names them."""
    given = []
    for name in (*_REFUSED, *_IGNORED):
        flag, env = getattr(args, f"flower_unsupported_{name}", None), f"FLOWER_{name.upper()}"
        value, source = (flag, f"--{name}") if flag is not None else (environ.get(env), env)
        if value is None or value.strip().lower() in ("", "0", "false", "no", "off", "none"):
            continue  # not set, or turned off: nothing is lost
        if name in _REFUSED:
            raise SettingsError(f"{source} is not supported: {_REFUSED[name]}")
        given.append(source)
    return tuple(given)


def ignored_settings_text(settings: "Settings") -> str:
    """The one warning line naming the Flower settings given that Flowerbed ignores ('' for none)."""
    if not settings.ignored_flower_settings:
        return ""
    named = []
    for source in settings.ignored_flower_settings:
        instead = _IGNORED[source.removeprefix("--").removeprefix("FLOWER_").lower()]
        named.append(f"{source} ({instead})" if instead else source)
    return "Flower settings that Flowerbed ignores: " + "; ".join(named)


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then environment, then defaults. Raises SettingsError with one line."""
    environ = os.environ if environ is None else environ
    argv = list(argv) if argv is not None else []
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "all"
    args = build_parser().parse_args(argv)
    values = {"command": command}
    for field, flags, env, kind, _help in _OPTIONS:
        raw = getattr(args, field)
        source = _flag_given(argv, flags) if len(flags) > 1 and flags[1].startswith("--") else flags[0]
        if raw is None:
            name = next((n for n in env if environ.get(n)), None)
            if name is None:
                continue
            raw, source = environ[name], name
            if name in _LISTS:
                raw = raw.split(",")
        if field == "broker":
            values["brokers"] = parse_brokers(raw if isinstance(raw, list) else [raw], source)
            values["broker"] = values["brokers"][0][1]
        else:
            values[field] = _convert(kind, raw, source) * _FLOWER_UNITS.get(source, 1)
    for field, _flag, envs, _help in _SWITCHES:
        flag = getattr(args, field)
        flower_flag = _FLOWER_SWITCHES.get(field, ("",))[0]
        if flag is not None:
            values[field] = flag
        elif flower_flag and getattr(args, f"flower_{field}") is not None:
            values[field] = _switch(getattr(args, f"flower_{field}"), flower_flag)
        elif name := next((n for n in envs if environ.get(n)), None):
            values[field] = _switch(environ[name], name)
    values["ignored_flower_settings"] = _flower_unsupported(args, environ)
    # A PaaS gives every process type the web's PORT and WEB_CONCURRENCY: a collector takes its status
    # port and nobody but `web` takes workers from flags only.
    if command == "collect" and args.port is None:
        values.pop("port", None)
    if command != "web" and args.workers is None:
        values.pop("workers", None)
    if values.get("app") and not values.get("demo"):
        from monitor.user_app import AppNotLoaded, broker_url, load_user_app  # the user's code: only when asked

        try:
            user_app = load_user_app(values["app"])  # here, so that an app that cannot load stops the start
        except AppNotLoaded as exc:
            raise SettingsError(str(exc)) from None
        if "brokers" not in values:  # the app's own broker, unless one is given
            url = broker_url(user_app)
            values["brokers"] = parse_brokers([url], f"--app {values['app']}")
            values["broker"] = url
    settings = Settings(**values)
    _validate(settings)
    if settings.demo:  # the demo's history stays apart from a real cluster's
        settings = dataclasses.replace(settings, broker=DEMO_BROKER, brokers=(),
                                       db=values.get("db", DEMO_DB))
    return settings


def _switch(raw: str, source: str) -> bool:
    try:
        return _BOOLEANS[raw.strip().lower()]
    except KeyError:
        raise SettingsError(f"{source}: expected 1/0, true/false, yes/no or on/off, got {raw!r}") from None


def _validate(settings: Settings) -> None:
    if settings.port is not None and not 0 < settings.port < 65536:
        raise SettingsError(f"port must be between 1 and 65535, got {settings.port}")
    if settings.workers < 1:
        raise SettingsError(f"workers must be 1 or more, got {settings.workers}")
    if settings.workers > 1 and settings.command != "web":
        raise SettingsError("--workers above 1 needs `flowerbed web` (with the collector in the web process, "
                            "one process must hold it): run `flowerbed collect` beside `flowerbed web --workers N`")
    if settings.demo and settings.command != "all":
        raise SettingsError(f"--demo runs its cluster inside one process; not with `flowerbed {settings.command}`")
    for name in ("max_tasks", "max_field_size", "stall_seconds", "refresh_seconds", "inspect_seconds",
                 "inspect_timeout", "events_queue_max_length", "events_queue_ttl", "stuck_factor", "stuck_floor",
                 "waiting_seconds"):
        _positive(name.replace("_", "-"), getattr(settings, name))
    if settings.purge_offline_workers is not None:
        _positive("purge-offline-workers", settings.purge_offline_workers)
    try:
        settings.runtime_buckets
    except ValueError as exc:
        raise SettingsError(f"task-runtime-metric-buckets: {exc}") from None
    check_tls(settings)
    check_db(settings.db)
    check_transport_options(settings.broker_transport_options)
    if settings.broker_api and not settings.broker_api.startswith(("http://", "https://")):
        raise SettingsError(f"broker-api must be an http:// or https:// URL, got {without_password(settings.broker_api)!r}")
    if settings.events_queue and settings.collects:
        check_events_queue(settings)
    if settings.url_prefix and not settings.url_prefix.strip("/"):
        raise SettingsError(f"url-prefix must name a path such as /flower, got {settings.url_prefix!r}")
    if settings.url_prefix_stripped and not settings.url_prefix:
        raise SettingsError("url-prefix-stripped needs --url-prefix (the path the proxy serves under)")
    overlap = set(settings.admins) & set(settings.viewers)
    if overlap:
        raise SettingsError(f"user {sorted(overlap)[0]!r} is in both --basic-auth and --basic-auth-readonly")
    check_exposure(settings, settings.address)


def check_tls(settings: Settings) -> None:
    """--certfile and --keyfile together, each a file that can be read (as Flower asks both)."""
    if bool(settings.certfile) != bool(settings.keyfile):
        raise SettingsError("--certfile and --keyfile go together: give both to serve HTTPS")
    if settings.ca_certs and not settings.certfile:
        raise SettingsError("--ca-certs needs --certfile and --keyfile (it is offered along with the certificate)")
    for option in ("certfile", "keyfile", "ca_certs"):
        path = getattr(settings, option)
        if path and not os.access(path, os.R_OK):
            raise SettingsError(f"--{option.replace('_', '-')}: cannot read {path!r}")


def check_broker(broker: str) -> None:
    """A URL kombu can connect with (';' separates failover URLs), checked before anything starts:
    a typo otherwise shows up only as a collector that never connects."""
    from kombu.transport import TRANSPORT_ALIASES
    from kombu.utils.url import parse_url

    for url in (part.strip() for part in broker.split(";")):
        scheme, sep, _rest = url.partition("://")
        shown = without_password(url)
        if not sep:
            raise SettingsError(f"broker must be a URL such as redis://localhost:6379/0, got {shown!r}")
        if scheme.split("+", 1)[0] not in TRANSPORT_ALIASES:
            raise SettingsError(f"broker: unknown transport {scheme!r} in {shown!r} "
                                "(e.g. redis://, rediss://, amqp://, sqs://)")
        try:
            parse_url(url)
        except ValueError as exc:
            raise SettingsError(f"broker: {exc} in {shown!r}") from None


def check_transport_options(text: str) -> None:
    if not text:
        return
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"broker-transport-options must be a JSON object: {exc}") from None
    if not isinstance(options, dict):
        raise SettingsError(f"broker-transport-options must be a JSON object such as {{\"global_keyprefix\": \"app1:\"}}, "
                            f"got {text[:100]!r}")


def check_db(db: str) -> None:
    if "://" in db and not is_postgres_url(db):
        raise SettingsError(f"db: a SQLite file path or a postgresql://user@host/dbname URL, got {without_password(db)!r}")


# A broker's name: what tasks and workers carry, what the pages, `broker:` and `?broker=` filter on.
_BROKER_NAME = re.compile(r"[\w.:/@-]{1,100}")


def broker_name(url: str) -> str:
    """An unnamed broker's name: its address without scheme, user, password or options, and without
    a trailing '/': host:6379/0 for redis://:secret@host:6379/0, rabbit:5672 for amqp://u:p@rabbit:5672//,
    rabbit:5672/orders for the vhost orders (the first of failover URLs; the scheme when no address)."""
    scheme, _, rest = url.split(";")[0].strip().partition("://")
    # After the last '@': neither user nor password is part of a name.
    address = rest.split("?")[0].rpartition("@")[2].rstrip("/")
    return re.sub(r"[^\w.:/@-]", "_", address)[:100] or scheme


def parse_brokers(entries: Sequence[str], source: str) -> tuple[tuple[str, str], ...]:
    """(name, URL) of each `URL` or `NAME=URL` entry (empty entries skipped); SettingsError for a
    malformed URL or name, or a name or URL given twice."""
    brokers: list[tuple[str, str]] = []
    for entry in filter(None, (part.strip() for part in entries)):
        name, sep, url = entry.partition("=")
        if not sep or "://" in name:  # a URL's own '=' (in its options) comes after its '://'
            name, url = "", entry
        check_broker(url)
        shown = without_password(url)
        name = name.strip() or broker_name(url)
        if not _BROKER_NAME.fullmatch(name):
            raise SettingsError(f"{source}: broker name {name!r} may hold only letters, digits and . _ - : / @ "
                                "(at most 100), e.g. eu=redis://host:6379/0")
        if any(name == known for known, _ in brokers):
            raise SettingsError(f"{source}: two brokers are named {name!r}: name them apart, "
                                f"e.g. {name}-a=URL and {name}-b=URL")
        if any(url == known for _, known in brokers):
            raise SettingsError(f"{source}: the broker {shown!r} is given twice")
        brokers.append((name, url))
    if not brokers:
        raise SettingsError(f"{source}: expected a broker URL, got none")
    return tuple(brokers)


def without_password(url: str) -> str:
    """A URL fit to print: its password masked."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1**@", url)


# The transports of RabbitMQ (AMQP 0-9-1), where a queue keeps what is published to it.
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")


def check_events_queue(settings: Settings) -> None:
    """--events-queue on a broker that keeps a queue, checked before anything starts: elsewhere it
    would not connect, or keep nothing."""
    if not settings.events_queue.strip():
        raise SettingsError("events-queue must name a queue, got only spaces")
    urls = [DEMO_BROKER] if settings.demo else [url for _name, url in settings.named_brokers]
    schemes = {part.strip().partition("://")[0].split("+", 1)[0] for url in urls for part in url.split(";")}
    other = sorted(schemes - set(AMQP_SCHEMES))
    if other:
        raise SettingsError(f"--events-queue needs a RabbitMQ broker (amqp://), not {other[0]}://: other brokers "
                            "hand events to whoever listens at that moment and keep nothing")
    if settings.events_queue_ttl * 1000 >= 2 ** 32:  # RabbitMQ's x-message-ttl: milliseconds, 32 bits
        raise SettingsError(f"events-queue-ttl must be below {2 ** 32 // 1000:,} seconds, "
                            f"got {settings.events_queue_ttl:g}")


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def check_exposure(settings: Settings, address: str) -> None:
    """Serving beyond this machine without auth must be asked for explicitly."""
    if not settings.auth_enabled and not settings.no_auth and address not in LOOPBACK:
        raise SettingsError(f"refusing to serve on {address} without basic auth: "
                            "set --basic-auth user:password, or pass --no-auth to allow it")


def parse_users(text: str, option: str) -> dict[str, str]:
    """'ann:secret,bob:pbkdf2:sha256:...' → {'ann': 'secret', 'bob': 'pbkdf2:sha256:...'}."""
    users = {}
    for entry in filter(None, (part.strip() for part in (text or "").split(","))):
        user, sep, password = entry.partition(":")
        if not user:
            raise SettingsError(f"{option}: expected user:password pairs separated by commas; an entry has no user")
        if not sep or not password:
            raise SettingsError(f"{option}: expected user:password pairs separated by commas; {user!r} has no password")
        users[user] = password
    return users


def normalized_prefix(url_prefix: str) -> str:
    """'/flower', 'flower/' and '/flower/' all become '/flower/'; no prefix is '/'."""
    stripped = url_prefix.strip("/")
    return f"/{stripped}/" if stripped else "/"
