"""TOML parsed one top-level table at a time, reusing the tables whose text did not
change since the last document.

A reload (SIGHUP) re-reads a file of which usually little changed, and `tomllib`, pure
Python, is most of what parsing costs: about 1.8 s for 10,000 peers and connections
(`python -m bench.reload`). `TomlTables.loads` splits the text before every line that
opens with ``[`` and keeps the last document's tables by their text, so only a table
whose text changed is given to ``tomllib`` again: the same reload takes about 0.1 s.

The result must be what ``tomllib.loads`` gives for the whole text, or its error. The
tables are merged only when that is certain, else the whole text is parsed:

- Every piece after the first opens with a standard table header (not ``[[``) and
  defines nothing outside that table (an indented header inside it would).
- No header's key path equals another's or starts with another's: each table is then
  defined exactly once and no two pieces write into the same table (TOML 1.0 §Table).
- The keys before the first header name none of the headers' first keys.
- A piece that is not valid TOML on its own (a split inside a multi-line string or
  array leaves one piece unterminated) sends the whole text to ``tomllib``, which also
  gives a broken file its error with the right line number.

The tables handed out are shared with the next documents: callers must not change them
(`conf.load.parse_config` only reads).
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
        tables: dict[str, _Table] = {}
        order: list[_Table] = []
        reused = 0
        for piece in pieces:
            table = self._last.get(piece)
            if table is None:
                table = _table(piece)
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


def _header(piece: str) -> str:
    """The piece's first line without its line end (LF, or CRLF: a CR is dropped only
    where an LF follows it, as TOML reads it)."""
    line, end, _ = piece.partition("\n")
    return line[:-1] if end and line.endswith("\r") else line


def _table(piece: str) -> _Table:
    """Parse one piece that opens with a table header."""
    if piece.startswith("[["):
        raise _Whole  # arrays of tables append across pieces: leave them to tomllib
    header = _header(piece)
    bare = _BARE_HEADER.fullmatch(header)
    if bare is None:
        return _whole_table(piece, _header_path(header))
    return _whole_table(piece, [key.strip(" \t") for key in bare[1].split(".")])


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
