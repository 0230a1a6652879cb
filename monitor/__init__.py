"""Flowerbed's engine: everything that talks to Celery or the store. It never imports Dash."""
