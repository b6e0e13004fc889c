"""Pull/push helpers over bytes, in the style of aioquic's ``Buffer``.

A short read raises :class:`BufferReadError`. It is an
:class:`ikev2.errors.InvalidSyntax` (the protocol error with the wire code
INVALID_SYNTAX), so every decoder, even one called on its own such as
``Payload.decode_body``, raises only the codec's documented error type; the message
decoder still rewords it as a truncated payload at its boundary.
"""

from __future__ import annotations

from ikev2.errors import InvalidSyntax


class BufferReadError(InvalidSyntax, ValueError):
    """Tried to read past the end of the data (a truncated field: INVALID_SYNTAX).

    Still a ``ValueError`` for callers that caught it as one before it became an
    ``InvalidSyntax``.
    """


class Reader:
    """Sequential reader over an immutable byte string."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def position(self) -> int:
        """Offset of the next octet to read."""
        return self._pos

    @property
    def remaining(self) -> int:
        """Number of octets not yet read."""
        return len(self._data) - self._pos

    def eof(self) -> bool:
        """True when every octet has been read."""
        return self._pos >= len(self._data)

    def pull_bytes(self, n: int) -> bytes:
        """Read exactly ``n`` octets."""
        if n < 0 or self._pos + n > len(self._data):
            raise BufferReadError(f"need {n} octets, {self.remaining} left")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def pull_rest(self) -> bytes:
        """Read every remaining octet."""
        return self.pull_bytes(self.remaining)

    def pull_uint8(self) -> int:
        """Read one octet."""
        return self.pull_bytes(1)[0]

    def pull_uint16(self) -> int:
        """Read a big-endian 16-bit integer."""
        return int.from_bytes(self.pull_bytes(2), "big")

    def pull_uint32(self) -> int:
        """Read a big-endian 32-bit integer."""
        return int.from_bytes(self.pull_bytes(4), "big")


def push_uint8(out: bytearray, value: int) -> None:
    """Append one octet (raises ``OverflowError`` when out of range)."""
    out += value.to_bytes(1, "big")


def push_uint16(out: bytearray, value: int) -> None:
    """Append a big-endian 16-bit integer (raises ``OverflowError`` when out of range)."""
    out += value.to_bytes(2, "big")


def push_uint32(out: bytearray, value: int) -> None:
    """Append a big-endian 32-bit integer (raises ``OverflowError`` when out of range)."""
    out += value.to_bytes(4, "big")
