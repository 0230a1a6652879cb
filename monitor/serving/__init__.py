"""HTTP without Dash: the JSON API on Flower's routes (`api`), the health checks (`health`), and the
gunicorn worker (`gunicorn_worker`) whose admission control (`admission`) keeps one user from
starving the others."""
