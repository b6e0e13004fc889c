"""Pull/push helpers over bytes, in the style of aioquic's ``Buffer``.

A short read raises :class:`BufferReadError`. It is an
:class:`ikev2.errors.InvalidSyntax` (the protocol error with the wire code
INVALID_SYNTAX), so every decoder, even one called on its own such as
``Payload.decode_body``, raises only the codec's documented error type; the message
decoder still rewords it as a truncated payload at its boundary.

Decoding is on the hot path of every IKE SA setup, so the fixed parts of a header
(several fields in a row) are read with one precompiled :class:`struct.Struct`
(:meth:`Reader.pull_struct`) instead of one call per field.
"""

from __future__ import annotations

from struct import Struct
from struct import error as StructError
from typing import Any

from ikev2.errors import InvalidSyntax

U8_U8_U16 = Struct("!BBH")
"""Three fields read or written together: the generic payload header (RFC 7296 §3.2),
the proposal and transform substructure headers (§3.3.1, §3.3.2), the Notify and
Delete headers (§3.10, §3.11) and the traffic selector's type/protocol/length (§3.13.1)."""
U16_U16 = Struct("!HH")
"""Two 16-bit fields: a transform attribute (§3.3.5), a selector's port range (§3.13.1)."""


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

    def _short(self, n: int) -> BufferReadError:
        return BufferReadError(f"need {n} octets, {self.remaining} left")

    def pull_bytes(self, n: int) -> bytes:
        """Read exactly ``n`` octets."""
        pos = self._pos
        end = pos + n
        if n < 0 or end > len(self._data):
            raise self._short(n)
        self._pos = end
        return self._data[pos:end]

    def pull_rest(self) -> bytes:
        """Read every remaining octet."""
        pos = self._pos
        self._pos = len(self._data)
        return self._data[pos:]

    def skip(self, n: int) -> None:
        """Step over ``n`` octets (reserved fields) without copying them."""
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise self._short(n)
        self._pos = end

    def pull_struct(self, fmt: Struct) -> tuple[Any, ...]:
        """Read the fields of ``fmt`` (big-endian) in one go."""
        pos = self._pos
        end = pos + fmt.size
        if end > len(self._data):
            raise self._short(fmt.size)
        self._pos = end
        return fmt.unpack_from(self._data, pos)

    def pull_uint8(self) -> int:
        """Read one octet."""
        pos = self._pos
        if pos >= len(self._data):
            raise self._short(1)
        self._pos = pos + 1
        return self._data[pos]

    def pull_uint16(self) -> int:
        """Read a big-endian 16-bit integer."""
        return int.from_bytes(self.pull_bytes(2), "big")

    def pull_uint32(self) -> int:
        """Read a big-endian 32-bit integer."""
        return int.from_bytes(self.pull_bytes(4), "big")


def pack(fmt: Struct, *values: int | bytes) -> bytes:
    """``fmt.pack(*values)``, raising ``OverflowError`` (as ``int.to_bytes`` does) when
    a value does not fit its field, so encoders report one error type."""
    try:
        return fmt.pack(*values)
    except StructError as exc:
        raise OverflowError(f"field out of range: {exc}") from exc
