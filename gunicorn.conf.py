"""Read by gunicorn from the working directory, so the Procfile's command gets it too."""

# gunicorn's control socket lives at one path per user: two monitors on a host would fight over it.
control_socket_disable = True
# Health checks in a lane of their own, and clients that cannot hold a thread forever (see the module).
worker_class = "monitor.serving.gunicorn_worker.HealthFirstWorker"


def on_starting(server):
    """Refuse to listen beyond loopback without auth, as the CLI does."""
    import sys

    from monitor.settings import SettingsError, check_exposure, load_settings

    try:
        settings = load_settings([])
        for bind in server.cfg.bind:
            check_exposure(settings, bind.rsplit(":", 1)[0] if ":" in bind else bind)
    except SettingsError as exc:
        print(f"flowerbed: error: {exc}", file=sys.stderr)
        sys.exit(2)


def post_worker_init(worker):
    """Start the collector and inspector in the worker: threads started before the fork would
    not survive it."""
    import app

    app.start_services(app.server)


def worker_exit(server, worker):
    """Stop them cleanly: the collector writes what it holds and hands its lease over at once."""
    import app

    app.stop_services(app.server)
