"""COPY ... TO STDOUT of masked data, served from a SELECT.

A COPY row carries no RowDescription, so the masking plan cannot be told
which column a field is. On a connection with column rules, a COPY that
reads a masked table is therefore run as the equivalent SELECT: the rows
come back with their RowDescription, are masked like any result, and the
gateway writes them to the client as the COPY would have (CopyOutResponse,
one CopyData per row in the requested text or CSV format, CopyDone,
CommandComplete "COPY n").

Only what can be reproduced exactly is translated: the simple-query
protocol, FORMAT text or csv with DELIMITER, NULL, HEADER, QUOTE, ESCAPE
and FORCE_QUOTE (new and old option syntax). Anything else (binary,
ENCODING, an unparsable statement) is refused as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import Token, TokenType
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import SqlglotError


@dataclass(frozen=True)
class CopyOut:
    #: The SELECT whose rows the COPY writes.
    select: str
    csv: bool = False
    delimiter: str = "\t"
    null: str = "\\N"
    header: bool = False
    quote: str = '"'
    escape: str = '"'
    #: FORCE_QUOTE: column names, or None for every column (``*``).
    force_quote: frozenset[str] | None = field(default_factory=frozenset)


class NotTranslatable(ValueError):
    """The COPY cannot be served from a SELECT; the reason says why."""


_NAME_TOKENS = (TokenType.VAR, TokenType.IDENTIFIER)
_STRINGS = (TokenType.STRING, TokenType.BYTE_STRING, TokenType.NATIONAL_STRING)


def parse(sql: str) -> CopyOut:
    """The SELECT and format options of ``COPY target TO STDOUT [options]``."""
    try:
        tokens = [t for t in Postgres().tokenize(sql) if t.token_type != TokenType.SEMICOLON]
    except (SqlglotError, ValueError) as e:
        raise NotTranslatable(f"unreadable COPY: {e}") from None
    reader = _Reader(sql, tokens)
    reader.keyword("COPY")
    select = reader.target()
    reader.keyword("TO")
    reader.keyword("STDOUT")
    options = reader.options()
    if not reader.done():
        raise NotTranslatable("unexpected text after the COPY options")
    return _with_options(select, options)


class _Reader:
    def __init__(self, sql: str, tokens: list[Token]) -> None:
        self.sql = sql
        self.tokens = tokens
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.tokens)

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> Token:
        token = self.peek()
        if token is None:
            raise NotTranslatable("COPY statement ends early")
        self.pos += 1
        return token

    def is_word(self, *words: str) -> bool:
        token = self.peek()
        return (
            token is not None
            and token.token_type != TokenType.IDENTIFIER
            and (token.text.upper() in words)
        )

    def keyword(self, word: str) -> None:
        if not self.is_word(word):
            raise NotTranslatable(f"expected {word}")
        self.pos += 1

    def name(self) -> str:
        token = self.next()
        if token.token_type == TokenType.IDENTIFIER:
            return '"' + token.text.replace('"', '""') + '"'
        if not token.text.replace("_", "").isalnum():
            raise NotTranslatable(f"not a name: {token.text!r}")
        return token.text

    def target(self) -> str:
        """The SELECT a COPY target stands for."""
        token = self.peek()
        if token is not None and token.token_type == TokenType.L_PAREN:
            start = self.next().end + 1
            depth = 1
            while depth:
                inner = self.next()
                if inner.token_type == TokenType.L_PAREN:
                    depth += 1
                elif inner.token_type == TokenType.R_PAREN:
                    depth -= 1
            return self.sql[start : self.tokens[self.pos - 1].start]
        table = self.name()
        while (dot := self.peek()) is not None and dot.token_type == TokenType.DOT:
            self.pos += 1
            table += "." + self.name()
        columns = "*"
        paren = self.peek()
        if paren is not None and paren.token_type == TokenType.L_PAREN:
            self.pos += 1
            names = [self.name()]
            while (t := self.next()).token_type == TokenType.COMMA:
                names.append(self.name())
            if t.token_type != TokenType.R_PAREN:
                raise NotTranslatable("bad column list")
            columns = ", ".join(names)
        # "COPY table TO copies the same rows as SELECT * FROM ONLY table"
        # (the COPY reference page): not the rows of child tables.
        return f"SELECT {columns} FROM ONLY {table}"

    def string(self) -> str:
        token = self.next()
        if token.token_type not in _STRINGS:
            raise NotTranslatable("expected a string")
        return token.text

    def options(self) -> dict[str, object]:
        options: dict[str, object] = {}
        if self.is_word("WITH"):
            self.pos += 1
        token = self.peek()
        if token is not None and token.token_type == TokenType.L_PAREN:
            self.pos += 1
            while True:
                self.option(options)
                t = self.next()
                if t.token_type == TokenType.R_PAREN:
                    return options
                if t.token_type != TokenType.COMMA:
                    raise NotTranslatable("bad option list")
        while not self.done():  # the old syntax
            self.legacy_option(options)
        return options

    def option(self, options: dict[str, object]) -> None:
        name = self.next().text.upper()
        if name == "FORMAT":
            options["format"] = self.next().text.lower()
        elif name in ("DELIMITER", "NULL", "QUOTE", "ESCAPE"):
            options[name.lower()] = self.string()
        elif name == "HEADER":
            options["header"] = self.boolean()
        elif name == "FORCE_QUOTE":
            options["force_quote"] = self.columns()
        else:
            raise NotTranslatable(f"COPY option {name} is not supported with masking")

    def boolean(self) -> bool:
        token = self.peek()
        if token is None or token.token_type in (TokenType.COMMA, TokenType.R_PAREN):
            return True
        value = self.next().text.lower()
        if value in ("true", "on", "1"):
            return True
        if value in ("false", "off", "0"):
            return False
        raise NotTranslatable(f"HEADER {value} is not supported with masking")

    def columns(self) -> frozenset[str] | None:
        token = self.next()
        if token.token_type == TokenType.STAR:
            return None
        if token.token_type != TokenType.L_PAREN:
            self.pos -= 1
            return frozenset({self.bare_name()})
        names = {self.bare_name()}
        while (t := self.next()).token_type == TokenType.COMMA:
            names.add(self.bare_name())
        if t.token_type != TokenType.R_PAREN:
            raise NotTranslatable("bad FORCE_QUOTE list")
        return frozenset(names)

    def bare_name(self) -> str:
        token = self.next()
        if token.token_type == TokenType.IDENTIFIER:
            return token.text
        if token.token_type not in _NAME_TOKENS and not token.text.isidentifier():
            raise NotTranslatable(f"not a column name: {token.text!r}")
        return token.text.lower()

    def legacy_option(self, options: dict[str, object]) -> None:
        word = self.next().text.upper()
        if word in ("DELIMITER", "NULL", "QUOTE", "ESCAPE"):
            if self.is_word("AS"):
                self.pos += 1
            options[word.lower()] = self.string()
        elif word == "CSV":
            options["format"] = "csv"
        elif word == "HEADER":
            options["header"] = True
        elif word == "FORCE":
            self.keyword("QUOTE")
            names = [self.bare_name()] if not self.is_word("*") else None
            if names is None:
                self.pos += 1
                options["force_quote"] = None
                return
            while (t := self.peek()) is not None and t.token_type == TokenType.COMMA:
                self.pos += 1
                names.append(self.bare_name())
            options["force_quote"] = frozenset(names)
        else:
            raise NotTranslatable(f"COPY option {word} is not supported with masking")


def _with_options(select: str, options: dict[str, object]) -> CopyOut:
    fmt = options.get("format", "text")
    if fmt not in ("text", "csv"):
        raise NotTranslatable(f"FORMAT {fmt} cannot be masked")
    csv = fmt == "csv"
    delimiter = str(options.get("delimiter", "," if csv else "\t"))
    quote = str(options.get("quote", '"'))
    escape = str(options.get("escape", quote))
    null = str(options.get("null", "" if csv else "\\N"))
    force_quote = options.get("force_quote", frozenset())
    assert force_quote is None or isinstance(force_quote, frozenset)
    if len(delimiter) != 1 or len(quote) != 1 or len(escape) != 1:
        raise NotTranslatable("DELIMITER, QUOTE and ESCAPE must be single characters")
    if not csv and ("quote" in options or "escape" in options or "force_quote" in options):
        raise NotTranslatable("QUOTE, ESCAPE and FORCE_QUOTE need CSV")
    return CopyOut(
        select,
        csv=csv,
        delimiter=delimiter,
        null=null,
        header=bool(options.get("header", False)),
        quote=quote,
        escape=escape,
        force_quote=force_quote,
    )


# -- writing rows as PostgreSQL's COPY TO does (copyto.c) ----------------------

_TEXT_ESCAPES = {
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def line(copy: CopyOut, values: list[str | None], names: list[str]) -> str:
    """One row as a COPY line (with its newline)."""
    if copy.csv:
        single = len(values) == 1
        fields = [
            copy.null if v is None else _csv_field(copy, v, _forced(copy, name), single)
            for v, name in zip(values, names, strict=True)
        ]
    else:
        fields = [copy.null if v is None else _text_field(copy, v) for v in values]
    return copy.delimiter.join(fields) + "\n"


def header(copy: CopyOut, names: list[str]) -> str:
    if copy.csv:
        single = len(names) == 1
        return copy.delimiter.join(_csv_field(copy, n, False, single) for n in names) + "\n"
    return copy.delimiter.join(_text_field(copy, n) for n in names) + "\n"


def _forced(copy: CopyOut, name: str) -> bool:
    return copy.force_quote is None or name in copy.force_quote


def _text_field(copy: CopyOut, value: str) -> str:
    out = []
    for ch in value:
        if ch in _TEXT_ESCAPES:
            out.append(_TEXT_ESCAPES[ch])
        elif ch == copy.delimiter:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _csv_field(copy: CopyOut, value: str, force: bool, single: bool) -> str:
    quote = (
        force
        or value == copy.null
        # "\." alone on a line would end the data.
        or (single and value == "\\.")
        or any(ch in (copy.delimiter, copy.quote, "\n", "\r") for ch in value)
    )
    if not quote:
        return value
    body = "".join(copy.escape + ch if ch in (copy.quote, copy.escape) else ch for ch in value)
    return copy.quote + body + copy.quote
