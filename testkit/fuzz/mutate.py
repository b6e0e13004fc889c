"""Wire mutations shared by the hypothesis properties and the dedicated run.

A :class:`Mutation` is a short list of edits. Besides blind edits (bit flips, boundary
values, truncation, growth, deletion, duplication) two edits know the IKE layout
(RFC 7296 §3.1, §3.2): ``plen`` rewrites the Payload Length of the n-th payload of the
chain (n = 0: the IKE header's Length) and ``next`` its Next Payload, which is where a
parser's bookkeeping goes wrong. On octets that are not IKE they fall back to a blind
edit, so one mutation type serves every entry point.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

IKE_HEADER_LEN = 28
OPS = ("flip", "set", "u16", "u32", "cut", "grow", "drop", "dup", "plen", "next")
_BOUNDARY = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)

Edit = tuple[str, int, int]
"""(operation, position or index, value)."""


def payload_headers(data: bytes | bytearray) -> list[int]:
    """Offsets of the generic payload headers of an IKE message, as far as they parse."""
    offsets: list[int] = []
    pos = IKE_HEADER_LEN
    next_type = data[16] if len(data) >= IKE_HEADER_LEN else 0
    while next_type and pos + 4 <= len(data) and len(offsets) < 64:
        offsets.append(pos)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if next_type in (46, 53) or length < 4:
            break  # SK/SKF are last; a short length ends the walk
        next_type = data[pos]
        pos += length
    return offsets


@dataclass(frozen=True)
class Mutation:
    """A few edits applied in order to a byte string."""

    edits: tuple[Edit, ...] = ()

    def apply(self, data: bytes) -> bytes:
        out = bytearray(data)
        for op, where, value in self.edits:
            _edit(out, op, where, value)
        return bytes(out)

    @classmethod
    def random(cls, rng: random.Random, max_edits: int = 4) -> Mutation:
        """A random mutation for the seeded loop of ``bench.fuzz``."""
        edits = []
        for _ in range(rng.randint(1, max_edits)):
            value = rng.choice(_BOUNDARY) if rng.random() < 0.4 else rng.getrandbits(32)
            edits.append((rng.choice(OPS), rng.getrandbits(16), value))
        return cls(tuple(edits))


def _edit(out: bytearray, op: str, where: int, value: int) -> None:
    n = len(out)
    if op in ("plen", "next"):
        headers = payload_headers(out)
        index = where % (len(headers) + 1)
        if op == "plen" and index == 0 and n >= IKE_HEADER_LEN:
            out[24:28] = (value & 0xFFFFFFFF).to_bytes(4, "big")
            return
        if headers:
            pos = headers[(index or 1) - 1]
            if op == "plen":
                out[pos + 2 : pos + 4] = (value & 0xFFFF).to_bytes(2, "big")
            else:
                out[pos] = value & 0xFF
            return
        op = "set"  # not IKE: a blind edit instead
    if op == "grow":
        out += value.to_bytes(4, "big") * (1 + where % 16)
        return
    if n == 0:
        return
    pos = where % n
    if op == "flip":
        out[pos] ^= 1 << (value % 8)
    elif op == "set":
        out[pos] = value & 0xFF
    elif op == "u16":
        out[pos : pos + 2] = (value & 0xFFFF).to_bytes(2, "big")
    elif op == "u32":
        out[pos : pos + 4] = (value & 0xFFFFFFFF).to_bytes(4, "big")
    elif op == "cut":
        del out[pos:]
    elif op == "drop":
        del out[pos : pos + 1 + value % 32]
    elif op == "dup":
        out[pos:pos] = out[pos : pos + 1 + value % 64]
