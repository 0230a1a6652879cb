"""The task search language, compiled to a SQL condition.

    failed                       free text in name, uuid, worker, args, kwargs, result, exception
    name:tasks.add state:FAILURE qualifiers (Flower's names): name uuid state worker args kwargs
                                 result exception; several terms mean AND
    kwargs:user_id=42            a keyword argument's value, as Flower matches it
    state:FAILURE OR state:RETRY AND/OR (either case), NOT or a leading '-', parentheses
    "connection reset"           quotes keep spaces (and colons) in one term

`compile_search` raises SearchError with a message fit to show next to the search box.
"""
from __future__ import annotations

import dataclasses
import re

from celery import states

FIELDS = ("name", "uuid", "state", "worker", "args", "kwargs", "result", "exception")
FREE_TEXT_COLUMNS = ("name", "uuid", "worker", "args", "kwargs", "result", "exception")
KNOWN_STATES = tuple(sorted(states.ALL_STATES))

_TOKEN = re.compile(r'\s*(?:(\()|(\))|("(?:[^"\\]|\\.)*"?)|((?:[^\s()"]|"(?:[^"\\]|\\.)*"?)+))')


class SearchError(ValueError):
    """A query that cannot be understood; the message says what is wrong and where."""


@dataclasses.dataclass(frozen=True)
class Term:
    field: str | None  # None: free text
    value: str


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


def _tokens(query: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(query):
        match = _TOKEN.match(query, position)
        if not match or match.end() == position:
            break
        position = match.end()
        open_paren, close_paren, quoted, word = match.groups()
        if open_paren:
            tokens.append(("(", "("))
        elif close_paren:
            tokens.append((")", ")"))
        elif quoted is not None:
            tokens.append(("TERM", Term(None, _unquote(quoted))))
        elif word is not None:
            tokens.append(_word(word))
    return tokens


def _word(word: str) -> tuple[str, object]:
    if word in ("AND", "and", "OR", "or", "NOT", "not"):
        return word.upper(), word.upper()
    negate = word.startswith("-") and len(word) > 1
    if negate:
        word = word[1:]
    field, sep, value = word.partition(":")
    if sep and re.fullmatch(r"[A-Za-z_]+", field):
        field = field.lower()
        if field not in FIELDS:
            raise SearchError(f"unknown field '{field}:' (use {', '.join(f + ':' for f in FIELDS)})")
        if value.startswith('"'):
            value = _unquote(value)
        if not value:
            raise SearchError(f"'{field}:' needs a value, e.g. {field}:{_EXAMPLES[field]}")
        term = Term(field, value)
    else:
        term = Term(None, _unquote(word) if word.startswith('"') else word)
    return ("NEG", term) if negate else ("TERM", term)


_EXAMPLES = {"name": "tasks.add", "uuid": "3f2a", "state": "FAILURE", "worker": "celery@host",
             "args": "42", "kwargs": "user_id=42", "result": "None", "exception": "ValueError"}


class _Parser:
    def __init__(self, tokens):
        self.tokens, self.position = tokens, 0

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
            raise SearchError("unmatched ')'" if kind == ")" else f"unexpected {kind}")
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
            return Not(self.unary("NOT"))
        if kind == "NEG":
            return Not(self.take()[1])
        if kind == "TERM":
            return self.take()[1]
        if kind == "(":
            self.take()
            if self.peek() == ")":
                raise SearchError("empty parentheses")
            node = self.or_expr()
            if self.peek() != ")":
                raise SearchError("missing ')'")
            self.take()
            return node
        where = f"after {after}" if after else "here"
        found = "the end of the query" if kind is None else f"'{kind}'"
        raise SearchError(f"expected a search term {where}, found {found}")


def parse(query: str):
    """The query's syntax tree, or None for an empty query."""
    tokens = _tokens(query or "")
    return _Parser(tokens).parse() if tokens else None


def _like(value: str) -> str:
    return "%" + re.sub(r"([%_\\])", r"\\\1", value) + "%"


def _term_sql(term: Term) -> tuple[str, list]:
    field, value = term.field, term.value
    if field is None:
        pattern = _like(value)
        return "(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in FREE_TEXT_COLUMNS) + ")", [pattern] * len(FREE_TEXT_COLUMNS)
    if field == "state":
        wanted = [s.strip().upper() for s in value.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in KNOWN_STATES]
        if unknown:
            raise SearchError(f"unknown state {unknown[0]} (known: {', '.join(KNOWN_STATES)})")
        return f"state IN ({', '.join('?' * len(wanted))})", wanted
    if field == "uuid":
        value = value.lower()
        if re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", value):
            return "uuid = ?", [value]
        # GLOB is case-sensitive, so SQLite can use the uuid index for the prefix.
        return "uuid GLOB ?", [re.sub(r"([*?\[])", r"[\1]", value) + "*"]
    if field == "kwargs" and "=" in value:
        key, _, wanted = (part.strip() for part in value.partition("="))
        return ("(kwargs LIKE ? ESCAPE '\\' OR kwargs LIKE ? ESCAPE '\\')",
                [_like(f"'{key}': {wanted}"), _like(f"'{key}': '{wanted}'")])
    return f"{field} LIKE ? ESCAPE '\\'", [_like(value)]


def to_sql(node) -> tuple[str, list]:
    if isinstance(node, Term):
        return _term_sql(node)
    if isinstance(node, Not):
        sql, params = to_sql(node.operand)
        return f"NOT coalesce({sql}, 0)", params
    parts = [to_sql(operand) for operand in node.operands]
    return "(" + f" {node.op} ".join(sql for sql, _ in parts) + ")", [p for _, params in parts for p in params]


def compile_search(query: str) -> tuple[str, list]:
    """SQL condition and parameters for a query; ('', []) when the query is empty."""
    node = parse(query)
    return to_sql(node) if node is not None else ("", [])
