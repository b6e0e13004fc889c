"""Typed settings of IKE connections and their CHILD SAs.

`conf/` builds these from the TOML file (the names here mirror the configuration's
keys, which are a user-facing contract); the IKE SA only reads them. All are frozen: a reload
builds new objects instead of changing live ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ikev2.addresses import address_or_none
from ikev2.certs import LocalCredentials, TrustAnchors
from ikev2.errors import ConfigError as ConfigError
from ikev2.errors import Problem as Problem
from ikev2.identity import Identity as Identity
from ikev2.identity import IdKind as IdKind
from ikev2.ts import TrafficSelector

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
            if address_or_none(addr) is None:
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
