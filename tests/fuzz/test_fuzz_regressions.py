"""Inputs that once broke an entry point, or sit on an edge of its checks (a Pad Length
past the plaintext, fragment 0 of 0, an ESN packet across 2^32, a Delete of SPIs we do
not have), replayed through their target so its contract keeps holding for them.

Each file in ``tests/fuzz/corpus/`` is named ``<target>--<what>.bin`` where ``<target>``
is a target name with ``[``/``]`` written as ``-`` (``esp-aes128gcm16--short.bin`` is an
input of ``esp[aes128gcm16]``). Inputs whose bug is not fixed yet are listed in
``KNOWN`` with the reason; they are strict xfails, so a fix turns them into failures
until they move out of ``KNOWN``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ikev2.codec import SecurityAssociation
from ikev2.errors import InvalidSyntax
from testkit.fuzz.targets import Target, all_targets

CORPUS = Path(__file__).parent / "corpus"

KNOWN: dict[str, str] = {}
"""Corpus file name -> why it still fails (file, line, owner's issue)."""


def _file_name(target: str) -> str:
    return target.replace("[", "-").replace("]", "")


_TARGETS: dict[str, Target] = {}


def _target(stem: str) -> Target:
    if not _TARGETS:
        _TARGETS.update({_file_name(t.name): t for t in all_targets()})
    return _TARGETS[stem.partition("--")[0]]


def _cases() -> list[object]:
    out: list[object] = []
    for path in sorted(CORPUS.glob("*.bin")):
        marks = []
        if path.name in KNOWN:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[path.name]))
        out.append(pytest.param(path, id=path.stem, marks=marks))
    return out


@pytest.mark.parametrize("path", _cases())
def test_corpus_input_keeps_its_target_contract(path: Path) -> None:
    _target(path.stem).run(path.read_bytes())


def test_corpus_names_a_known_target() -> None:
    names = {_file_name(t.name) for t in all_targets()}
    for path in CORPUS.glob("*.bin"):
        assert path.stem.partition("--")[0] in names, path.name


def test_payload_decode_body_raises_invalid_syntax_on_truncation() -> None:
    # Found by fuzzing: a payload decoder called on its own (not through
    # decode_payloads) let the buffer's short-read error escape.
    with pytest.raises(InvalidSyntax):
        SecurityAssociation.decode_body(b"\x00\x00\x00")
