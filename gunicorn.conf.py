"""Read by gunicorn from the working directory (the Procfile's command): starts the collector
and inspector in the worker process, since threads started before the fork would not survive it."""


def post_worker_init(worker):
    import app

    app.start_services(app.server)
