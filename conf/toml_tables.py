"""TOML parsed one top-level table at a time, and a table line by line, reusing what
did not change since the last document.

A reload (SIGHUP) re-reads a file of which usually little changed, and `tomllib`, pure
Python, was most of its cost: some 170 us per peer, a fifth of what the initiator spent
per SA when 100 were set up by one reload. `TomlTables.loads` splits the text before
every line that opens with ``[`` and keeps the last document's pieces by their text, so
an unchanged ``[peers.NAME]`` is not parsed again. A piece that changed is read line by
line when each line is a bare key and a one-line value (or blank, or a comment): each
distinct line is parsed once, and most lines recur from table to table and from one
document to the next.

The result must be what ``tomllib.loads`` gives for the whole text, or its error. The
pieces are merged only when that is certain, else the whole text is parsed:

- Every piece after the first opens with a standard table header (not ``[[``) and
  defines nothing outside that table (an indented header inside it would).
- No header's key path equals another's or starts with another's: each table is then
  defined exactly once and no two pieces write into the same table (TOML 1.0 §Table).
- The keys before the first header name none of the headers' first keys.
- A piece that is not valid TOML on its own (a split inside a multi-line string or
  array leaves one piece unterminated) sends the whole text to ``tomllib``, which also
  gives a broken file its error with the right line number. A piece is parsed as a
  whole when one of its lines is not that simple or a key repeats.

The tables and values handed out are shared, with the next documents and between
tables with the same line: callers must not change them (`conf.load.parse_config`
only reads).
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass
from typing import Any

_PIECE_START = re.compile(r"^(?=\[)", re.MULTILINE)
"""Before every line that opens with ``[``: a table header, or a line inside a
multi-line value (then one piece fails to parse and the whole text is parsed)."""

_BARE_HEADER = re.compile(
    r"\[[ \t]*([A-Za-z0-9_-]+(?:[ \t]*\.[ \t]*[A-Za-z0-9_-]+)*)[ \t]*\]"
    r"[ \t]*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?"
)
"""A table header of bare keys (TOML 1.0 §Keys), the usual kind, and maybe a comment
(no control characters but tab): its path is read without tomllib."""


@dataclass(frozen=True, slots=True)
class _Table:
    """One parsed piece: a table header and what follows it up to the next one."""

    path: tuple[str, ...]
    """The header's key path (``[peers."a.b"]`` gives ``("peers", "a.b")``)."""
    body: dict[str, Any]
    """The table's contents, as ``tomllib`` parsed them."""


class _Whole(Exception):
    """The pieces cannot be merged safely: parse the whole text."""


class TomlTables:
    """Parses TOML documents, reusing the tables of the last one (see the module)."""

    def __init__(self) -> None:
        self._last: dict[str, _Table] = {}
        """The last merged document's pieces by their text."""
        self._last_lines: dict[str, _Line] = {}
        """The lines parsed alone for the last merged document, by their text."""
        self.reused = 0
        """How many tables the last `loads` took from the document before it."""

    def loads(self, text: str) -> dict[str, Any]:
        """What ``tomllib.loads(text)`` returns; raises its ``TOMLDecodeError``."""
        preamble, *pieces = _PIECE_START.split(text)
        try:
            root, tables, reused = self._pieces(preamble, pieces)
        except _Whole:
            return tomllib.loads(text)
        self._last = tables
        self.reused = reused
        return root

    def _pieces(
        self, preamble: str, pieces: list[str]
    ) -> tuple[dict[str, Any], dict[str, _Table], int]:
        root = _parse(preamble)
        lines: dict[str, _Line] = {}
        tables: dict[str, _Table] = {}
        order: list[_Table] = []
        reused = 0
        for piece in pieces:
            table = self._last.get(piece)
            if table is None:
                table = _table(piece, self._last_lines, lines)
            else:
                reused += 1
            tables[piece] = table
            order.append(table)
        paths = sorted(table.path for table in order)
        for shorter, longer in itertools.pairwise(paths):
            # Sorted, a path that starts another sorts right before it or before one
            # that also starts with it: neighbours suffice.
            if longer[: len(shorter)] == shorter:
                raise _Whole
        if any(path[0] in root for path in paths):
            raise _Whole
        for table in order:
            node = root
            for key in table.path[:-1]:
                node = node.setdefault(key, {})
            node[table.path[-1]] = table.body
        self._last_lines = lines
        return root, tables, reused


def _header_path(header: str) -> list[str]:
    """The key path of a header line with quoted keys, as tomllib reads it."""
    path: list[str] = []
    node: Any = _parse(header)
    while isinstance(node, dict) and len(node) == 1:
        key = next(iter(node))
        path.append(key)
        node = node[key]
    if not path or node != {}:
        raise _Whole
    return path


def _parse(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise _Whole from None


def _lines(piece: str) -> list[str]:
    """The piece's lines without their line ends (LF, or CRLF: a CR is dropped only
    where an LF follows it, as TOML reads it)."""
    *ended, last = piece.split("\n")
    return [line[:-1] if line.endswith("\r") else line for line in ended] + [last]


def _table(piece: str, known: dict[str, _Line], seen: dict[str, _Line]) -> _Table:
    """Parse one piece that opens with a table header: line by line when every line
    is a bare key and a one-line value (or blank, or a comment), else as a whole."""
    if piece.startswith("[["):
        raise _Whole  # arrays of tables append across pieces: leave them to tomllib
    lines = _lines(piece)
    bare = _BARE_HEADER.fullmatch(lines[0])
    if bare is None:
        return _whole_table(piece, _header_path(lines[0]))
    path = [key.strip(" \t") for key in bare[1].split(".")]
    body = _body_of_lines(lines[1:], known, seen)
    if body is None:
        return _whole_table(piece, path)
    return _Table(tuple(path), body)


def _whole_table(piece: str, path: list[str]) -> _Table:
    node: Any = _parse(piece)
    for key in path:
        # Exactly one key at each level: the piece wrote nothing beside its table.
        if not isinstance(node, dict) or len(node) != 1 or key not in node:
            raise _Whole
        node = node[key]
    if not isinstance(node, dict):
        raise _Whole
    return _Table(tuple(path), node)


def _body_of_lines(
    lines: list[str], known: dict[str, _Line], seen: dict[str, _Line]
) -> dict[str, Any] | None:
    """The table of `key = value` lines, each line parsed once per text (`known`: the
    last document's, `seen`: this one's); None if a line is not that simple or a key
    repeats (the piece is then parsed whole, and tomllib finds what is wrong)."""
    body: dict[str, Any] = {}
    for line in lines:
        entry = seen.get(line) or known.get(line) or _line(line)
        if entry is None:
            return None
        seen[line] = entry
        key, value = entry
        if not key:
            continue  # blank or a comment
        if key in body:
            return None
        body[key] = value
    return body


_Line = tuple[str, Any]
"""A parsed line: its bare key and value, or ("", None) for a blank line or a comment."""
_NOTHING: _Line = ("", None)
_BLANK_OR_COMMENT = re.compile(r"[ \t]*(?:#[^\x00-\x08\x0a-\x1f\x7f]*)?")
"""TOML 1.0 §Comment: no control characters but tab."""
_BARE_KEY_VALUE = re.compile(r"[ \t]*([A-Za-z0-9_-]+)[ \t]*=")


def _line(line: str) -> _Line | None:
    if _BLANK_OR_COMMENT.fullmatch(line):
        return _NOTHING
    match = _BARE_KEY_VALUE.match(line)
    if match is None:
        return None  # a dotted or quoted key, an indented header: parse the piece
    try:
        parsed = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return None  # e.g. the first line of a multi-line value
    key = match[1]
    if len(parsed) != 1 or key not in parsed:
        return None
    return key, parsed[key]
