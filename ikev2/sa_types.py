"""The plain data that an IKE SA, its tasks and the endpoint share.

`ikev2.sa` runs an IKE SA, `ikev2.tasks` the exchanges under it, `ikev2.endpoint` the
SAs of one gateway; all three speak of the states and CHILD SAs below. Kept apart so
that each imports them without importing the others.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from ikev2.config import ChildConfig
from ikev2.crypto.keys import IkeKeys
from ikev2.crypto.registry import ChildSuite, IkeSuite
from ikev2.crypto.sk import SkCipher
from ikev2.events import Address
from ikev2.ts import TrafficSelector

SaT = TypeVar("SaT")
"""The IKE SA type of `PeerIkeRekey`: `ikev2.sa.IkeSa`, which this module cannot name."""


class IkeSaState(enum.Enum):
    """Life of an IKE SA."""

    CREATED = "created"
    """Initiator before its first request."""
    HALF_OPEN = "half-open"
    """IKE_SA_INIT under way or done; IKE_AUTH not finished."""
    ESTABLISHED = "established"
    """Both peers authenticated."""
    DELETING = "deleting"
    """Our Delete is queued or outstanding."""
    REKEYED = "rekeyed"
    """Replaced by a new IKE SA (§2.18); waits for the Delete that ends it quietly."""
    DELETED = "deleted"
    """Gone; the endpoint forgets it after taking its last datagrams and events."""


class IkeDropReason(enum.StrEnum):
    """Why a received IKE datagram was dropped: the keys of `Endpoint.drops`.

    Each dropped datagram counts under exactly one reason. `COOKIE_DEMANDED` is not
    strictly a drop (the request is answered, statelessly, RFC 7296 §2.6) but no SA is
    made for it, so it is counted alongside.
    """

    UNPARSABLE = "unparsable"
    """The IKE header or an IKE_SA_INIT request does not decode."""
    BAD_VERSION = "bad_version"
    """The header's major version is not 2 (§2.5)."""
    UNKNOWN_SPI = "unknown_spi"
    """No IKE SA has the SPI the message is addressed to."""
    UNEXPECTED_EXCHANGE = "unexpected_exchange"
    """An exchange type the SA's state or the zero SPIr does not allow."""
    NO_CONNECTION = "no_connection"
    """An IKE_SA_INIT that no configured connection accepts."""
    HALF_OPEN_CAP = "half_open_cap"
    """An IKE_SA_INIT while `max_half_open` responder SAs were waiting."""
    COOKIE_DEMANDED = "cookie_demanded"
    """An IKE_SA_INIT answered with a COOKIE demand instead of an SA (not a drop)."""
    WRONG_ROLE = "wrong_role"
    """The I flag claims our own role (§3.1)."""
    UNEXPECTED_RESPONSE = "unexpected_response"
    """A response to no outstanding request, or of another exchange type."""
    RETRANSMIT_ANSWERED = "retransmit_answered"
    """A retransmitted request (or a fragment of one, RFC 7383 §2.6.1), answered from
    the cached response (§2.1)."""
    OUT_OF_WINDOW = "out_of_window"
    """A request whose Message ID is outside the window (§2.3)."""
    INTEGRITY_FAILURE = "integrity_failure"
    """The SK payload's ICV or AEAD tag did not verify (§2.21.1)."""
    INVALID_MESSAGE = "invalid_message"
    """Decrypted (or unprotected) but malformed, and not answered."""
    INVALID_IKE_SPI_SENT = "invalid_ike_spi_sent"
    """A protected request for an IKE SA we do not know (we may have restarted),
    answered with an unprotected INVALID_IKE_SPI (§2.21.4; like COOKIE_DEMANDED, not
    strictly a drop)."""
    INVALID_SPI_SENT = "invalid_spi_sent"
    """An ESP packet of an SPI we do not know, reported with `Endpoint.esp_spi_unknown`,
    answered with an unprotected INVALID_SPI (§1.5, §2.21.4; not a received IKE
    datagram, counted alongside the IKE answers)."""
    ANSWER_RATE_LIMITED = "answer_rate_limited"
    """A request for an unknown IKE SA, or an ESP packet of an unknown SPI reported
    with `Endpoint.esp_spi_unknown`, left unanswered: the rate limit of unprotected
    answers was reached (§2.21.4), so that we cannot be made into a reflector."""
    RESTART_HINT = "restart_hint"
    """An unprotected INVALID_SPI or INVALID_IKE_SPI from a peer's address that started
    a fast liveness check of its IKE SA (§2.21.4: a hint, never proof; nothing is
    deleted and nothing answered)."""
    HINT_RATE_LIMITED = "hint_rate_limited"
    """Such a hint for an IKE SA that acted on one less than `HINT_INTERVAL` ago."""
    BACKLOG_FULL = "backlog_full"
    """Received while the caller's backlog of datagrams waiting to be processed was
    full (counted by the caller, `Endpoint.count_drop`: the core never saw it)."""


@dataclass(slots=True)
class Intermediate:
    """The IKE_INTERMEDIATE exchanges of one IKE SA (RFC 9242, RFC 9370 §2.2).

    Made by IKE_SA_INIT when the chosen proposal has additional key exchanges, and
    dropped once IKE_AUTH is over.
    """

    rounds: list[tuple[int, int]]
    """(transform type, method) of the additional key exchanges still to run."""
    count: int = 0
    """IKE_INTERMEDIATE exchanges done (so IKE_AUTH's Message ID is count + 1)."""
    int_auth_i: bytes = b""
    """IntAuth_i so far: the chain over the initiator's messages (RFC 9242 §3.3.1)."""
    int_auth_r: bytes = b""
    """IntAuth_r so far: the chain over the responder's messages."""
    deferred: tuple[IkeSuite, IkeKeys] | None = None
    """Responder: keys to take once this exchange's response is sealed (RFC 9370
    §2.2.2: the response still goes out under the old ones)."""
    answered_under: SkCipher | None = None
    """Responder: the inbound cipher of the last IKE_INTERMEDIATE request, which its
    retransmitted fragments still use after our keys changed (RFC 7383 §2.6.1)."""


class Datagram(NamedTuple):
    """An IKE message to send from `local` to `remote`, bare: the daemon puts the
    non-ESP marker in front when `local` is the NAT-T port (RFC 3948 §2.2)."""

    data: bytes
    local: Address
    remote: Address


@dataclass(frozen=True)
class ResourceRetry:
    """One more CHILD SA of a per-resource group (RFC 9611) to ask for again at `at`:
    the peer answered TEMPORARY_FAILURE (RFC 7296 §2.25), as it does while an IKE
    rekey is under way."""

    at: float
    config: ChildConfig
    like: tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]
    """The group's (local, remote) selectors, as `CreateChild(like=...)` takes them."""


@dataclass(frozen=True)
class PeerRekey:
    """A rekey of one of our CHILD SAs that the peer started and we answered (§2.8.1)."""

    new_child: int | None
    """unique_id of the CHILD SA that exchange created; None while its additional key
    exchanges (IKE_FOLLOWUP_KE, RFC 9370 §2.2.4) still run."""
    lowest_nonce: bytes
    """The lower of that exchange's two nonces: the lowest nonce loses a collision."""


@dataclass(frozen=True)
class PeerIkeRekey(Generic[SaT]):
    """The peer's rekey of this IKE SA, answered while our own was on the wire (§2.8.2)."""

    new_sa: SaT
    """The IKE SA that the peer's exchange created (we are its responder)."""
    lowest_nonce: bytes
    """The lower of that exchange's two nonces: the new SA with the lowest nonce loses."""


@dataclass(slots=True)
class ChildSa:
    """A CHILD SA (pair of ESP SAs) negotiated under this IKE SA."""

    unique_id: int
    """Unique number inside the endpoint (as in the events)."""
    config: ChildConfig
    """Its configuration."""
    spi_in: int
    """Our inbound ESP SPI."""
    spi_out: int
    """The peer's inbound ESP SPI: our outbound."""
    suite: ChildSuite
    """Negotiated algorithms."""
    local_ts: tuple[TrafficSelector, ...]
    """Our side's negotiated selectors."""
    remote_ts: tuple[TrafficSelector, ...]
    """The peer's side's negotiated selectors."""
    installed_at: float
    """When it was installed."""
    expire_at: float
    """Hard expiry."""
    rekey_at: float
    """When rekeying is due (part 2 rekeys; until then it is informational)."""
    deleting: bool = False
    """Our Delete for it is queued or outstanding."""
    delete_reason: str = ""
    """Why we delete it (for its ChildSaDeleted), once `deleting`."""
    rekeying: bool = False
    """Our CREATE_CHILD_SA rekeying it is queued or outstanding."""
    no_successor: bool = False
    """We delete it and want nothing in its place (an operator's `down`, a reload):
    a rekey of ours still under way deletes the SA it makes. Not set when a hard
    limit ends it, where the rekey's SA is what carries the traffic on."""
    peer_rekey: PeerRekey | None = None
    """Set when the peer rekeyed it; the peer then deletes it (§2.8)."""
    per_resource: bool = False
    """One of a group of CHILD SAs with the same selectors, one per resource of ours
    (RFC 9611): both sides sent SA_RESOURCE_INFO, or the SA it rekeys was one."""


__all__ = [
    "ChildSa",
    "Datagram",
    "IkeDropReason",
    "IkeSaState",
    "PeerIkeRekey",
    "PeerRekey",
]
