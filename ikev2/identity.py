"""IKE identities (RFC 7296 §3.5): parsed from configuration text, read from ID payloads.

Shared by the configuration (`ikev2.config`, whose connections name them) and the
certificate checks (`ikev2.certs`, which match them against a certificate).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass

from cryptography import x509

from ikev2.addresses import address_or_none
from ikev2.errors import ConfigError

# RFC 7296 §3.5 ID Type.
ID_IPV4_ADDR = 1
ID_FQDN = 2
ID_RFC822_ADDR = 3
ID_IPV6_ADDR = 5
ID_DER_ASN1_DN = 9
ID_KEY_ID = 11


class IdKind(enum.Enum):
    """The kinds of IKE identity lockgate supports, with their §3.5 ID Type."""

    IPV4 = ID_IPV4_ADDR
    IPV6 = ID_IPV6_ADDR
    FQDN = ID_FQDN
    RFC822 = ID_RFC822_ADDR
    DN = ID_DER_ASN1_DN
    KEY_ID = ID_KEY_ID


@dataclass(frozen=True, slots=True)
class Identity:
    """An IKE identity (RFC 7296 §3.5): its kind and its wire data."""

    kind: IdKind
    """ID Type of the identification payload."""
    data: bytes
    """Identification Data as sent on the wire (packed address, ASCII name, DER DN)."""

    @classmethod
    def parse(cls, text: str) -> Identity:
        """An identity from configuration text, the way strongSwan reads it.

        "198.51.100.1" and "2001:db8::1" are addresses; "user@example.net" is an
        RFC 822 address; "@gw.example.net" or "gw.example.net" a FQDN; text with
        "=" a DN ("CN=gw.example.net, O=Example"); "@#0a0b" a key ID.
        """
        return _parse_identity(text.strip())

    @classmethod
    def _parse(cls, text: str) -> Identity:
        if not text:
            raise ConfigError("an identity must not be empty")
        addr = address_or_none(text)
        if addr is not None:
            kind = IdKind.IPV4 if addr.version == 4 else IdKind.IPV6
            return cls(kind, addr.packed)
        if text.startswith("@#"):
            try:
                return cls(IdKind.KEY_ID, bytes.fromhex(text[2:]))
            except ValueError as exc:
                raise ConfigError(f"key ID {text!r} is not hexadecimal") from exc
        if text.startswith("@"):
            return cls(IdKind.FQDN, _ascii(text[1:], text))
        if "=" in text:
            try:
                name = x509.Name.from_rfc4514_string(_rfc4514(text))
            except ValueError as exc:
                raise ConfigError(f"not a distinguished name: {text!r}") from exc
            return cls(IdKind.DN, name.public_bytes())
        if "@" in text:
            return cls(IdKind.RFC822, _ascii(text, text))
        return cls(IdKind.FQDN, _ascii(text, text))

    @classmethod
    def from_wire(cls, id_type: int, data: bytes) -> Identity:
        """An identity from a received ID payload; an unsupported type raises ConfigError."""
        try:
            kind = IdKind(id_type)
        except ValueError as exc:
            raise ConfigError(f"unsupported ID type {id_type}") from exc
        if (kind is IdKind.IPV4 and len(data) != 4) or (kind is IdKind.IPV6 and len(data) != 16):
            raise ConfigError(f"{kind.name} identity of {len(data)} bytes")
        return cls(kind, bytes(data))

    @property
    def id_type(self) -> int:
        """The §3.5 ID Type number."""
        return self.kind.value

    def __str__(self) -> str:
        if self.kind in (IdKind.IPV4, IdKind.IPV6):
            return str(ipaddress.ip_address(self.data))
        if self.kind in (IdKind.FQDN, IdKind.RFC822):
            return self.data.decode("ascii", errors="replace")
        if self.kind is IdKind.KEY_ID:
            return "@#" + self.data.hex()
        return _dn_text(self.data)


@functools.lru_cache(maxsize=4096)
def _parse_identity(text: str) -> Identity:
    # Identity is immutable, so one parse serves every connection and reload naming it.
    return Identity._parse(text)


def _ascii(value: str, original: str) -> bytes:
    if not value:
        raise ConfigError(f"empty name in identity {original!r}")
    try:
        return value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"identity {original!r} is not ASCII") from exc


def _rfc4514(text: str) -> str:
    # strongSwan writes DNs most-significant first with ", " ("C=CH, O=Ex, CN=gw");
    # RFC 4514 strings are least-significant first. Reverse so both spellings produce
    # the DER a strongSwan peer sends.
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return ",".join(reversed(parts))


# A few attribute type OIDs by name, for DN display only.
_DN_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "1.2.840.113549.1.9.1": "E",
}


def _dn_text(der: bytes) -> str:
    """The DN in strongSwan's order ("C=CH, O=Example, CN=gw"); hex if it is not DER."""
    try:
        return ", ".join(_walk_dn(der))
    except (IndexError, ValueError, UnicodeDecodeError):
        return "#" + der.hex()


def _der_item(buf: bytes, pos: int) -> tuple[int, bytes, int]:
    tag = buf[pos]
    length = buf[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 3:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(buf):
        raise ValueError("truncated DER")
    return tag, buf[pos:end], end


def _oid_text(raw: bytes) -> str:
    if not raw:
        raise ValueError("empty OID")
    arcs = [raw[0] // 40, raw[0] % 40]
    value = 0
    for byte in raw[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(str(a) for a in arcs)


def _walk_dn(der: bytes) -> list[str]:
    tag, body, end = _der_item(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not a DER SEQUENCE")
    out: list[str] = []
    pos = 0
    while pos < len(body):
        _, rdn, pos = _der_item(body, pos)
        inner = 0
        while inner < len(rdn):
            _, atv, inner = _der_item(rdn, inner)
            _, oid, after = _der_item(atv, 0)
            _, value, _ = _der_item(atv, after)
            name = _oid_text(oid)
            out.append(f"{_DN_NAMES.get(name, name)}={value.decode('utf-8')}")
    return out
