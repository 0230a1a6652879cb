"""CSV downloads (the audit log, the tasks a search matches): one writer, streamed a line at a time.

Raw values, so that a spreadsheet can compute with them: numbers as numbers (seconds for
durations), times in ISO 8601 UTC to the millisecond, structures as JSON. One header row. Text a
spreadsheet would run as a formula (a first character of = + - @ tab or carriage return: a task
named =HYPERLINK(...), an exception =cmd|...) gets a leading ' (OWASP's advice), as the Analytics
grids' downloads do in the browser (assets/dashAgGridFunctions.js flowerbedCsvText).
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import re
from typing import Iterable, Iterator, Sequence

_FORMULA_START = re.compile(r"^[=+\-@\t\r]")
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9_._=-]+")
MAX_FILE_NAME = 150


def iso_utc(epoch: float | None) -> str | None:
    """Epoch seconds as '2026-11-24T10:30:05.123Z'; None stays None (an empty cell)."""
    if epoch is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


def csv_cell(value) -> str | int | float:
    """A value as its cell: numbers as they are, text made safe from formulas, the rest as JSON."""
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return "'" + text if _FORMULA_START.match(text) else text


def csv_lines(header: Sequence[str], rows: Iterable[Sequence]) -> Iterator[str]:
    """The header, then each row (its values through csv_cell), a line of CSV at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells) -> str:
        writer.writerow(cells)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    yield line(header)
    for row in rows:
        yield line([csv_cell(value) for value in row])


def file_name(kind: str, filters: Sequence[tuple[str, str]]) -> str:
    """'flowerbed-tasks_state-FAILURE_search-name-tasks.add.csv': what the file holds and which filters
    chose it (the empty ones left out), in characters every file system and header takes."""
    parts = [f"flowerbed-{kind}"] + [f"{name}-{value}" for name, value in filters if value]
    stem = _UNSAFE_IN_FILE_NAME.sub("-", "_".join(parts)).strip("-")
    return stem[:MAX_FILE_NAME] + ".csv"
