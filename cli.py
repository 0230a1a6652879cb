"""The `flowerbed` command: Settings from the flags and the environment, then the collector alone
(`flowerbed collect`, which never loads the pages: Dash, plotly and pandas cost it ~70 MB) or the
web server of app.py (`flowerbed`, `flowerbed web`)."""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import threading

from monitor.serving.health import serve_collector_status
from monitor.services import build_services
from monitor.settings import Settings, SettingsError, ignored_settings_text, load_settings, without_password
from monitor.store.schema import StoreError

log = logging.getLogger("flowerbed")


def settings_or_exit(argv) -> Settings:
    try:
        return load_settings(argv, os.environ)
    except SettingsError as exc:
        print(f"flowerbed: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def or_exit(build, settings: Settings):
    """build(settings), or a one-line error and exit status 2 when the store cannot be used."""
    try:
        return build(settings)
    except (sqlite3.Error, OSError, StoreError) as exc:
        print(f"flowerbed: error: cannot use --db {without_password(settings.db)!r}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_or_exit(sys.argv[1:] if argv is None else argv)
    if ignored := ignored_settings_text(settings):
        log.warning("%s", ignored)
    if settings.command == "collect":
        collect(settings)
    else:
        import app  # the pages: Dash, plotly, pandas, which the collector does without

        app.serve(settings)


def collect(settings: Settings) -> None:
    """`flowerbed collect`: the collector and the inspector, no web server, until SIGTERM or Ctrl-C;
    then what the collector holds is written and its lease handed over."""
    services = or_exit(build_services, settings)
    status = serve_collector_status(services, settings.address, settings.port) if settings.port else None
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    services.start()
    log.info("Flowerbed collector: broker %s, store %s%s", brokers_shown(settings), without_password(settings.db),
             f", status on http://{settings.address}:{settings.port}/healthcheck/ready" if status else "")
    stopping.wait()
    log.info("stopping: writing what the collector holds")
    services.stop()
    if status is not None:
        status.shutdown()


def brokers_shown(settings: Settings) -> str:
    """The broker's URL without its password; with several, each one's name and URL."""
    brokers = settings.named_brokers
    if len(brokers) == 1:
        return without_password(brokers[0][1])
    return ", ".join(f"{name} = {without_password(url)}" for name, url in brokers)


if __name__ == "__main__":
    main()
