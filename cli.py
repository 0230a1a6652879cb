"""The `flowerbed` command: Settings from the flags and the environment, then the collector alone
(`flowerbed collect`, which never loads the pages: Dash, plotly and pandas cost it ~70 MB) or the
web server of app.py (`flowerbed`, `flowerbed web`)."""
from __future__ import annotations

import logging
import signal
import sys
import threading

from monitor.serving.health import serve_collector_status
from monitor.services import build_services
from monitor.settings import Settings, ignored_settings_text, without_password
from monitor.startup import brokers_shown, or_exit, settings_or_exit

log = logging.getLogger("flowerbed")


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


if __name__ == "__main__":
    main()
