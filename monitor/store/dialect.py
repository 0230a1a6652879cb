"""The SQL that differs between the store backends, in one place.

The query layer (search, task lists, analytics) writes its SQL once with `?` placeholders and asks a
store's `dialect` for the few pieces SQLite and PostgreSQL spell differently: the text index, case
folding, NULL order, a few functions. Each backend's own schema lives with the backend.
"""
from __future__ import annotations

import re

from monitor.store.schema import TEXT_COLUMNS

# Trigrams a SQLite search looks up in its text index (see Dialect.narrowed).
_TRIGRAMS_LOOKED_UP = 3


def like_escaped(text: str) -> str:
    """`text` as a LIKE pattern matches it literally (with ESCAPE '\\')."""
    return re.sub(r"([%_\\])", r"\\\1", text)


def rarest_trigrams(substrings) -> list[str]:
    """The few trigrams of the substrings a text index should look up: those with the most digits.

    Each trigram looked up costs a read of every row holding it, and in task data letters and
    punctuation spell what most rows share (names, keys, the `cust-0` of every customer id) while
    digits make ids and numbers: at 1M tasks on PostgreSQL, `cust-04217` took 8.7 ms with `-04`
    among its trigrams, 2.3 ms with its three all-digit ones (a fourth trigram, `t-0`, added 1 ms)."""
    trigrams = dict.fromkeys(text[i:i + 3] for text in substrings for i in range(len(text) - 2))
    return sorted(trigrams, key=lambda trigram: sum(not char.isdigit() for char in trigram))[:_TRIGRAMS_LOOKED_UP]


class Dialect:
    """SQLite's spelling (FTS5 trigram index, LIKE folding ASCII case, NULLs first ascending)."""
    name = "sqlite"
    like = "LIKE"
    greatest = "max"
    least = "min"
    integer, real, text, without_rowid = "INTEGER", "REAL", "TEXT", " WITHOUT ROWID"
    clock = "julianday('now')"  # a moment, as the rollup inbox stamps its rows

    def seconds_since(self, moment: str) -> str:
        return f"(julianday('now') - {moment}) * 86400"

    def floor_to(self, epoch: str, seconds: int) -> str:
        """The start of the `seconds`-long bucket holding `epoch` (CAST truncates in SQLite)."""
        return f"CAST({epoch} / {seconds} AS INTEGER) * {seconds}"

    def indexed_by(self, index: str) -> str:
        """A hint naming the index a query should read (SQLite's planner picks badly there)."""
        return f"INDEXED BY {index}"

    def order(self, column: str, descending: bool, nulls_last: bool = False) -> str:
        """SQLite's own NULL order (first ascending, last descending), or NULLs last both ways."""
        if nulls_last and not descending:
            return f"{column} ASC NULLS LAST"
        return f"{column} {'DESC' if descending else 'ASC'}"

    def prefix(self, column: str, prefix: str) -> tuple[str, list]:
        """`column` starts with `prefix`, case-sensitively, so that the column's index serves it."""
        return f"{column} GLOB ?", [re.sub(r"([*?\[])", r"[\1]", prefix) + "*"]

    def distinct_list(self, expression: str) -> str:
        """The distinct values of a group, joined by commas."""
        return f"group_concat(DISTINCT {expression})"

    def latest(self, value: str, when: str) -> str:
        """The `value` of a group's row with the highest `when` (an epoch; 10 digits until 2286)."""
        return f"substr(max(printf('%.6f', {when}) || ' ' || {value}), 19)"

    def narrowed(self, sql: str, params: list, substrings) -> tuple[str, list]:
        """`sql` (LIKE conditions, the exact rule) on the tasks the text index says may match.

        The FTS5 index (no positions) narrows the rows to those holding some trigrams of the
        substrings, in any indexed column; it folds case at least as widely as LIKE, so it never
        drops a row LIKE keeps. Shorter than a trigram, a substring cannot be looked up: `sql` scans
        alone. Only the rarest trigrams are looked up (at 1M tasks, all the trigrams of cust-04217
        took ~130 ms, its four digit-heavy ones a few ms)."""
        rarest = rarest_trigrams(substrings)
        if not rarest:
            return sql, params
        match = " AND ".join('"' + trigram.replace('"', '""') + '"' for trigram in rarest)
        return f"(seq IN (SELECT rowid FROM tasks_text WHERE tasks_text MATCH ?) AND {sql})", [match, *params]


# PostgreSQL indexes the text columns joined into one value: one GIN index to keep up to date per
# write, not seven. A match spanning two columns only widens what the exact LIKE rule then checks.
PG_TEXT_EXPRESSION = " || chr(31) || ".join(f"coalesce({column}, '')" for column in TEXT_COLUMNS)


class PostgresDialect(Dialect):
    """PostgreSQL's spelling: a pg_trgm GIN index, ILIKE, NULLs placed as SQLite places them."""
    name = "postgresql"
    like = "ILIKE"
    greatest = "greatest"
    least = "least"
    # Byte order, as SQLite sorts: the same rows in the same order on both stores.
    integer, real, text, without_rowid = "bigint", "double precision", 'text COLLATE "C"', ""
    clock = "extract(epoch from now())"

    def seconds_since(self, moment: str) -> str:
        return f"extract(epoch from now()) - {moment}"

    def floor_to(self, epoch: str, seconds: int) -> str:
        return f"floor({epoch} / {seconds})::bigint * {seconds}"

    def indexed_by(self, index: str) -> str:
        return ""

    def order(self, column: str, descending: bool, nulls_last: bool = False) -> str:
        if column == "seq":  # never NULL; a NULLS clause would keep the planner off the indexes' seq order
            return f"seq {'DESC' if descending else 'ASC'}"
        return f"{column} {'DESC NULLS LAST' if descending else 'ASC NULLS LAST' if nulls_last else 'ASC NULLS FIRST'}"

    def prefix(self, column: str, prefix: str) -> tuple[str, list]:
        return f"{column} LIKE ?", [like_escaped(prefix) + "%"]

    def distinct_list(self, expression: str) -> str:
        return f"string_agg(DISTINCT {expression}, ',')"

    def latest(self, value: str, when: str) -> str:
        return f"(array_agg({value} ORDER BY {when} DESC))[1]"

    def narrowed(self, sql: str, params: list, substrings) -> tuple[str, list]:
        """`sql` on the tasks whose joined text holds the rarest trigrams of the substrings (as on
        SQLite, and for the same reason: a common trigram's list is long to read); without a
        trigram (a substring of one or two characters) `sql` scans alone."""
        rarest = rarest_trigrams(substrings)
        if not rarest:
            return sql, params
        patterns = ["%" + like_escaped(trigram) + "%" for trigram in rarest]
        index = " AND ".join(f"({PG_TEXT_EXPRESSION}) ILIKE ?" for _ in patterns)
        return f"({index} AND {sql})", [*patterns, *params]


SQLITE = Dialect()
POSTGRES = PostgresDialect()
