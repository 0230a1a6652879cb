"""Settings from flags and the environment, and the `flowerbed` command as a user meets it: --help
explains every option; a wrong value stops with one line and no traceback."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, Process, free_port, get, get_json, wait_for, wait_started
from monitor.settings import (DEMO_BROKER, DEMO_DB, Settings, SettingsError, broker_name, build_parser,
                              ignored_settings_text, load_settings)
from monitor.store.event_counts import DEFAULT_RUNTIME_BUCKETS

FLOWERBED = shutil.which("flowerbed")


def test_defaults_need_nothing():
    assert load_settings([], {}) == Settings()


def test_flags_win_over_the_environment_which_wins_over_defaults():
    settings = load_settings(["--port", "6000", "-b", "amqp://guest@rabbit//"],
                             {"FLOWERBED_PORT": "7000", "FLOWERBED_MAX_TASKS": "50", "CELERY_BROKER_URL": "redis://x/1"})
    assert (settings.port, settings.broker, settings.max_tasks) == (6000, "amqp://guest@rabbit//", 50)


@pytest.mark.parametrize("environ, field, value", [
    ({"CELERY_BROKER_URL": "redis://celery-var:6379/0"}, "broker", "redis://celery-var:6379/0"),
    ({"FLOWER_BROKER_URL": "redis://flower-var:6379/0"}, "broker", "redis://flower-var:6379/0"),
    ({"FLOWERBED_BROKER": "redis://ours/0", "CELERY_BROKER_URL": "redis://theirs/0"}, "broker", "redis://ours/0"),
    ({"PORT": "8080"}, "port", 8080),  # what a PaaS sets
    ({"FLOWER_PORT": "5566"}, "port", 5566),
    ({"FLOWER_MAX_TASKS": "10"}, "max_tasks", 10),
    ({"FLOWER_URL_PREFIX": "/flower"}, "url_prefix", "/flower"),
    ({"FLOWERBED_ENABLE_EVENTS": "0"}, "enable_events", False),
    ({"FLOWERBED_NO_AUTH": "yes"}, "no_auth", True),
    ({"FLOWERBED_REFRESH_SECONDS": "0.5"}, "refresh_seconds", 0.5),
    ({"FLOWER_BROKER_API": "http://guest:guest@rabbit:15672/api/"}, "broker_api", "http://guest:guest@rabbit:15672/api/"),
    ({"FLOWERBED_BROKER_TRANSPORT_OPTIONS": '{"global_keyprefix": "a:"}'}, "transport_options", {"global_keyprefix": "a:"}),
])
def test_environment_names_including_flowers(environ, field, value):
    assert getattr(load_settings([], environ), field) == value


def test_switches():
    settings = load_settings(["--no-enable-events", "--url-prefix", "/flower", "--url-prefix-stripped"], {})
    assert (settings.enable_events, settings.url_prefix_stripped) == (False, True)


def test_demo_uses_the_embedded_broker_and_its_own_history():
    demo = load_settings(["--demo"], {"FLOWERBED_BROKER": "redis://real/0"})
    assert (demo.broker, demo.db) == (DEMO_BROKER, DEMO_DB)
    assert load_settings(["--demo", "--db", "mine.db"], {}).db == "mine.db"
    several = load_settings(["--demo", "-b", "a=redis://x/0", "-b", "b=redis://y/0"], {})
    assert several.named_brokers == (("localhost", DEMO_BROKER),)


def test_users_parse_with_hashes_kept_whole():
    settings = load_settings(["--basic-auth", "ann:secret,bob:pbkdf2:sha256:600000$salt$hash",
                              "--basic-auth-readonly", "vic:view"], {})
    assert settings.admins == {"ann": "secret", "bob": "pbkdf2:sha256:600000$salt$hash"}
    assert settings.viewers == {"vic": "view"}


def test_failover_broker_urls_are_accepted():
    broker = "sentinel://h1:26379;sentinel://h2:26379"
    assert load_settings(["--broker", broker], {}).broker == broker


# -- several brokers ---------------------------------------------------------------------------------
def test_broker_repeats_each_time_optionally_named_and_the_first_is_the_broker():
    settings = load_settings(["-b", "eu=redis://:s3cret@eu-redis:6379/0", "--broker", "amqp://u:p@rabbit:5672/orders"],
                             {"FLOWERBED_BROKERS": "ignored=redis://env/0"})
    assert settings.named_brokers == (("eu", "redis://:s3cret@eu-redis:6379/0"),
                                      ("rabbit:5672/orders", "amqp://u:p@rabbit:5672/orders"))
    assert settings.broker == "redis://:s3cret@eu-redis:6379/0"  # what takes one broker takes the first


def test_flowerbed_brokers_is_a_comma_list_and_wins_over_the_single_broker_variables():
    environ = {"FLOWERBED_BROKERS": "eu=redis://eu:6379/0, us=redis://us:6379/0,", "CELERY_BROKER_URL": "redis://x/0"}
    assert load_settings([], environ).named_brokers == (("eu", "redis://eu:6379/0"), ("us", "redis://us:6379/0"))
    assert load_settings([], {"CELERY_BROKER_URL": "redis://x:6379/0"}).named_brokers == (
        ("x:6379/0", "redis://x:6379/0"),)


def test_one_broker_without_a_name_is_named_after_its_address_as_is_the_default():
    assert Settings().named_brokers == (("127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),)
    assert load_settings([], {}).named_brokers == Settings().named_brokers


@pytest.mark.parametrize("url, name", [
    ("redis://:s3cret@cache.internal:6379/2", "cache.internal:6379/2"),
    ("redis://h:6379/0?ssl_cert_reqs=none", "h:6379/0"),  # its options' '=' does not make it named
    ("amqp://user:pass@rabbit:5672//", "rabbit:5672"),  # the default vhost
    ("amqp://user:pass@rabbit:5672/orders", "rabbit:5672/orders"),
    ("redis://:pa%2Fss%40@h:6379/1", "h:6379/1"),
    ("sentinel://h1:26379;sentinel://h2:26379", "h1:26379"),
    ("sqs://AKIA:s3cret@", "sqs"),  # no address: its transport
])
def test_an_unnamed_broker_is_named_after_its_address_without_user_or_password(url, name):
    assert broker_name(url) == name
    assert load_settings(["--broker", url], {}).named_brokers == ((name, url),)


BAD_VALUES = [
    (["--port", "abc"], {}, "--port: expected a whole number, got 'abc'"),
    (["--port", "0"], {}, "port must be between 1 and 65535"),
    (["--max-tasks", "1.5"], {}, "--max-tasks: expected a whole number"),
    (["--refresh-seconds", "-1"], {}, "refresh-seconds must be a finite number greater than 0"),
    (["--inspect-timeout", "nan"], {}, "inspect-timeout must be a finite number greater than 0"),
    (["--broker", "nonsense"], {}, "broker must be a URL such as redis://"),
    (["--broker", "reddis://localhost:6379/0"], {}, "unknown transport 'reddis'"),
    (["--broker", "redis://localhost:port/0"], {}, "Port could not be cast to integer"),
    (["--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
    (["--port"], {}, "argument --port: expected one argument"),
    (["--url-prefix", "/"], {}, "url-prefix must name a path"),
    (["--url-prefix-stripped"], {}, "url-prefix-stripped needs --url-prefix"),
    (["--basic-auth", "ann"], {}, "'ann' has no password"),
    (["--basic-auth", "ann:x", "--basic-auth-readonly", "ann:y"], {}, "user 'ann' is in both"),
    (["--address", "0.0.0.0"], {}, "refusing to serve on 0.0.0.0 without basic auth"),
    ([], {"FLOWERBED_PORT": "http"}, "FLOWERBED_PORT: expected a whole number"),
    ([], {"FLOWERBED_DEMO": "maybe"}, "FLOWERBED_DEMO: expected 1/0"),
    (["-b", "eu=redis://a/0", "-b", "eu=redis://b/0"], {}, "--broker: two brokers are named 'eu'"),
    (["-b", "redis://a:6379/0", "-b", "rediss://a:6379/0"], {}, "two brokers are named 'a:6379/0': name them apart"),
    (["-b", "x=redis://a/0", "-b", "y=redis://a/0"], {}, "the broker 'redis://a/0' is given twice"),
    (["-b", "e u=redis://a/0"], {}, "broker name 'e u' may hold only letters, digits"),
    (["-b", "eu="], {}, "broker must be a URL such as redis://"),
    (["-b", "eu=reddis://a/0"], {}, "unknown transport 'reddis'"),
    ([], {"FLOWERBED_BROKERS": " , "}, "FLOWERBED_BROKERS: expected a broker URL, got none"),
    (["--broker-transport-options", "{global_keyprefix: x}"], {}, "broker-transport-options must be a JSON object: "),
    (["--broker-transport-options", "[1, 2]"], {}, "broker-transport-options must be a JSON object such as"),
    (["--broker-api", "rabbit:15672/api/"], {}, "broker-api must be an http:// or https:// URL"),
]


@pytest.mark.parametrize("argv, environ, message", BAD_VALUES, ids=[" ".join(a) or next(iter(e)) for a, e, _ in BAD_VALUES])
def test_bad_values_raise_one_line_settings_errors(argv, environ, message):
    with pytest.raises(SettingsError) as raised:
        load_settings(argv, environ)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("brokers", [["redi://ann:s3cret@rabbit//"], ["redis://ann:s3cret@redis:port/0"],
                                     ["a=redis://ann:s3cret@h/0", "b=redis://ann:s3cret@h/0"]])
def test_broker_errors_never_show_the_password(brokers):
    with pytest.raises(SettingsError) as raised:
        load_settings([arg for broker in brokers for arg in ("--broker", broker)], {})
    assert "s3cret" not in str(raised.value) and "ann:**@" in str(raised.value)


def test_public_address_with_auth_or_no_auth_is_allowed():
    assert load_settings(["--address", "0.0.0.0", "--basic-auth", "a:b"], {}).address == "0.0.0.0"
    assert load_settings(["--address", "0.0.0.0", "--no-auth"], {}).no_auth is True


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith(("FLOWERBED_", "FLOWER_", "CELERY_"))}
    return subprocess.run([FLOWERBED, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**clean, **env})


def test_help_explains_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for action in build_parser()._actions:
        if action.help == argparse.SUPPRESS:  # Flower's flags that Flowerbed refuses or ignores: tested below
            continue
        for flag in action.option_strings:
            assert flag in text, flag
        if action.dest != "help":
            assert len(action.help) > 20 and action.help.split(" (env")[0] in text, action.dest
    for env in ("FLOWERBED_BROKERS", "FLOWERBED_BROKER", "CELERY_BROKER_URL", "FLOWER_BROKER_URL", "FLOWERBED_PORT",
                "PORT", "FLOWERBED_DB", "FLOWERBED_BASIC_AUTH", "FLOWERBED_DEMO"):
        assert re.search(rf"\b{env}\b", text), env


@pytest.mark.parametrize("args, env, message", [
    (["--port", "abc"], {}, "--port: expected a whole number, got 'abc'"),
    (["--broker", "nonsense"], {}, "broker must be a URL"),
    (["--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
    ([], {"FLOWERBED_MAX_TASKS": "lots"}, "FLOWERBED_MAX_TASKS: expected a whole number"),
    (["--db", "/nonexistent-dir/flowerbed.db"], {}, "cannot use --db '/nonexistent-dir/flowerbed.db'"),
], ids=["port", "broker", "unknown-flag", "env", "db"])
def test_cli_stops_with_one_line_and_no_traceback(args, env, message):
    result = run_cli(*args, **env)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "basic auth is OFF" not in line]
    assert len(errors) == 1 and errors[0].startswith("flowerbed: error: "), result.stderr
    assert message in errors[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_python_app_py_is_the_same_cli():
    result = subprocess.run([sys.executable, "cli.py", "--port", "abc"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert (result.returncode, result.stderr.strip()) == (2, "flowerbed: error: --port: expected a whole number, got 'abc'")


def test_a_paas_environment_gives_web_settings_to_the_web_tier_only():
    environ = {"PORT": "8000", "WEB_CONCURRENCY": "4", "DATABASE_URL": "postgresql://app@db.internal/flowerbed"}
    web, collector = load_settings(["web"], environ), load_settings(["collect"], environ)
    assert (web.web_port, web.workers) == (8000, 4)
    assert (collector.port, collector.workers) == (None, 1)
    assert web.db == collector.db == "postgresql://app@db.internal/flowerbed"
    assert load_settings(["collect", "--port", "5556"], environ).port == 5556


def test_db_is_a_file_or_a_postgresql_url_and_its_password_is_never_shown():
    assert load_settings(["--db", "postgres://app:pw@db/f"], {}).db == "postgres://app:pw@db/f"
    with pytest.raises(SettingsError, match=r"postgresql://user@host/dbname URL, got 'mysql://app:\*\*@db/f'"):
        load_settings(["--db", "mysql://app:hunter2@db/f"], {})


def test_flower_inspect_timeout_is_read_in_flowers_milliseconds():
    assert load_settings([], {"FLOWER_INSPECT_TIMEOUT": "1500"}).inspect_timeout == 1.5
    assert load_settings([], {"FLOWERBED_INSPECT_TIMEOUT": "1.5"}).inspect_timeout == 1.5
    assert load_settings(["--inspect-timeout", "2"], {"FLOWER_INSPECT_TIMEOUT": "1500"}).inspect_timeout == 2


# -- Flower's settings: its units, its flags, and what Flowerbed refuses or ignores --------------------
# A Celery project of the user's, for --app: its broker, one task.
PROJECT = '''
from celery import Celery

app = Celery("proj", broker="{broker}")


@app.task(name="proj.hello")
def hello(who):
    return f"hello {{who}}"
'''

# Flower 2.2's options and their units: flower/options.py; its FLOWER_ variables: flower/command.py
# apply_env_options (FLOWER_ + the option's name upper-cased; a `multiple` option split on commas).
@pytest.mark.parametrize("argv, environ, field, value", [
    ([], {"FLOWER_INSPECT_TIMEOUT": "250"}, "inspect_timeout", 0.25),  # milliseconds
    (["--inspect_timeout", "1500"], {}, "inspect_timeout", 1.5),  # Flower's flag: milliseconds too
    (["--inspect_timeout=1500"], {}, "inspect_timeout", 1.5),  # tornado's --name=value
    (["--inspect-timeout", "1.5"], {}, "inspect_timeout", 1.5),  # ours: seconds
    ([], {"FLOWER_PURGE_OFFLINE_WORKERS": "120"}, "purge_offline_workers", 120),  # seconds
    (["--purge_offline_workers=60"], {}, "purge_offline_workers", 60),
    (["--purge-offline-workers", "60"], {}, "purge_offline_workers", 60),
    ([], {"FLOWER_MAX_TASKS": "500"}, "max_tasks", 500),
    (["--max_tasks=500"], {}, "max_tasks", 500),
    (["--basic_auth", "ann:pw,bob:pw2"], {}, "basic_auth", "ann:pw,bob:pw2"),
    ([], {"FLOWER_BASIC_AUTH": "ann:pw,bob:pw2"}, "basic_auth", "ann:pw,bob:pw2"),  # a comma list in Flower too
    (["--url_prefix=flower"], {}, "url_prefix", "flower"),
    ([], {"FLOWER_ADDRESS": "127.0.0.1", "FLOWER_PORT": "5566"}, "port", 5566),
    ([], {"FLOWER_ENABLE_EVENTS": "False"}, "enable_events", False),
    (["--enable_events=False"], {}, "enable_events", False),
    (["--enable_events"], {"FLOWER_ENABLE_EVENTS": "false"}, "enable_events", True),  # a flag wins
    (["-A", "proj_with_a_broker"], {}, "broker", "redis://from-the-app:6379/3"),
    (["--app", "proj_with_a_broker", "-b", "redis://given:6379/0"], {}, "broker", "redis://given:6379/0"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_flowers_variables_and_flags_in_flowers_units(argv, environ, field, value, monkeypatch, tmp_path):
    (tmp_path / "proj_with_a_broker.py").write_text(PROJECT.format(broker="redis://from-the-app:6379/3"))
    monkeypatch.syspath_prepend(str(tmp_path))  # for --app
    assert getattr(load_settings(argv, environ), field) == value


def test_app_gives_its_broker_settings_and_task_names(monkeypatch):
    from monitor.services import make_celery_app
    from monitor.user_app import broker_settings, load_user_app, task_names

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    user_app = load_user_app("sample_tasks")
    user_app.conf.broker_transport_options = {"visibility_timeout": 77}
    user_app.conf.broker_use_ssl = {"cert_reqs": "required"}
    monitor_app = make_celery_app(Settings(), "rediss://h:6380/0", user_app)
    assert monitor_app.conf.broker_transport_options == {"visibility_timeout": 77}
    assert monitor_app.conf.broker_use_ssl == {"cert_reqs": "required"}
    assert monitor_app.conf.broker_url == "rediss://h:6380/0" and "broker_url" not in broker_settings(user_app)
    names = task_names(user_app)  # (celery shares tasks between apps: another test's app may add its own)
    assert {"sample.add", "sample.fail", "sample.flaky", "sample.sleep", "sample.spawn"} <= set(names)
    assert names == sorted(names) and not [name for name in names if name.startswith("celery.")]


REFUSED = ["auth", "oauth2_key", "oauth2_secret", "oauth2_redirect_uri", "auth_provider", "read_only", "unix_socket",
           "conf"]


@pytest.mark.parametrize("name", REFUSED)
def test_flower_settings_that_would_weaken_security_stop_the_start(name):
    for argv, environ, source in ([f"--{name}=x"], {}, f"--{name}"), ([], {f"FLOWER_{name.upper()}": "x"},
                                                                       f"FLOWER_{name.upper()}"):
        with pytest.raises(SettingsError) as raised:
            load_settings(argv, environ)
        message = str(raised.value)
        assert message.startswith(f"{source} is not supported: ") and "\n" not in message
        assert re.search(r"use --|give", message), message  # says what to use instead


def test_flower_auth_names_basic_auth_instead_and_a_switch_turned_off_is_no_loss():
    with pytest.raises(SettingsError, match="FLOWER_AUTH is not supported: Flowerbed has no OAuth login: use --basic-auth"):
        load_settings([], {"FLOWER_AUTH": ".*@example.com"})
    assert load_settings([], {"FLOWER_READ_ONLY": "false", "FLOWER_PERSISTENT": "False"}).ignored_flower_settings == ()


@pytest.mark.parametrize("name", ["persistent", "db", "state_save_interval", "natural_time", "auto_refresh",
                                  "tasks_columns", "max_workers", "debug", "xheaders", "cookie_secret",
                                  "format_task"])
def test_every_harmless_flower_setting_is_named_as_variable_and_as_flag(name):
    variable = f"FLOWER_{name.upper()}"
    assert load_settings([], {variable: "x"}).ignored_flower_settings == (variable,)
    if name != "db":  # --db is ours (the store): Flower's is its variable only
        assert load_settings([f"--{name}=x"], {}).ignored_flower_settings == (f"--{name}",)


def test_harmless_flower_settings_are_named_in_one_warning_line():
    settings = load_settings(["--natural_time", "--tasks_columns=name,uuid"],
                             {"FLOWER_PERSISTENT": "True", "FLOWER_DB": "/var/flower", "FLOWER_STATE_SAVE_INTERVAL": "5000",
                              "FLOWER_MAX_WORKERS": "100", "FLOWER_COOKIE_SECRET": "s"})
    text = ignored_settings_text(settings)
    assert "\n" not in text and text.startswith("Flower settings that Flowerbed ignores: ")
    for source in ("--natural_time", "--tasks_columns", "FLOWER_PERSISTENT (history is always kept, in --db)",
                   "FLOWER_DB", "FLOWER_STATE_SAVE_INTERVAL", "FLOWER_MAX_WORKERS", "FLOWER_COOKIE_SECRET"):
        assert source in text, source
    assert load_settings([], {}).ignored_flower_settings == () and ignored_settings_text(Settings()) == ""


@pytest.mark.parametrize("argv, message", [
    (["--certfile", "cert.pem"], "--certfile and --keyfile go together"),
    (["--keyfile", "key.pem"], "--certfile and --keyfile go together"),
    (["--certfile", "/nonexistent/cert.pem", "--keyfile", "/nonexistent/key.pem"], "--certfile: cannot read"),
    (["--ca_certs", "ca.pem"], "--ca-certs needs --certfile"),
    (["--purge-offline-workers", "0"], "purge-offline-workers must be a finite number greater than 0"),
    (["--app", "no_such_module_here"], "--app no_such_module_here: cannot load it: ModuleNotFoundError"),
])
def test_bad_tls_purge_and_app_settings_raise_one_line(argv, message):
    with pytest.raises(SettingsError) as raised:
        load_settings(argv, {})
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_cli_refuses_flowers_auth_in_one_line():
    result = run_cli("--auth", ".*@example.com")
    assert (result.returncode, result.stderr.strip()) == (
        2, "flowerbed: error: --auth is not supported: Flowerbed has no OAuth login: use --basic-auth "
           "(and --basic-auth-readonly), or a proxy that authenticates in front of it")



def test_flowerbed_app_shows_the_apps_task_types_with_no_worker_running(tmp_path, redis_url):
    """`flowerbed --app proj`, as `celery -A proj flower`: the broker comes from the app, its task
    types are listed though no worker ever ran; a harmless Flower variable is named at start."""
    (tmp_path / "proj_for_flowerbed.py").write_text(PROJECT.format(broker=redis_url))
    port = free_port()
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("FLOWERBED_", "FLOWER_", "CELERY_"))}
    process = Process([FLOWERBED, "--app", "proj_for_flowerbed", "--db", str(tmp_path / "f.db"), "--port", str(port)],
                      tmp_path / "flowerbed.log", env={**clean, "FLOWER_PERSISTENT": "True"}, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_started(process, lambda: get(f"{base}/healthcheck")[0] == 200, 30, "flowerbed --app")
        assert get_json(f"{base}/api/task/types") == (200, {"task-types": ["proj.hello"]})
        assert get_json(f"{base}/api/workers") == (200, {})  # no worker: the types came from the app
        collector = wait_for(lambda: get_json(f"{base}/api/collector")[1].get("connected") and
                             get_json(f"{base}/api/collector")[1], 20, "the collector on the app's broker")
        assert collector["broker"] == redis_url.split("//", 1)[1]  # the app's broker, named by its address
        warnings = [line for line in process.output().splitlines() if "Flower settings that Flowerbed ignores" in line]
        assert len(warnings) == 1 and "FLOWER_PERSISTENT" in warnings[0]
    finally:
        process.stop()


def test_https_with_certfile_and_keyfile(tmp_path, redis_url, flowerbed_server):
    """--certfile and --keyfile serve HTTPS, with a certificate the test makes; plain HTTP gets no page."""
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    server = flowerbed_server(redis_url, "--certfile", str(cert), "--keyfile", str(key), scheme="https")
    verified = ssl.create_default_context(cafile=str(cert))  # the server's own certificate, verified
    assert get(f"{server}/api/workers", context=verified) == (200, b"{}\n")
    assert get(f"{server}/healthcheck/ready", context=verified)[0] in (200, 503)
    try:
        status = get(f"{server.replace('https://', 'http://')}/api/workers")[0]
    except OSError:  # a TLS server closes a plain request
        status = None
    assert status != 200


def test_runtime_metric_buckets_are_read_as_flower_takes_them_and_bad_ones_refused():
    assert load_settings([]).runtime_buckets == DEFAULT_RUNTIME_BUCKETS
    # Flower's flag and variable, its "inf" (always there) and any order
    assert load_settings(["--task_runtime_metric_buckets", "10,0.5,inf"]).runtime_buckets == (0.5, 10.0)
    assert load_settings([], {"FLOWER_TASK_RUNTIME_METRIC_BUCKETS": "1, 2"}).runtime_buckets == (1.0, 2.0)
    for text, message in (("0.1,fast", "'fast' is not a number of seconds"), ("0,1", "greater than 0"),
                          ("inf", "at least one finite bucket bound")):
        with pytest.raises(SettingsError, match=f"task-runtime-metric-buckets: .*{message}"):
            load_settings(["--task-runtime-metric-buckets", text])
