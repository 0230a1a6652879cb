"""The store, the one source of truth: `schema` says what every backend holds, `base` is the
interface they share, `sqlite` the embedded backend and `postgres` the one to scale out on,
`dialect` the SQL they spell differently, `rollup` the analytics rollups kept inside the store."""
from __future__ import annotations

from monitor.store.base import Store


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_store(url: str, **options) -> Store:
    """The store a --db value names: a postgresql:// URL, else a SQLite file path."""
    if is_postgres_url(url):
        from monitor.store.postgres import PostgresStore  # psycopg loads only for those who use it
        return PostgresStore(url, **options)
    from monitor.store.sqlite import SqliteStore
    return SqliteStore(url, **options)


def store_error_text(error: BaseException) -> str:
    """A store failure in one line, as the pages and the API show it."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
