"""What the IKEv2 core tells its user (the daemon), as dataclasses.

The core never touches packets or the kernel: it hands over a `ChildSaInstalled`
with everything needed to build the two ESP SAs (SPIs, suite, keys, selectors,
lifetimes) and a `ChildSaDeleted` when they must go. Keys never appear in `repr`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ikev2.ts import TrafficSelector

Address = tuple[str, int]
"""An (IP address, UDP port) pair."""


def format_address(addr: Address) -> str:
    """An address for a log line: "192.0.2.1:500", "[2001:db8::1]:500"."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event the IKEv2 core emits."""


class DeleteCause(enum.Enum):
    """Why an IKE SA or CHILD SA ended, for code to act on (`reason` is for people)."""

    OTHER = "other"
    """Not classified (events built without a cause)."""
    LOCAL = "local"
    """We deleted it on request: operator, reload, shutdown."""
    PEER_DELETED = "peer deleted"
    """The peer sent a Delete (or reported a fatal error) for it."""
    PEER_RESTARTED = "peer restarted"
    """Replaced: the peer came back with INITIAL_CONTACT (RFC 7296 §2.4)."""
    DEAD_PEER = "dead peer"
    """The peer stopped answering: retransmissions or liveness checks ran out (§2.4)."""
    EXPIRED = "expired"
    """Its hard time lifetime ended before a rekey replaced it."""
    LIMIT_REACHED = "limit reached"
    """A CHILD SA's hard byte or packet limit was reached (RFC 4301 §4.4.2.1)."""
    REKEYED = "rekeyed"
    """A CHILD SA replaced by its rekey (§2.8); a new one carries its traffic."""
    IKE_SA_DELETED = "IKE SA deleted"
    """A CHILD SA that went with its IKE SA (that IKE SA's event says why)."""
    ERROR = "error"
    """An established IKE SA failed on a protocol error."""


# The core's own wording of why it ends an SA (ikev2.sa, ikev2.tasks); classified here,
# next to the cause enum, so that users match the cause and never the text.
REASON_PEER_DEAD = "peer is dead"
REASON_LIMIT_REACHED = "byte or packet limit reached"
REASON_LIFETIME_EXPIRED = "lifetime expired"
REASON_REKEYED = "rekeyed"
REASON_IKE_SA_DELETED = "IKE SA deleted"
REASON_DELETED_BY_PEER = "deleted by peer"
REASON_PEER_RESTARTED = "INITIAL_CONTACT"


def ike_delete_cause(reason: str, *, by_peer: bool, we_deleted: bool) -> DeleteCause:
    """The cause of an established IKE SA's end, from the core's reason.

    `we_deleted`: we had sent (or started) our Delete of it, so an unexplained end is
    LOCAL; otherwise it failed (ERROR).
    """
    if reason.startswith(REASON_PEER_DEAD):
        return DeleteCause.DEAD_PEER
    if REASON_LIFETIME_EXPIRED in reason:
        return DeleteCause.EXPIRED
    if REASON_PEER_RESTARTED in reason:
        return DeleteCause.PEER_RESTARTED
    if by_peer:
        return DeleteCause.PEER_DELETED
    return DeleteCause.LOCAL if we_deleted else DeleteCause.ERROR


def child_delete_cause(reason: str) -> DeleteCause:
    """The cause of a CHILD SA's end, from the core's reason (anything not the core's
    own wording came through `delete_child` on request: LOCAL)."""
    if reason == REASON_LIMIT_REACHED:
        return DeleteCause.LIMIT_REACHED
    if reason == REASON_LIFETIME_EXPIRED:
        return DeleteCause.EXPIRED
    if reason == REASON_REKEYED:
        return DeleteCause.REKEYED
    if reason == REASON_IKE_SA_DELETED:
        return DeleteCause.IKE_SA_DELETED
    if reason == REASON_DELETED_BY_PEER:
        return DeleteCause.PEER_DELETED
    return DeleteCause.LOCAL


@dataclass(frozen=True, slots=True)
class IkeSaEstablished(Event):
    """An IKE SA finished IKE_AUTH: both peers are authenticated."""

    connection: str
    """Name of the connection (ConnectionConfig.name)."""
    ike_sa_id: int
    """Unique number of this IKE SA inside the endpoint (stable for its lifetime)."""
    initiator: bool
    """True if we started the IKE SA."""
    spi_i: int
    """Initiator's IKE SPI."""
    spi_r: int
    """Responder's IKE SPI."""
    local: Address
    """Our address and port the IKE SA now uses."""
    remote: Address
    """The peer's address and port the IKE SA now uses."""
    local_id: str
    """Our identity as text."""
    remote_id: str
    """The peer's authenticated identity as text."""
    suite: str
    """Negotiated IKE algorithms, e.g. "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519"."""
    nat_local: bool
    """True when a NAT (or forced encapsulation) was detected on our side."""
    nat_remote: bool
    """True when a NAT (or forced encapsulation) was detected on the peer's side."""
    udp_encap_reason: str = ""
    """Why ESP travels in UDP (a NAT, forced, a lockgate peer); "" for raw ESP."""
    eap_identity: str = ""
    """A remote-access client's user: the one an EAP login authenticated (RFC 7296
    §2.16), or its client certificate's common name; "" for other peers."""
    quantum_safe: bool = False
    """An ML-KEM additional key exchange (RFC 9370) went into the keys, or a PPK was
    mixed in (RFC 8784)."""
    ppk_used: bool = False
    """A post-quantum preshared key is mixed into the IKE SA's keys (RFC 8784)."""


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed(Event):
    """An IKE SA was replaced by a new one (RFC 7296 §2.18); its CHILD SAs moved along.

    The old `ike_sa_id` ends here without an IkeSaDeleted: nothing was torn down.
    Later events of the moved CHILD SAs carry `new_ike_sa_id`.
    """

    connection: str
    """Name of the connection."""
    ike_sa_id: int
    """The replaced IKE SA's unique number."""
    new_ike_sa_id: int
    """The new IKE SA's unique number."""
    spi_i: int
    """The new IKE SA's initiator SPI (the side that started the rekey)."""
    spi_r: int
    """The new IKE SA's responder SPI."""
    suite: str
    """The new IKE SA's algorithms."""


@dataclass(frozen=True, slots=True)
class IkeSaDeleted(Event):
    """An established IKE SA is gone (deleted by either side, expired or peer dead).

    Its CHILD SAs are reported gone with their own `ChildSaDeleted` first.
    """

    connection: str
    """Name of the connection."""
    ike_sa_id: int
    """The IKE SA's unique number."""
    reason: str
    """Why, in an operator's words ("deleted by peer", "peer did not answer 5 retransmissions")."""
    by_peer: bool
    """True if the peer asked for the delete."""
    cause: DeleteCause = DeleteCause.OTHER
    """Why, for code: DEAD_PEER, EXPIRED, PEER_DELETED, LOCAL, ..."""


@dataclass(frozen=True, slots=True)
class IkeSaFailed(Event):
    """Setting up an IKE SA failed before it was established."""

    connection: str
    """Name of the connection, or "" if the request matched none."""
    ike_sa_id: int
    """The (half-open) IKE SA's unique number."""
    reason: str
    """What went wrong, for an operator ("peer's PSK does not match ours")."""
    notify: int | None
    """The IKEv2 notify error type involved (sent or received), if any."""
    user: str = ""
    """The user of a refused remote-access login (its EAP identity, or its verified
    certificate's CN), if it got that far."""
    remote: tuple[str, int] = ("", 0)
    """The address the request came from."""
    refusal: str = ""
    """A refused remote-access login's reason in words ("wrong password", "unknown
    user", "rate limited", "too many sessions"), "" for other failures."""


@dataclass(frozen=True, slots=True)
class VirtualIpAssigned(Event):
    """Configuration payloads gave a remote-access client its settings (RFC 7296 §3.15):
    on a server, what it handed out (the addresses stay the client's until the IKE SA
    is deleted or fails); on a client, what it received."""

    connection: str
    """Name of the connection."""
    ike_sa_id: int
    """The IKE SA the addresses belong to."""
    user: str
    """The EAP identity, else the IKE identity, of the client."""
    addresses: tuple[str, ...]
    """Virtual addresses with prefix ("192.0.2.7/24", "2001:db8:c::7/64")."""
    dns: tuple[str, ...] = ()
    """DNS servers."""
    dns_domains: tuple[str, ...] = ()
    """Split-DNS domains."""
    subnets: tuple[str, ...] = ()
    """Networks the client reaches through the tunnel."""


@dataclass(frozen=True, slots=True)
class ChildSaInstalled(Event):
    """A CHILD SA (one inbound and one outbound ESP SA) is ready for the data plane.

    For a new CHILD SA this is emitted before the last message of its exchange is
    sent, so the inbound SA exists when the peer starts using it (RFC 7296 §2.8).
    """

    connection: str
    """Name of the connection."""
    child: str
    """Name of the CHILD SA configuration."""
    unique_id: int
    """Unique number of this CHILD SA inside the endpoint."""
    ike_sa_id: int
    """The IKE SA that negotiated it."""
    spi_in: int
    """SPI of the inbound ESP SA (chosen by us)."""
    spi_out: int
    """SPI of the outbound ESP SA (chosen by the peer)."""
    encr_id: int
    """IANA Transform Type 1 ID of the ESP cipher (e.g. 20 = AES-GCM-16)."""
    encr_key_bits: int
    """Cipher key length in bits (without an AEAD salt)."""
    integ_id: int
    """IANA Transform Type 3 ID of the integrity algorithm; 0 (NONE) for AEAD."""
    esn: bool
    """Extended sequence numbers negotiated (RFC 4303 §2.2.1)."""
    encr_key_in: bytes = field(repr=False)
    """Cipher key of the inbound SA; for AEAD ciphers it ends with the 4-byte salt."""
    integ_key_in: bytes = field(repr=False)
    """Integrity key of the inbound SA; empty for AEAD."""
    encr_key_out: bytes = field(repr=False)
    """Cipher key of the outbound SA; for AEAD ciphers it ends with the 4-byte salt."""
    integ_key_out: bytes = field(repr=False)
    """Integrity key of the outbound SA; empty for AEAD."""
    local_ts: tuple[TrafficSelector, ...]
    """Our side's negotiated traffic selectors."""
    remote_ts: tuple[TrafficSelector, ...]
    """The peer's side's negotiated traffic selectors."""
    udp_encap: bool
    """True: ESP travels in UDP (RFC 3948) between `local` and `remote`; else raw ESP."""
    local: Address
    """Our outer address and port (port matters only with `udp_encap`)."""
    remote: Address
    """The peer's outer address and port."""
    lifetime: float
    """Seconds until the SA must be gone (hard expiry)."""
    rekey_time: float
    """Seconds until rekeying is due (already randomised)."""
    life_bytes: int
    """Hard byte limit per direction; 0 for none."""
    life_packets: int
    """Hard packet limit per direction; 0 for none."""
    replay_window: int
    """Anti-replay window size in packets; 0 disables the check."""
    mode: str = "tunnel"
    """IPsec mode; always "tunnel" for now."""
    rekey_of: int | None = None
    """unique_id of the CHILD SA this one replaces (rekey), else None."""
    initiator: bool = False
    """True if we sent the request of the exchange that created it (IKE_AUTH or
    CREATE_CHILD_SA). At a rekey the initiator switches outbound traffic to the new SA
    at once; the responder waits for the old SA's Delete or the first packet on the new
    inbound SA (RFC 7296 §2.8)."""
    pfs: str = ""
    """The key exchanges of its PFS joined by "+" ("x25519+mlkem768" with an
    IKE_FOLLOWUP_KE, RFC 9370 §2.2.4); "" when it has none (IKE_AUTH's CHILD SA)."""
    quantum_safe: bool = False
    """An ML-KEM key exchange went into its KEYMAT (its PFS)."""
    partial_csum: bool = False
    """Both ends are lockgates that agreed in IKE_SA_INIT on TCP segments with
    partial checksums inside ESP (marked `esp.sa.NH_PARTIAL_CSUM`)."""
    per_resource: bool = False
    """One of a group of CHILD SAs with the same selectors, one per data-plane worker
    (RFC 9611): both sides sent SA_RESOURCE_INFO when the group's SAs were created (a
    rekey inherits it from the SA it replaces). Its worker is `spi_in` modulo the
    endpoint's `resources`, for every CHILD SA, per-resource or not."""


@dataclass(frozen=True, slots=True)
class ChildSaDeleted(Event):
    """A CHILD SA's two ESP SAs must be removed from the data plane."""

    connection: str
    """Name of the connection."""
    child: str
    """Name of the CHILD SA configuration."""
    unique_id: int
    """The CHILD SA's unique number (as in ChildSaInstalled)."""
    ike_sa_id: int
    """The IKE SA it belonged to."""
    spi_in: int
    """SPI of the inbound ESP SA."""
    spi_out: int
    """SPI of the outbound ESP SA."""
    reason: str
    """Why, for an operator ("deleted by peer", "rekeyed", "IKE SA deleted")."""
    cause: DeleteCause = DeleteCause.OTHER
    """Why, for code: EXPIRED, LIMIT_REACHED, REKEYED, IKE_SA_DELETED, ..."""


@dataclass(frozen=True, slots=True)
class ChildSaFailed(Event):
    """A CHILD SA could not be set up although its IKE SA may live on."""

    connection: str
    """Name of the connection."""
    child: str
    """Name of the CHILD SA configuration."""
    ike_sa_id: int
    """The IKE SA that tried."""
    reason: str
    """What went wrong, for an operator."""
    notify: int | None
    """The IKEv2 notify error type involved (e.g. TS_UNACCEPTABLE), if any."""


@dataclass(frozen=True, slots=True)
class IkeSaAddressChanged(Event):
    """An established IKE SA now uses other addresses or ports (RFC 7296 §2.23,
    RFC 4555 §3.5).

    Behind a NAT the IKE SA follows the source of the peer's latest authenticated
    message (a NAT mapping moved), and without one it follows the initiator's move to
    port 4500 once; with MOBIKE it moves where the peer's UPDATE_SA_ADDRESSES came
    from, and NAT detection in that request may switch UDP encapsulation on or off.
    The CHILD SAs' ESP must follow, keeping their SPIs. Emitted once per change, for
    the IKE SA whose `ike_sa_id` it names.
    """

    connection: str
    """Name of the connection."""
    ike_sa_id: int
    """The IKE SA's unique number."""
    old_local: Address
    """Our address and port before the change."""
    old_remote: Address
    """The peer's address and port before the change."""
    local: Address
    """Our address and port from now on."""
    remote: Address
    """The peer's address and port from now on."""
    udp_encap: bool = True
    """Whether ESP travels in UDP from now on (RFC 3948)."""
    udp_encap_reason: str = ""
    """Why it does, for logs ("" when it does not)."""
    nat_local: bool = False
    """A NAT is in front of us from now on (RFC 7296 §2.23)."""
    nat_remote: bool = False
    """A NAT is in front of the peer from now on (or it fakes one)."""
    mobike: bool = False
    """The peer moved the SA with UPDATE_SA_ADDRESSES (RFC 4555 §3.5)."""


@dataclass(frozen=True, slots=True)
class NatKeepaliveDue(Event):
    """Send one NAT-keepalive datagram (a single 0xFF byte, RFC 3948 §2.3) now.

    Emitted when a NAT was detected on our side and nothing was sent to the peer's
    port 4500 for the keepalive interval; the daemon sends it from `local` to
    `remote`, since it also owns the ESP-in-UDP traffic on that socket.
    """

    ike_sa_id: int
    """The IKE SA whose NAT mapping needs keeping."""
    local: Address
    """Our address and port 4500 (the socket to send from)."""
    remote: Address
    """The peer's address and port."""
