"""conf.toml_tables: parsing table by table gives exactly what tomllib gives."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conf.toml_tables import TomlTables

EXAMPLES = Path(__file__).parent.parent / "conf" / "examples"


def ordered(value: Any) -> Any:
    """The value with every table as a list of (key, value): equal only if the key
    order is equal too (dict equality ignores it)."""
    if isinstance(value, dict):
        return [(k, ordered(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [ordered(v) for v in value]
    return value


def same_as_tomllib(tables: TomlTables, text: str) -> None:
    """`tables.loads(text)` returns what tomllib returns, key order included, or
    raises tomllib's error with tomllib's message."""
    try:
        expected = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        with pytest.raises(tomllib.TOMLDecodeError) as raised:
            tables.loads(text)
        assert str(raised.value) == str(exc)
        return
    assert ordered(tables.loads(text)) == ordered(expected)


PEERS = """\
# comment before any table
log = "x"

[gateway]
addresses = ["192.0.2.1"]

[peers.one]
address = "198.51.100.1"

[peers."two.dotted"]
address = "198.51.100.2"
nested.deeper = 1

[connections.a]
peer = "one"
"""


@pytest.mark.parametrize(
    "text",
    [
        PEERS,
        PEERS.replace("\n", "\r\n"),
        "",
        "# only a comment\n",
        "[a]\n",
        "[a]  # a comment after the header\nx = 1\n[b]\ny = 2\n",
        "[ a . b ]\nx = 1\n",
        # A super-table after its sub-table is legal TOML: left to tomllib whole.
        "[a.b]\nx = 1\n[a]\ny = 2\n",
        # Defined twice, directly or through a dotted key: tomllib's error.
        "[a]\nx = 1\n[a]\ny = 2\n",
        "[a]\nb.c = 1\n[a.b]\nd = 2\n",
        '[a]\nx = 1\n[a."b"]\ny = 2\n[a.b]\n',
        # Keys before the first header that a header also names.
        "a.x = 1\n[a.b]\ny = 2\n",
        "a = 1\n[a]\n",
        "top = 1\n[b]\nx = 2\n",
        # Lines opening with "[" inside multi-line values (the split lands inside them).
        "[a]\nx = [\n[1, 2],\n[3],\n]\n[b]\ny = 1\n",
        '[a]\nx = """\n[b]\nnot a table\n"""\n[c]\ny = 1\n',
        "[a]\nx = '''\n[b]\n'''\n",
        '[a]\nx = [\n["s"],\n]\n',
        # Arrays of tables, at the start of a line or indented.
        "[[a]]\nx = 1\n[[a]]\nx = 2\n[b]\n",
        "[b]\n  [[b.list]]\n  x = 1\n  [[b.list]]\n  x = 2\n[c]\n",
        "[b]\n  [[other]]\n  x = 1\n",
        # An indented header inside a piece: its own sub-table, or another table.
        "[a]\n  [a.sub]\n  x = 1\n[b]\n",
        "[a]\nx = 1\n  [c]\n  y = 2\n[b]\n",
        "[a]\nx = 1\n  [b.c]\n[b]\n",
        # Comments with control characters (only tab is allowed), a CR without LF.
        "[a] # tab\tok\nx = 1 # fine\n# fine too\n",
        "[a] # bad \x7f\nx = 1\n",
        "[a]\nx = 1 # bad \x01\n",
        "[a]\n# bad \x1f\nx = 1\n",
        "[a]\nx = 1\r",
        "[a]\r\nx = 1\r\n[b]\r\ny = 2\r",
        # A repeated key inside a table that is otherwise read line by line.
        "[a]\nx = 1\ny = 2\nx = 1\n",
        # Broken files.
        "[a]\nx = \n",
        "[a\nx = 1\n",
        "[a]\nx = [1,\n",
        "x = 1\n[a]\nx = 1\nx = 2\n",
    ],
)
def test_documents_parse_as_tomllib_parses_them(text: str) -> None:
    same_as_tomllib(TomlTables(), text)


@pytest.mark.parametrize("name", ["dc.toml", "cloud.toml"])
def test_the_example_configurations(name: str) -> None:
    same_as_tomllib(TomlTables(), (EXAMPLES / name).read_text())


def test_a_reload_parses_only_the_tables_that_changed() -> None:
    tables = TomlTables()
    first = tables.loads(PEERS)
    assert tables.reused == 0
    changed = PEERS.replace('address = "198.51.100.2"', 'address = "198.51.100.3"')
    second = tables.loads(changed)
    assert ordered(second) == ordered(tomllib.loads(changed))
    # Three of the four tables are the very objects parsed the first time.
    assert tables.reused == 3
    assert second["peers"]["one"] is first["peers"]["one"]
    assert second["peers"]["two.dotted"] is not first["peers"]["two.dotted"]
    # The root and the tables holding the pieces are new each time.
    assert second is not first and second["peers"] is not first["peers"]


def test_a_changed_table_is_parsed_again_whole() -> None:
    text = '[c.one]\npeer = "p"\nnets = ["192.0.2.0/24"]\nstart = "wait"\n'
    tables = TomlTables()
    first = tables.loads(text)["c"]["one"]
    changed = text.replace('"wait"', '"initiate"')
    second = tables.loads(changed)["c"]["one"]
    assert ordered(second) == [("peer", "p"), ("nets", ["192.0.2.0/24"]), ("start", "initiate")]
    assert ordered(second) == ordered(tomllib.loads(changed)["c"]["one"])
    assert tables.reused == 0 and second is not first
    assert second["nets"] is not first["nets"]  # tomllib read the whole table again


def test_a_broken_reload_keeps_what_the_last_good_document_had() -> None:
    tables = TomlTables()
    first = tables.loads(PEERS)
    with pytest.raises(tomllib.TOMLDecodeError):
        tables.loads(PEERS + "[broken\n")
    again = tables.loads(PEERS)
    assert tables.reused == 4
    assert again["gateway"] is first["gateway"]


# --- random documents ------------------------------------------------------------------

# Few names, so that paths often collide or start one another; a broken value now and
# then. Most documents are still valid, and most of those merge from pieces.
_KEYS = st.sampled_from(["a", "b", "c", "d", "e", "f", '"a.b"', "'c'"])
_VALUES = st.sampled_from(
    [
        "1",
        '"text"',
        "[1, 2]",
        "[\n[1, 2],\n[3],\n]",  # lines opening with "[" inside an array
        '"""\n[a]\n"""',  # and inside a multi-line string
        "{ x = 1 }",
    ]
    * 4
    + ["["]  # broken
)
_KEY_VALUES = st.tuples(
    st.sampled_from(["", "", "", "  ", "\t"]), st.lists(_KEYS, min_size=1, max_size=2), _VALUES
).map(lambda kv: f"{kv[0]}{'.'.join(kv[1])} = {kv[2]}")
_OTHER_LINES = st.sampled_from(
    ["", "   ", "# a comment", "\t# [not a header]", "x = 1 # c", "# bad \x01 comment", "x = 1\r"]
)
_LINES = st.one_of(_KEY_VALUES, _KEY_VALUES, _KEY_VALUES, _OTHER_LINES)


def _first_key(line: str) -> str:
    return line.split("=")[0].split(".")[0].strip()


def _first_line(table: str) -> str:
    return table.split("\n")[0]


_HEADERS = st.tuples(
    st.sampled_from(["[{}]"] * 6 + ["[[{}]]", "  [{}]", "[ {} ]", "[{}] # c", "[{}] #\x7f"]),
    st.lists(_KEYS, min_size=1, max_size=3),
).map(lambda hp: hp[0].format(".".join(hp[1])))
_TABLES = st.tuples(_HEADERS, st.lists(_LINES, max_size=3, unique_by=_first_key)).map(
    lambda t: "\n".join([t[0], *t[1]])
)
_DOCUMENTS = st.tuples(
    st.lists(_LINES, max_size=1), st.lists(_TABLES, max_size=6, unique_by=_first_line)
).map(lambda d: "\n".join(d[0] + d[1]) + "\n")


@settings(max_examples=200, deadline=None)
@given(_DOCUMENTS, _DOCUMENTS)
def test_random_documents_and_reloads_parse_as_tomllib(first: str, second: str) -> None:
    tables = TomlTables()
    same_as_tomllib(tables, first)
    # The second document meets the first one's pieces and lines in the cache.
    same_as_tomllib(tables, second)
    same_as_tomllib(tables, first + second)
    same_as_tomllib(tables, (first + second).replace("\n", "\r\n"))
    same_as_tomllib(tables, first.rstrip("\n") + "\r")
