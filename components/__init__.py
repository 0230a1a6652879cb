"""Layout builders: pure functions from data to Dash components (no callbacks, no I/O)."""
