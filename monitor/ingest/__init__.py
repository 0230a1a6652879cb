"""Ingest: events from the broker into the store. `receiving` decodes events (in a process of its own
on a real broker), `collector` merges them with celery's rules and writes batches, `inspector` asks
the workers what events do not say; `incident` logs what goes wrong without flooding the log."""
