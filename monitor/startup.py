"""What a starting process (the `flowerbed` command, gunicorn's `app:server`) does when its settings
or its store cannot be used: a one-line error and exit status 2, never a stack trace."""
from __future__ import annotations

import os
import sqlite3
import sys

from monitor.settings import Settings, SettingsError, load_settings, without_password
from monitor.store.schema import StoreError


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


def brokers_shown(settings: Settings) -> str:
    """The broker's URL without its password; with several, each one's name and URL."""
    brokers = settings.named_brokers
    if len(brokers) == 1:
        return without_password(brokers[0][1])
    return ", ".join(f"{name} = {without_password(url)}" for name, url in brokers)
