"""The store, the one source of truth: `schema` says what every backend holds, `sqlite` is the
embedded backend, `rollup` keeps the analytics rollups inside it."""
