"""The task search language, compiled to a SQL condition.

    failed                       free text in name, uuid, worker, args, kwargs, result, exception
    name:tasks.add state:FAILURE qualifiers (Flower's names): name uuid state worker args kwargs
                                 result exception; several terms mean AND
    kwargs:user_id=42            a keyword argument's value, as Flower matches it
    state:FAILURE OR state:RETRY AND/OR (either case), NOT or a leading '-', parentheses
    "connection reset"           quotes keep spaces (and colons) in one term
    received>=2026-11-25T10:00   comparisons (>= > <= <) on the times received, started, sent,
    finished<2026-11-25T10:05    finished (UTC date/time or epoch seconds) and runtime (seconds):
    runtime>2.5                  what a drill-down from the Analytics page writes
    name=shop.checkout           exactly this name (or worker=celery@host, queue=celery: the routing key),
                                 where name: matches a part
    broker:eu                    recorded from the broker named eu (broker=eu too: a name matches whole)
    lost:yes                     left STARTED by a worker that has started again since (lost:no, the others)

`compile_search` raises SearchError with a message fit to show next to the search box.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re

from celery import states

from monitor.store.dialect import SQLITE, Dialect, like_escaped
from monitor.store.rollup import FINAL_STATES, finished_sql
from monitor.store.schema import LOST_SQL, TEXT_COLUMNS

# The language by example, as the Tasks page's search help lists it: (what to type, what it finds).
EXAMPLES = (
    ("failed", "free text, in name, uuid, worker, args, kwargs, result and exception"),
    ("name:tasks.add state:FAILURE", "a field (name uuid state worker args kwargs result exception); "
                                     "several terms must all match"),
    ("name=shop.checkout", "exactly this name (worker=celery@host and queue=celery too), where name: matches a part"),
    ("kwargs:user_id=42", "a keyword argument's value"),
    ("state:FAILURE OR state:RETRY", "either; AND, NOT or a leading -, and (parentheses) combine terms"),
    ("-state:SUCCESS", "every task that did not succeed"),
    ('"connection reset"', "quotes keep spaces and colons in one term"),
    ("received>=2026-11-25T10:00", "times compared with >= > <= < (UTC, or epoch seconds): received, started, "
                                   "sent, finished"),
    ("runtime>2.5", "runtime in seconds"),
    ("broker:eu", "recorded from the broker named eu"),
    ("lost:yes", "left started by a worker that has restarted since: it will not finish"),
)

FIELDS = ("name", "uuid", "state", "worker", "args", "kwargs", "result", "exception", "broker", "lost")
FREE_TEXT_COLUMNS = TEXT_COLUMNS  # name uuid worker args kwargs result exception, indexed by trigrams
KNOWN_STATES = tuple(sorted(states.ALL_STATES))

# Column (or expression) each comparable field means; `finished` only for tasks in a final state.
COMPARABLE = {
    "received": "received", "started": "started", "sent": "sent", "runtime": "runtime",
    "finished": f"(CASE WHEN state IN ({', '.join(repr(s) for s in FINAL_STATES)}) THEN {finished_sql()} END)",
}
EXACT = ("name", "worker", "broker", "queue")
# The column an exact field matches, where it is not the field's name: a task's queue is its routing key.
EXACT_COLUMNS = {"queue": "routing_key"}
_COMPARISON = re.compile(r"([A-Za-z_]+)(>=|<=|>|<|=)(.*)", re.S)
_TOKEN = re.compile(r'\s*(?:(\()|(\))|("(?:[^"\\]|\\.)*"?)|((?:[^\s()"]|"(?:[^"\\]|\\.)*"?)+))')


class SearchError(ValueError):
    """A query that cannot be understood; the message says what is wrong, `position` where (the
    0-based index of the character in the query it points at, None when no one place is wrong)."""

    def __init__(self, message: str, position: int | None = None):
        super().__init__(message)
        self.position = position


@dataclasses.dataclass(frozen=True)
class Term:
    field: str | None  # None: free text
    value: str


@dataclasses.dataclass(frozen=True)
class Compare:
    field: str  # a key of COMPARABLE, or one of EXACT with op '='
    op: str  # >=, >, <=, <, =
    value: float | str  # epoch seconds, seconds for runtime, the text for '=' 


@dataclasses.dataclass(frozen=True)
class Not:
    operand: object


@dataclasses.dataclass(frozen=True)
class BoolOp:
    op: str  # "AND" or "OR"
    operands: tuple


def _unquote(text: str) -> str:
    if len(text) < 2 or not text.endswith('"') or text.endswith('\\"') and not text.endswith('\\\\"'):
        raise SearchError(f"unclosed quote in {text}")
    return re.sub(r'\\(.)', r'\1', text[1:-1])


def _tokens(query: str) -> list[tuple[str, object, int]]:
    """(kind, value, where the token starts in `query`); an error in a token points at its start."""
    tokens, position = [], 0
    while position < len(query):
        match = _TOKEN.match(query, position)
        if not match or match.end() == position:
            break
        position = match.end()
        start = match.start(match.lastindex)
        open_paren, close_paren, quoted, word = match.groups()
        try:
            if open_paren:
                kind, value = "(", "("
            elif close_paren:
                kind, value = ")", ")"
            elif quoted is not None:
                kind, value = "TERM", Term(None, _unquote(quoted))
            elif word == "-" and query.startswith("(", position):  # -(…) negates a group, as NOT (…)
                kind, value = "NOT", "NOT"
            else:
                kind, value = _word(word)
        except SearchError as exc:
            raise SearchError(str(exc), start) from None
        tokens.append((kind, value, start))
    return tokens


def _word(word: str) -> tuple[str, object]:
    if word in ("AND", "and", "OR", "or", "NOT", "not"):
        return word.upper(), word.upper()
    negate = word.startswith("-") and len(word) > 1
    if negate:
        word = word[1:]
    compared = _COMPARISON.fullmatch(word)
    field = compared.group(1).lower() if compared else None
    if field in COMPARABLE and compared.group(2) != "=" or field in EXACT and compared.group(2) == "=":
        op, text = compared.group(2), compared.group(3)
        if op == "=":
            value = _unquote(text) if text.startswith('"') else text
            if not value:
                raise SearchError(f"'{field}=' needs a value, e.g. {field}={_EXAMPLES[field]}")
            term = Compare(field, op, value)
        else:
            term = Compare(field, op, _comparison_value(field, text))
        return ("NEG", term) if negate else ("TERM", term)
    field, sep, value = word.partition(":")
    if sep and re.fullmatch(r"[A-Za-z_]+", field):
        field = field.lower()
        if field not in FIELDS:
            raise SearchError(f"unknown field '{field}:' (use {', '.join(f + ':' for f in FIELDS)})")
        if value.startswith('"'):
            value = _unquote(value)
        if not value:
            raise SearchError(f"'{field}:' needs a value, e.g. {field}:{_EXAMPLES[field]}")
        if field == "state":
            _states(value)  # an unknown state is an error here, where its position is known
        if field == "lost" and value.lower() not in ("yes", "no"):
            raise SearchError(f"'lost:' is yes or no, not {value!r}")
        term = Term(field, value)
    else:
        term = Term(None, _unquote(word) if word.startswith('"') else word)
    return ("NEG", term) if negate else ("TERM", term)


def _states(value: str) -> list[str]:
    wanted = [s.strip().upper() for s in value.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in KNOWN_STATES]
    if unknown:
        raise SearchError(f"unknown state {unknown[0]} (known: {', '.join(KNOWN_STATES)})")
    return wanted


def parse_moment(text: str, local: bool = False) -> float:
    """Epoch seconds, or an ISO date/time such as 2026-11-24 or 2026-11-24T10:30 (UTC unless it says,
    or in the server's time zone when `local`).

    Raises ValueError, also for a moment no date can show (nan, inf, 1e20): the pages format the
    moments they are given, and an OverflowError there would fail the whole callback."""
    try:
        epoch = float(text)
    except ValueError:
        moment = dt.datetime.fromisoformat(text.strip().replace(" ", "T", 1))
        if moment.tzinfo is None and not local:  # a naive datetime's timestamp() reads it as local time
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return moment.timestamp()
    try:
        format_moment(epoch)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{text!r} is out of the range of dates") from None
    return epoch


def format_moment(epoch: float) -> str:
    """The UTC date/time a comparison reads back (parse_moment's inverse, to the second)."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _comparison_value(field: str, text: str) -> float:
    if not text:
        raise SearchError(f"'{field}' needs a value after the comparison, e.g. {field}>={_EXAMPLES[field]}")
    try:
        value = float(text) if field == "runtime" else parse_moment(text)
        if not math.isfinite(value):  # SQLite binds NaN as NULL: runtime>nan would quietly match nothing
            raise ValueError(text)
        return value
    except ValueError:
        expected = "a number of seconds" if field == "runtime" else "a UTC date/time such as 2026-11-25T10:30"
        raise SearchError(f"{field}: expected {expected}, got {text!r}") from None


_EXAMPLES = {"name": "tasks.add", "uuid": "3f2a", "state": "FAILURE", "worker": "celery@host",
             "args": "42", "kwargs": "user_id=42", "result": "None", "exception": "ValueError", "broker": "eu", "lost": "yes", "queue": "celery",
             "received": "2026-11-25T10:00", "started": "2026-11-25T10:00", "sent": "2026-11-25T10:00",
             "finished": "2026-11-25T10:00", "runtime": "2.5"}


class _Parser:
    def __init__(self, tokens, length: int):
        self.tokens, self.position, self.depth, self.length = tokens, 0, 0, length

    def error(self, message: str, back: int = 0) -> SearchError:
        """An error pointing at the next token (or the end of the query), or `back` tokens before it."""
        index = self.position - back
        at = self.tokens[index][2] if index < len(self.tokens) else self.length
        return SearchError(message, at)

    def nested(self, parse_inner):
        self.depth += 1
        if self.depth > MAX_DEPTH:  # points at the '(' or NOT one level too deep
            raise self.error(back=1, message=f"the search nests too deeply: at most {MAX_DEPTH} levels of parentheses and NOT")
        node = parse_inner()
        self.depth -= 1
        return node

    def peek(self):
        return self.tokens[self.position][0] if self.position < len(self.tokens) else None

    def take(self):
        token = self.tokens[self.position]
        self.position += 1
        return token

    def parse(self):
        node = self.or_expr()
        if self.peek() is not None:
            kind = self.peek()
            raise self.error("unmatched ')'" if kind == ")" else f"unexpected {kind}")
        return node

    def or_expr(self):
        operands = [self.and_expr()]
        while self.peek() == "OR":
            self.take()
            operands.append(self.and_expr("OR"))
        return operands[0] if len(operands) == 1 else BoolOp("OR", tuple(operands))

    def and_expr(self, after=None):
        operands = [self.unary(after)]
        while self.peek() not in (None, ")", "OR"):
            if self.peek() == "AND":
                self.take()
                operands.append(self.unary("AND"))
            else:
                operands.append(self.unary())
        return operands[0] if len(operands) == 1 else BoolOp("AND", tuple(operands))

    def unary(self, after=None):
        kind = self.peek()
        if kind == "NOT":
            self.take()
            return Not(self.nested(lambda: self.unary("NOT")))
        if kind == "NEG":
            return Not(self.take()[1])
        if kind == "TERM":
            return self.take()[1]
        if kind == "(":
            self.take()
            if self.peek() == ")":
                raise self.error("empty parentheses")
            node = self.nested(self.or_expr)
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.take()
            return node
        where = f"after {after}" if after else "here"
        found = "the end of the query" if kind is None else f"'{kind}'"
        raise self.error(f"expected a search term {where}, found {found}")


# The parser and SQLite both recurse per nesting level and SQLite caps a statement's size; past
# these limits a query is an error the user can fix, not a crash.
MAX_TOKENS = 200
MAX_DEPTH = 20


# SQLite ends text at a NUL in FTS5 queries and LIKE patterns, cannot encode a lone surrogate
# (it is not Unicode), and refuses LIKE patterns over 50,000 bytes (4 per character at most).
MAX_TEXT_CHARS = 10_000
_UNSEARCHABLE = re.compile("[\0\ud800-\udfff]")


def check_text(text, what: str) -> str:
    """`text` when SQLite can search for it as it is; else a SearchError saying why (`what` names it)."""
    if not isinstance(text, str):
        raise SearchError(f"{what} must be text, not {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise SearchError(f"{what} is too long: at most {MAX_TEXT_CHARS:,} characters")
    bad = _UNSEARCHABLE.search(text)
    if bad:
        kind = "a NUL character" if bad.group() == "\0" else "a lone surrogate (not valid Unicode)"
        raise SearchError(f"{what} contains {kind} at position {bad.start() + 1}, which cannot be searched for",
                          bad.start())
    return text


def parse(query: str):
    """The query's syntax tree, or None for an empty query."""
    tokens = _tokens(check_text("" if query is None else query, "the search"))
    if len(tokens) > MAX_TOKENS:
        raise SearchError(f"the search is too long: at most {MAX_TOKENS} terms, operators and parentheses")
    return _Parser(tokens, len(query)).parse() if tokens else None


def _like(value: str) -> str:
    return "%" + like_escaped(value) + "%"


def _term_sql(term: Term, dialect: Dialect) -> tuple[str, list]:
    field, value, like = term.field, term.value, dialect.like
    if field is None:
        pattern = _like(value)
        return dialect.narrowed("(" + " OR ".join(f"{c} {like} ? ESCAPE '\\'" for c in FREE_TEXT_COLUMNS) + ")",
                                [pattern] * len(FREE_TEXT_COLUMNS), [value])
    if field == "state":
        wanted = _states(value)
        return f"state IN ({', '.join('?' * len(wanted))})", wanted
    if field == "broker":
        return "broker = ?", [value]
    if field == "lost":
        return (LOST_SQL, []) if value.lower() == "yes" else (f"NOT coalesce({LOST_SQL}, false)", [])
    if field == "uuid":
        value = value.lower()
        if re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value):
            return "uuid = ?", [value]
        return dialect.prefix("uuid", value)
    if field == "kwargs" and "=" in value:
        key, _, wanted = (part.strip() for part in value.partition("="))
        # kwargs is a dict's repr: the value must end there too, so user_id=42 does not match 420.
        patterns = (f"'{key}': {wanted},", f"'{key}': {wanted}}}", f"'{key}': '{wanted}'")
        return dialect.narrowed("(" + " OR ".join(f"kwargs {like} ? ESCAPE '\\'" for _ in patterns) + ")",
                                [_like(pattern) for pattern in patterns], [f"'{key}': ", wanted])
    return dialect.narrowed(f"{field} {like} ? ESCAPE '\\'", [_like(value)], [value])


def to_sql(node, dialect: Dialect) -> tuple[str, list]:
    if isinstance(node, Term):
        return _term_sql(node, dialect)
    if isinstance(node, Compare):
        column = EXACT_COLUMNS.get(node.field, node.field) if node.op == "=" else COMPARABLE[node.field]
        return f"{column} {node.op} ?", [node.value]
    if isinstance(node, Not):
        sql, params = to_sql(node.operand, dialect)
        return f"NOT coalesce({sql}, false)", params
    parts = [to_sql(operand, dialect) for operand in node.operands]
    return "(" + f" {node.op} ".join(sql for sql, _ in parts) + ")", [p for _, params in parts for p in params]


def compile_search(query: str, dialect: Dialect = SQLITE) -> tuple[str, list]:
    """SQL condition and parameters for a query in a store's dialect; ('', []) when the query is empty."""
    node = parse(query)
    return to_sql(node, dialect) if node is not None else ("", [])
