"""Typed settings of IKE connections and their CHILD SAs.

`conf/` builds these from the TOML file (the names mirror its keys, which operators
and tools rely on); the IKE SA only reads them. All are frozen: a reload
builds new objects instead of changing live ones.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509

from ikev2.addresses import IpAddress, parse_address
from ikev2.certs import LocalCredentials, TrustAnchors
from ikev2.ts import TrafficSelector

# RFC 7296 §3.5 ID Type.
ID_IPV4_ADDR = 1
ID_FQDN = 2
ID_RFC822_ADDR = 3
ID_IPV6_ADDR = 5
ID_DER_ASN1_DN = 9
ID_KEY_ID = 11


@dataclass(frozen=True)
class Problem:
    """One mistake in a configuration."""

    path: str
    """Key path, e.g. ``connections.dc1-net.esp_proposals[0]`` (empty: the whole file)."""
    reason: str
    """What is wrong, in words an operator can act on."""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ConfigError(ValueError):
    """A configuration that cannot work; `problems` lists every mistake found.

    The one configuration error of lockgate: the IKE core raises it with a message
    naming the setting and the reason (one problem without a key path), `conf` with
    every problem of a file and the file's name as `source`.
    """

    def __init__(self, problems: str | Sequence[Problem], source: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = tuple(problems)
        self.source = source
        lines = [str(p) for p in self.problems]
        prefix = f"{source}: " if source else ""
        if len(lines) == 1:
            message = prefix + lines[0]
        else:
            message = f"{prefix}{len(lines)} problems:\n" + "\n".join(f"  {x}" for x in lines)
        super().__init__(message)


_ADDRESS_CHARS = frozenset("0123456789abcdefABCDEF.:")


def _ip_address(text: str) -> IpAddress | None:
    """`text` as an IP address, or None (see ikev2.addresses)."""
    try:
        if "%" in text:  # an IPv6 address with a scope (fe80::1%eth0)
            return ipaddress.ip_address(text)
        if not text or not _ADDRESS_CHARS.issuperset(text):
            return None  # a name, a DN, an e-mail address: no exception to pay for
        return parse_address(text)
    except ValueError:
        return None


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
        addr = _ip_address(text)
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


StartAction = Literal["initiate", "trap", "wait"]
DpdAction = Literal["clear", "restart", "trap"]
EncapMode = Literal["auto", "force", "nat"]
AuthMethod = Literal["psk", "pubkey"]


@dataclass(frozen=True)
class ChildConfig:
    """One CHILD SA a connection negotiates (a pair of ESP SAs between two subnets)."""

    name: str
    """Name of the CHILD SA, shown in logs and status (the TOML connection name)."""
    local_ts: tuple[TrafficSelector, ...]
    """Our side's traffic selectors (TOML `local_subnets`)."""
    remote_ts: tuple[TrafficSelector, ...]
    """The peer's side's traffic selectors (TOML `remote_subnets`)."""
    esp_proposals: tuple[str, ...] = ("aes128gcm16", "aes256gcm16")
    """ESP proposals in strongSwan syntax, most preferred first; a key-exchange part
    ("aes256gcm16-x25519") asks for PFS on rekeys."""
    lifetime: float = 3600.0
    """Hard lifetime in seconds (TOML `child_lifetime`); the SA is deleted after it."""
    rekey_margin: float = 540.0
    """Rekeying starts this many seconds before `lifetime` ends (randomised downwards
    a little so both ends do not rekey at once)."""
    life_bytes: int = 0
    """Hard byte limit per direction; 0 means none."""
    life_packets: int = 0
    """Hard packet limit per direction; 0 means none."""
    start: StartAction = "initiate"
    """"initiate" at start-up, "trap" on the first matching packet, or "wait" for the peer."""
    mode: Literal["tunnel"] = "tunnel"
    """IPsec mode; lockgate implements tunnel mode only."""
    replay_window: int = 128
    """Anti-replay window in packets (RFC 4303 §3.4.3); 0 disables the check."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a CHILD SA needs a name")
        if not self.local_ts or not self.remote_ts:
            raise ConfigError(f"{self.name}: local and remote traffic selectors are required")
        if not self.esp_proposals:
            raise ConfigError(f"{self.name}: at least one ESP proposal is required")
        if self.lifetime <= 0 or not 0 <= self.rekey_margin < self.lifetime:
            raise ConfigError(f"{self.name}: rekey_margin must be below the lifetime")
        if self.life_bytes < 0 or self.life_packets < 0 or self.replay_window < 0:
            raise ConfigError(f"{self.name}: limits must not be negative")
        if self.start not in ("initiate", "trap", "wait"):
            raise ConfigError(f"{self.name}: unknown start action {self.start!r}")

    @property
    def rekey_time(self) -> float:
        """Seconds after installation when rekeying is due (before randomisation)."""
        return self.lifetime - self.rekey_margin


@dataclass(frozen=True)
class ConnectionConfig:
    """One IKE connection to a peer gateway and the CHILD SAs negotiated under it."""

    name: str
    """Connection name, shown in logs and status."""
    local_addresses: tuple[str, ...]
    """Our public addresses (TOML `gateway.addresses`); the first is used to initiate."""
    remote_address: str | None
    """The peer's address (TOML `peers.X.address`), or None for "%any" (responder only)."""
    local_id: Identity
    """Our IKE identity (TOML `peers.X.local_id`, by default `gateway.id`)."""
    remote_id: Identity | None
    """The identity the peer must prove (TOML `peers.X.id`); None accepts any."""
    children: tuple[ChildConfig, ...]
    """CHILD SAs of this connection; the first is set up with IKE_AUTH."""
    auth: AuthMethod = "psk"
    """Authentication method: "psk" (shared key) or "pubkey" (certificates)."""
    psk: bytes | None = field(default=None, repr=False)
    """The pre-shared key for auth "psk"; never shown in repr or logs."""
    credentials: LocalCredentials | None = None
    """Our certificate (chain) and private key for auth "pubkey" (TOML
    `gateway.certificate`, `gateway.private_key`); the key never shows in repr."""
    trust_anchors: TrustAnchors | None = None
    """CA certificates the peer's certificate must chain to, for auth "pubkey"
    (TOML `gateway.ca`)."""
    ike_proposals: tuple[str, ...] = ("aes256gcm16-prfsha384-x25519",)
    """IKE proposals in strongSwan syntax, most preferred first."""
    ike_port: int = 500
    """UDP port IKE starts on (RFC 7296 §2)."""
    nat_port: int = 4500
    """UDP port IKE moves to when a NAT is detected or encapsulation is forced (§2.23)."""
    ike_lifetime: float = 14400.0
    """Hard lifetime of the IKE SA in seconds."""
    rekey_margin: float = 540.0
    """IKE rekeying starts this many seconds before `ike_lifetime` ends."""
    dpd_interval: float = 30.0
    """Seconds of silence from the peer before a liveness check; 0 disables DPD."""
    dpd_action: DpdAction = "clear"
    """What to do when the peer stops answering: "clear", "restart" or "trap"."""
    encap: EncapMode = "auto"
    """"auto": ESP in UDP behind a NAT or with a lockgate peer (Vendor ID, see
    tasks.ike_natd); "force": always (fakes NAT-D as strongSwan's `encap = yes` does,
    RFC 7296 §2.23); "nat": only behind a NAT."""
    retransmit_timeout: float = 4.0
    """Seconds before the first retransmission of a request."""
    retransmit_tries: int = 5
    """Retransmissions before giving up on the peer."""
    retransmit_base: float = 1.8
    """Back-off factor: retransmission n waits timeout * base**n."""
    initial_contact: bool = True
    """Send INITIAL_CONTACT in IKE_AUTH so the peer drops stale SAs from us (§2.4)."""
    fragmentation: bool = True
    """Offer IKE fragmentation (RFC 7383); used when the peer offers it too."""
    fragment_size: int = 1232
    """Largest IKE message (from its header) sent whole once fragmentation is agreed:
    1280 octets of IPv6 minimum MTU less the IP and UDP headers and the marker."""

    def __post_init__(self) -> None:
        where = f"connection {self.name!r}"
        if not self.name:
            raise ConfigError("a connection needs a name")
        if not self.local_addresses:
            raise ConfigError(f"{where}: no local address")
        for addr in (
            *self.local_addresses,
            *([self.remote_address] if self.remote_address else []),
        ):
            if _ip_address(addr) is None:
                raise ConfigError(f"{where}: {addr!r} is not an IP address")
        if not self.children:
            raise ConfigError(f"{where}: no CHILD SA configured")
        if self.auth == "psk" and not self.psk:
            raise ConfigError(f"{where}: auth is psk but no psk is set")
        if self.auth == "pubkey" and (self.credentials is None or self.trust_anchors is None):
            raise ConfigError(f"{where}: auth is pubkey but a certificate, key or CA is missing")
        if self.auth not in ("psk", "pubkey"):
            raise ConfigError(f"{where}: unknown auth method {self.auth!r}")
        if not self.ike_proposals:
            raise ConfigError(f"{where}: at least one IKE proposal is required")
        if self.ike_lifetime <= 0 or not 0 <= self.rekey_margin < self.ike_lifetime:
            raise ConfigError(f"{where}: rekey_margin must be below ike_lifetime")
        if self.encap not in ("auto", "force", "nat"):
            raise ConfigError(f"{where}: encap must be 'auto', 'force' or 'nat'")
        if self.dpd_action not in ("clear", "restart", "trap"):
            raise ConfigError(f"{where}: unknown dpd_action {self.dpd_action!r}")
        if self.retransmit_timeout <= 0 or self.retransmit_tries < 0 or self.retransmit_base < 1:
            raise ConfigError(f"{where}: invalid retransmission settings")
        if not 200 <= self.fragment_size <= 65000:
            raise ConfigError(f"{where}: fragment_size must be 200..65000")
        for port in (self.ike_port, self.nat_port):
            if not 0 < port < 65536:
                raise ConfigError(f"{where}: port {port} out of range")

    @property
    def is_responder_only(self) -> bool:
        """True when the peer address is %any: we cannot initiate, only answer."""
        return self.remote_address is None

    def child(self, name: str) -> ChildConfig:
        """The CHILD configuration by name; KeyError if there is none."""
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)
