"""One IKE SA as a sans-I/O state machine (RFC 7296).

Inputs: `receive_message(data, header, local, remote, now)`, `handle_timer(now)` and
the API calls `initiate`, `delete`, `delete_child`. Outputs: `datagrams_to_send(now)`,
`next_event()`, `get_timer()`. No sockets, no clock, no randomness of its own (an
injected `RandomSource` supplies SPIs, nonces, DH keys and IVs).

Exchanges are lists of tasks (`ikev2.tasks`); the table `_REQUEST_TASKS` says which
requests the peer may send in which state, so an unexpected message is refused in
one place rather than falling through. Message IDs, retransmission and the response
cache live in `ikev2.task_manager`.

Ordering promise: events are queued before the datagram that they precede, so a
caller that drains `next_event()` before `datagrams_to_send()` installs the inbound
SA of a new CHILD SA before the message that completes it leaves (RFC 7296 §2.8).
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from ikev2.codec import (
    Delete,
    IkeHeader,
    Message,
    Notify,
    Payload,
    check_payloads,
    decode_payloads,
    encode_message,
)
from ikev2.config import ChildConfig, ConnectionConfig
from ikev2.constants import IKE_HEADER_LEN, NON_ESP_MARKER, ExchangeType, ProtocolId, enum_name
from ikev2.crypto.dh import KeyExchange
from ikev2.crypto.key_pool import KeyPool
from ikev2.crypto.keys import IkeKeys
from ikev2.crypto.registry import ChildSuite, IkeSuite
from ikev2.crypto.rng import RandomSource
from ikev2.crypto.sk import SkCipherPair
from ikev2.errors import (
    IkeError,
    IntegrityCheckFailed,
    InvalidKePayload,
    InvalidSyntax,
    LocalProtocolError,
    PeerErrorNotify,
    UnsupportedCriticalPayload,
)
from ikev2.events import (
    REASON_REKEYED,
    Address,
    ChildSaDeleted,
    Event,
    IkeSaAddressChanged,
    IkeSaDeleted,
    IkeSaFailed,
    IkeSaRekeyed,
    NatKeepaliveDue,
    child_delete_cause,
    ike_delete_cause,
)
from ikev2.fragments import Reassembler, is_fragmented, open_fragment, seal_for_size
from ikev2.identity import Identity
from ikev2.task_manager import GiveUp, RequestKind, RetransmitPolicy, TaskManager
from ikev2.tasks import (
    CHILD_TASKS,
    AnswerCreateChild,
    ChildCreate,
    ChildDelete,
    CreateChild,
    IkeAuth,
    IkeDelete,
    IkeInit,
    IkeNatd,
    IkeRekey,
    Informational,
    NotifyOnly,
    RefuseCreateChild,
    RetryExchange,
    Task,
)
from ikev2.ts import TrafficSelector

log = logging.getLogger(__name__)

REKEYED_LINGER = 30.0
"""Least seconds a replaced IKE SA waits for the Delete that ends it."""

NAT_KEEPALIVE_INTERVAL = 20.0
"""Seconds between NAT keepalives (strongSwan's default, RFC 3948 §4 suggests 20 s)."""

MAX_INIT_RETRIES = 5
"""IKE_SA_INIT retries after INVALID_KE_PAYLOAD or COOKIE before giving up."""


@functools.lru_cache(maxsize=64)
def _retransmit_policy(timeout: float, base: float, tries: int) -> RetransmitPolicy:
    # Frozen: the SAs of a connection share one instead of holding one each.
    return RetransmitPolicy(timeout=timeout, base=base, tries=tries)


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
    NOT_IKE = "not_ike"
    """On port 4500 without the non-ESP marker: ESP the caller should have taken."""
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


class Datagram(NamedTuple):
    """A UDP payload to send from `local` to `remote` (with the non-ESP marker on 4500)."""

    data: bytes
    local: Address
    remote: Address


@dataclass(frozen=True)
class PeerRekey:
    """A rekey of one of our CHILD SAs that the peer started and we answered (§2.8.1)."""

    new_child: int
    """unique_id of the CHILD SA that exchange created."""
    lowest_nonce: bytes
    """The lower of that exchange's two nonces: the lowest nonce loses a collision."""


@dataclass(frozen=True)
class PeerIkeRekey:
    """The peer's rekey of this IKE SA, answered while our own was on the wire (§2.8.2)."""

    new_sa: IkeSa
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
    peer_rekey: PeerRekey | None = None
    """Set when the peer rekeyed it; the peer then deletes it (§2.8)."""


@dataclass
class Exchange:
    """An exchange we initiate: its type and the tasks that build and read it."""

    exchange_type: ExchangeType
    """Exchange type of the request."""
    tasks: list[Task]
    """Tasks in the order they add payloads."""
    one_shot: bool = False
    """Sent once without waiting for an answer (a last notify before the SA goes)."""


class IkeSa:
    """An IKE SA, initiator or responder, and the CHILD SAs under it."""

    # A gateway holds thousands: slots instead of a per-object dict (about 1 KiB less
    # per IKE SA). Every attribute set in __init__ is listed here.
    __slots__ = (
        "_child_ids",
        "_events",
        "_ike_ids",
        "_out",
        "_reassembler",
        "_state",
        "candidates",
        "children",
        "config",
        "cookie",
        "created_at",
        "delete_reason",
        "encap_forced",
        "established_at",
        "expire_at",
        "fragmentation",
        "half_open_deadline",
        "ike_rekey_at",
        "ike_rekeying",
        "ike_sa_id",
        "init_local",
        "init_remote",
        "init_request",
        "init_response",
        "init_retries",
        "initial_child_failed",
        "initial_contact",
        "initiator",
        "ke",
        "keepalive_at",
        "key_pool",
        "keys",
        "last_heard",
        "local",
        "nat_local",
        "nat_port",
        "nat_remote",
        "nonce_i",
        "nonce_r",
        "now",
        "on_change",
        "on_drop",
        "peer_deleted_unknown",
        "peer_hashes",
        "peer_id",
        "peer_ike_rekey",
        "peer_prefers_udp",
        "rekeyed_from",
        "rekeyed_into",
        "remote",
        "rng",
        "send_initial_contact",
        "silent",
        "sk",
        "spawned",
        "spi_i",
        "spi_r",
        "suite",
        "tm",
        "udp_unanswered",
        "unconfirmed_until",
        "wall_clock",
        "withhold_udp_vid",
    )

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        initiator: bool,
        local: Address,
        remote: Address,
        rng: RandomSource,
        ike_sa_id: int,
        child_ids: Iterator[int],
        now: float,
        nat_port: int = 4500,
        candidates: tuple[ConnectionConfig, ...] = (),
        half_open_timeout: float = 30.0,
        ike_ids: Iterator[int] | None = None,
        wall_clock: Callable[[], float] = time.time,
        key_pool: KeyPool | None = None,
    ) -> None:
        self.on_change: Callable[[IkeSa], None] = _unwatched
        """Called whenever this SA may have new datagrams, events, a new state or an
        earlier timer, also when another IKE SA (a rekey's partner) caused it: the
        endpoint collects only the SAs that called it, not every SA on every poll."""
        self.on_drop: Callable[[IkeDropReason], None] = _uncounted
        """Called once for each received message this SA drops, with the reason."""
        self.config = config
        """The connection; a responder may switch to another candidate in IKE_AUTH."""
        self.candidates = candidates or (config,)
        """Connections the responder may still pick by identity in IKE_AUTH."""
        self.initiator = initiator
        """True if we are the original initiator."""
        self.local = local
        """Our address and port in use."""
        self.remote = remote
        """The peer's address and port in use."""
        self.init_local = local
        """Our address and port of IKE_SA_INIT (what NAT-D hashed)."""
        self.init_remote = remote
        """The peer's address and port of IKE_SA_INIT."""
        self.rng = rng
        self.key_pool = key_pool
        """Key pairs made while the endpoint was idle (None: each made when needed)."""
        self.now = now
        """Time of the input being processed (tasks read it; nothing here reads a clock)."""
        self.ike_sa_id = ike_sa_id
        self.nat_port = nat_port
        self._child_ids = child_ids
        self._ike_ids = ike_ids if ike_ids is not None else itertools.count(ike_sa_id + 1)
        self.wall_clock = wall_clock
        """Calendar time (POSIX seconds), only to check certificate validity dates."""
        self._state = IkeSaState.CREATED if initiator else IkeSaState.HALF_OPEN
        spi = self.random_spi(8)
        self.spi_i = spi if initiator else bytes(8)
        self.spi_r = bytes(8) if initiator else spi
        self.tm: TaskManager[Exchange] = TaskManager(
            _retransmit_policy(
                config.retransmit_timeout, config.retransmit_base, config.retransmit_tries
            )
        )
        # Negotiated in IKE_SA_INIT.
        self.suite: IkeSuite | None = None
        self.ke: KeyExchange | None = None
        self.nonce_i = b""
        self.nonce_r = b""
        self.init_request = b""
        """IKE_SA_INIT request as sent (RealMessage1 of §2.15)."""
        self.init_response = b""
        """IKE_SA_INIT response as sent (RealMessage2 of §2.15)."""
        self.keys: IkeKeys | None = None
        self.sk: SkCipherPair | None = None
        self.peer_hashes: tuple[int, ...] | None = None
        """Hash algorithms of the peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4)."""
        self.fragmentation = False
        """Both sides sent IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 §2.3)."""
        self._reassembler: Reassembler | None = None
        self.init_retries = 0
        self.cookie = b""
        # NAT traversal (§2.23).
        self.nat_local = False
        """A NAT was detected in front of us."""
        self.nat_remote = False
        """A NAT was detected in front of the peer (or the peer fakes one)."""
        self.peer_prefers_udp = False
        """Both sides sent lockgate's Vendor ID with `encap = "auto"` (ike_natd)."""
        self.withhold_udp_vid = False
        """Do not send that Vendor ID: an earlier IKE SA with this connection's peer got
        no answer on port 4500 after the two agreed on UDP (the endpoint sets it)."""
        self.udp_unanswered = False
        """This IKE SA failed that way: IKE_SA_INIT answered on port 500, IKE_AUTH never
        on 4500, where the Vendor ID alone (no NAT) had moved it."""
        self.encap_forced = config.encap == "force"
        """We faked NAT-D in IKE_SA_INIT (`encap = "force"`). Kept from the connection
        IKE_SA_INIT ran with: a responder may pick another one at IKE_AUTH, and the
        framing must stay what the wire agreed."""
        # IKE_AUTH.
        self.peer_id: Identity | None = None
        self.children: dict[int, ChildSa] = {}
        self.peer_deleted_unknown: tuple[int, ...] = ()
        """The last ESP SPIs (the peer's inbound) the peer deleted before we knew them:
        the answer creating such an SA may still be on its way (see
        `forget_deleted_child`). A tuple: nothing per SA until it happens."""
        self.created_at = now
        self.established_at: float | None = None
        self.expire_at: float | None = None
        self.half_open_deadline: float | None = None if initiator else now + half_open_timeout
        self.keepalive_at: float | None = None
        self.delete_reason = ""
        self.last_heard = now
        """When the peer last sent an authenticated message (or `heard_from_peer`)."""
        self.initial_contact = False
        """The peer sent INITIAL_CONTACT (§2.4): its older IKE SAs with us are stale."""
        self.send_initial_contact = config.initial_contact
        """Send INITIAL_CONTACT in our IKE_AUTH request: the endpoint clears it when we
        hold another IKE SA with this peer, which the peer must not drop (§2.4)."""
        self.ike_rekey_at: float | None = None
        """When rekeying the IKE SA is due (randomised below the lifetime)."""
        self.ike_rekeying = False
        """Our IKE rekey is queued or outstanding."""
        self.rekeyed_into: IkeSa | None = None
        """The IKE SA that replaced this one (§2.18)."""
        self.rekeyed_from: IkeSa | None = None
        """The IKE SA whose rekey created this one, until this one takes over."""
        self.spawned: list[IkeSa] = []
        """IKE SAs our rekey exchanges created (the endpoint routes their SPIs)."""
        self.peer_ike_rekey: PeerIkeRekey | None = None
        """The peer's crossing IKE rekey, kept until ours completes (§2.8.2)."""
        self.unconfirmed_until: float | None = None
        """Set while the peer may not know this IKE SA yet (it started the rekey that
        made it and may not have our answer): our requests wait until it shows it does
        (any message on this SA, or its Delete of the old one), or until this time."""
        self.silent = False
        """True while the user has not heard of this IKE SA (a rekey's candidate) or
        must not any more (it lost a rekey collision): it then ends without events."""
        self.initial_child_failed = False
        """The CHILD SA of IKE_AUTH failed: an initiator then deletes the IKE SA."""
        # A list, not a deque: an SA queues a few events at a time, and an empty deque
        # costs some 600 octets (a block of 64 slots) against 56 for a list.
        self._events: list[Event] = []
        self._out: list[Datagram] = []

    # --- state ----------------------------------------------------------------------------

    @property
    def state(self) -> IkeSaState:
        """Where the SA is in its life (`IkeSaState`)."""
        return self._state

    @state.setter
    def state(self, value: IkeSaState) -> None:
        self._state = value
        self.on_change(self)

    # --- identity -----------------------------------------------------------------------

    @property
    def reassembler(self) -> Reassembler:
        """Incoming IKE fragments (RFC 7383), made when first asked for (a fragment
        arrives): most SAs never get one and keep no reassembler."""
        if self._reassembler is None:
            self._reassembler = Reassembler()
        return self._reassembler

    @property
    def spi_local(self) -> bytes:
        """Our IKE SPI."""
        return self.spi_i if self.initiator else self.spi_r

    @property
    def spi_remote(self) -> bytes:
        """The peer's IKE SPI (zero until known)."""
        return self.spi_r if self.initiator else self.spi_i

    @property
    def name(self) -> str:
        """For log lines: connection name and unique number."""
        return f"{self.config.name}[{self.ike_sa_id}]"

    @property
    def udp_encap(self) -> bool:
        """Whether ESP travels in UDP: a NAT on either side, forced, or chosen with a
        lockgate peer (§2.23 lets either side choose it)."""
        return self.nat_local or self.nat_remote or self.peer_prefers_udp or self.encap_forced

    @property
    def offers_udp_vid(self) -> bool:
        """Whether IKE_SA_INIT carries lockgate's Vendor ID, and the peer's counts: with
        `encap = "auto"`, unless port 4500 went unanswered before (tasks.ike_natd)."""
        return self.config.encap == "auto" and not self.withhold_udp_vid

    def new_key_exchange(self, group: int) -> KeyExchange:
        """A key pair of `group` for one exchange, never used before (§2.12 would allow
        reuse): made ahead by the endpoint's pool if it has one in stock."""
        if self.key_pool is not None:
            return self.key_pool.take(group)
        return KeyExchange.generate(group, self.rng)

    @property
    def udp_encap_reason(self) -> str:
        """Why ESP travels in UDP, for logs and status ("" when it does not)."""
        if self.encap_forced:
            return 'forced (encap = "force")'
        if self.nat_local:
            return "we are behind a NAT"
        if self.nat_remote:
            return "the peer is behind a NAT (or forces UDP)"
        if self.peer_prefers_udp:
            return 'the peer is a lockgate (encap = "auto")'
        return ""

    def random_spi(self, size: int) -> bytes:
        """A random SPI that is not zero (and, for ESP, not in the reserved 1..255)."""
        while True:
            spi = self.rng.token_bytes(size)
            if int.from_bytes(spi, "big") > 255:
                return spi

    def next_child_id(self) -> int:
        """A fresh CHILD SA unique number."""
        return next(self._child_ids)

    # --- API ----------------------------------------------------------------------------

    def initiate(self, now: float, child: ChildConfig | None = None) -> None:
        """Start IKE_SA_INIT and IKE_AUTH with the first (or given) CHILD SA."""
        if self.state is not IkeSaState.CREATED or not self.initiator:
            raise LocalProtocolError("initiate() is for a new initiator IKE SA")
        self.now = now
        self.state = IkeSaState.HALF_OPEN
        first = child or self.config.children[0]
        self.tm.queue(Exchange(ExchangeType.IKE_SA_INIT, [IkeInit(), IkeNatd()]))
        self.tm.queue(Exchange(ExchangeType.IKE_AUTH, [IkeAuth(), ChildCreate(first)]))
        if child is None:
            # The connection's other CHILD SAs follow with CREATE_CHILD_SA (§1.3.1).
            for other in self.config.children[1:]:
                if other.start == "initiate":
                    self.tm.queue(Exchange(ExchangeType.CREATE_CHILD_SA, [CreateChild(other)]))
        log.info("%s: initiating IKE SA to %s", self.name, _fmt(self.remote))
        self._send_next(now)

    def delete(self, now: float, reason: str = "deleted by operator") -> None:
        """Delete this IKE SA: an INFORMATIONAL Delete when established, else just drop it."""
        self.now = now
        if self.state in (IkeSaState.DELETED, IkeSaState.DELETING):
            return
        if self.state is not IkeSaState.ESTABLISHED:
            self.fail(f"abandoned before it was established: {reason}", None)
            return
        log.info("%s: deleting IKE SA (%s)", self.name, reason)
        self.state = IkeSaState.DELETING
        self.delete_reason = reason
        self.tm.pending.clear()
        self.tm.queue(Exchange(ExchangeType.INFORMATIONAL, [IkeDelete(reason)]))
        self._send_next(now)

    def delete_child(self, unique_id: int, now: float, reason: str = "deleted by operator") -> None:
        """Delete one CHILD SA with an INFORMATIONAL Delete of its inbound SPI."""
        self.now = now
        child = self.children.get(unique_id)
        if child is None:
            raise LocalProtocolError(f"no CHILD SA {unique_id} in IKE SA {self.ike_sa_id}")
        if child.deleting or self.state is not IkeSaState.ESTABLISHED:
            return
        child.deleting, child.delete_reason = True, reason
        self.tm.queue(Exchange(ExchangeType.INFORMATIONAL, [ChildDelete(child, reason)]))
        self._send_next(now)

    def expire_child(self, child: ChildSa, now: float, reason: str) -> None:
        """A hard limit ended a CHILD SA: stop using it at once, then tell the peer.

        RFC 4301 §4.4.2.1: an SA past its hard lifetime must not be used, so its
        ChildSaDeleted does not wait for the peer's answer to our Delete (§1.4.1).
        """
        self.now = now
        child.deleting, child.delete_reason = True, reason
        self.remove_child(child, reason)
        if self.state is IkeSaState.ESTABLISHED:
            self.queue_exchange(
                Exchange(ExchangeType.INFORMATIONAL, [ChildDelete(child, reason)]), now
            )

    def rekey_child(self, unique_id: int, now: float) -> None:
        """Rekey a CHILD SA with CREATE_CHILD_SA (§1.3.3); the old one goes once the new is up."""
        child = self.children.get(unique_id)
        if child is None:
            raise LocalProtocolError(f"no CHILD SA {unique_id} in IKE SA {self.ike_sa_id}")
        if child.deleting or child.rekeying or self.state is not IkeSaState.ESTABLISHED:
            return
        child.rekeying = True
        log.info("%s: rekeying CHILD SA %s{%d}", self.name, child.config.name, unique_id)
        self.queue_exchange(
            Exchange(ExchangeType.CREATE_CHILD_SA, [CreateChild(child.config, child)]), now
        )

    def rekey_ike(self, now: float) -> None:
        """Rekey this IKE SA with CREATE_CHILD_SA (§1.3.2); CHILD SAs move to the new one."""
        if self.state is not IkeSaState.ESTABLISHED or self.ike_rekeying:
            return
        self.ike_rekeying = True
        log.info("%s: rekeying the IKE SA", self.name)
        self.queue_exchange(Exchange(ExchangeType.CREATE_CHILD_SA, [IkeRekey()]), now)

    def spawn_rekeyed(
        self,
        *,
        initiator: bool,
        spi_i: bytes,
        spi_r: bytes,
        suite: IkeSuite,
        keys: IkeKeys,
        nonce_i: bytes,
        nonce_r: bytes,
    ) -> IkeSa:
        """The IKE SA a rekey exchange created (§2.18), not in use until `hand_over`.

        The side that sent the rekey request is the new SA's initiator; Message IDs
        start again at 0. Until it takes over it is silent: after crossing rekeys one
        of the two new SAs is deleted again without the user ever hearing of it.
        """
        new = IkeSa(
            self.config,
            initiator=initiator,
            local=self.local,
            remote=self.remote,
            rng=self.rng,
            ike_sa_id=next(self._ike_ids),
            child_ids=self._child_ids,
            now=self.now,
            nat_port=self.nat_port,
            ike_ids=self._ike_ids,
            wall_clock=self.wall_clock,
            key_pool=self.key_pool,
        )
        new.spi_i, new.spi_r = spi_i, spi_r
        new.suite, new.keys = suite, keys
        new.sk = SkCipherPair.for_ike_sa(suite, keys, initiator)
        new.nonce_i, new.nonce_r = nonce_i, nonce_r
        new.init_local, new.init_remote = self.init_local, self.init_remote
        new.nat_local, new.nat_remote = self.nat_local, self.nat_remote
        new.peer_prefers_udp = self.peer_prefers_udp
        new.encap_forced = self.encap_forced
        new.fragmentation = self.fragmentation
        new.peer_id = self.peer_id
        new.established(self.now)
        new.rekeyed_from = self
        new.silent = True
        self.spawned.append(new)
        self.on_change(self)
        return new

    def hand_over(self, new: IkeSa) -> None:
        """`new` replaces this IKE SA (§2.18): the CHILD SAs move, this one turns REKEYED.

        This SA then only waits for the Delete that ends it quietly (ours if we
        started the surviving rekey, else the peer's).
        """
        if self.rekeyed_into is not None:
            return
        while new.rekeyed_into is not None:
            # `new` was itself rekeyed before this SA handed over (the peer rekeyed the
            # new IKE SA while our Delete of this one was still on its way): the CHILD
            # SAs go to the newest, or they would be stranded in a REKEYED SA.
            new = new.rekeyed_into
        new.silent = False
        new.rekeyed_from = None
        new.children, self.children = self.children, {}
        # Our CHILD SA exchanges still queued here (a Delete after a CHILD rekey, a
        # rekey) go out on the new IKE SA; anything else about this SA is moot.
        carried = [
            exchange
            for exchange in self.tm.pending
            if any(task.name in CHILD_TASKS for task in exchange.tasks)
        ]
        deletes = {
            id(task.child)
            for exchange in carried
            for task in exchange.tasks
            if isinstance(task, ChildDelete)
        }
        for child in new.children.values():
            child.rekeying = False
            if child.deleting and id(child) not in deletes:
                # Our Delete for it was outstanding here, or dropped from this SA's
                # queue by a Delete of the IKE SA that this rekey overtook: the peer
                # may still hold it, so it goes again on the new IKE SA (§1.4.1; a
                # peer that no longer has it answers with an empty Delete).
                carried.append(
                    Exchange(
                        ExchangeType.INFORMATIONAL,
                        [ChildDelete(child, child.delete_reason or REASON_REKEYED)],
                    )
                )
        for exchange in carried:
            for task in exchange.tasks:
                if isinstance(task, CreateChild) and task.old is not None:
                    task.old.rekeying = True
        self.rekeyed_into = new
        self.peer_ike_rekey = None
        self.wind_down()
        if not new.initiator:
            new.unconfirmed_until = self.now + self.tm.policy.give_up_after
        log.info("%s: IKE SA replaced by %s", self.name, new.name)
        self.emit(
            IkeSaRekeyed(
                self.config.name,
                self.ike_sa_id,
                new.ike_sa_id,
                int.from_bytes(new.spi_i, "big"),
                int.from_bytes(new.spi_r, "big"),
                new.suite.name if new.suite is not None else "",
            )
        )
        for exchange in carried:
            new.tm.queue(exchange)
        new.on_change(new)  # its CHILD SAs (and their timers) moved to it
        new._send_next(self.now)

    def wind_down(self) -> None:
        """No more exchanges of our own or timers: wait for the Delete (or its backstop)."""
        self.state = IkeSaState.REKEYED
        self.tm.pending.clear()
        self.ike_rekey_at = self.keepalive_at = None
        # The Delete normally ends this SA at once; this is only a backstop. It stays at
        # least as long as the peer may retransmit a request that this SA answered (a
        # lost rekey response is resent from its cache), judged by our own policy.
        self.expire_at = self.now + max(REKEYED_LINGER, self.tm.policy.give_up_after)
        self.on_change(self)

    def ike_rekeyed(self, new: IkeSa, lowest_nonce: bytes) -> None:
        """Our IKE rekey created `new`; settle a collision with the peer's (§2.8.2).

        With no crossing rekey, or when the peer's exchange had the lower nonce, `new`
        takes over and we delete this SA. Otherwise `new` is redundant: we created it,
        so we delete it; the peer's new SA takes over and the peer deletes this one.
        """
        theirs = self.peer_ike_rekey
        if theirs is not None and lowest_nonce < theirs.lowest_nonce:
            # bytes compare octet by octet, a prefix being lower: §2.8.1's "lowest".
            log.info(
                "%s: simultaneous IKE rekeying: ours (%s) has the lowest nonce and goes",
                self.name,
                new.name,
            )
            self.hand_over(theirs.new_sa)
            new.lose_collision()
            new.queue_exchange(
                Exchange(
                    ExchangeType.INFORMATIONAL,
                    [IkeDelete("redundant after simultaneous IKE rekeying")],
                ),
                self.now,
            )
            return
        self.hand_over(new)
        if theirs is not None:
            log.info(
                "%s: simultaneous IKE rekeying: the peer's %s has the lowest nonce",
                self.name,
                theirs.new_sa.name,
            )
            theirs.new_sa.lose_collision()  # its creator, the peer, deletes it
        self.retire()

    def ike_rekey_failed(self) -> bool:
        """Our IKE rekey failed; True if the peer's crossing rekey took over instead."""
        theirs = self.peer_ike_rekey
        if theirs is None:
            return False
        # §2.8.2: the peer did not see the collision (TEMPORARY_FAILURE) or our request
        # failed otherwise: the SA its exchange created is the only new one.
        self.hand_over(theirs.new_sa)
        return True

    def lose_collision(self) -> None:
        """This new IKE SA is redundant after crossing rekeys: silent until deleted."""
        self.silent = True
        self.rekeyed_from = None
        self.wind_down()

    def _take_over_from_parent(self) -> None:
        """The peer uses this candidate: its rekey won, so it replaces the old SA."""
        parent = self.rekeyed_from
        if parent is not None and self.silent and self.state is IkeSaState.ESTABLISHED:
            parent.hand_over(self)

    def retire(self) -> None:
        """Delete this replaced IKE SA (we started the rekey, so the Delete is ours, §2.8)."""
        self.tm.queue(Exchange(ExchangeType.INFORMATIONAL, [IkeDelete("rekeyed")]))
        self._send_next(self.now)

    def child_limit_reached(self, unique_id: int, now: float, *, hard: bool) -> None:
        """The data plane counted a CHILD SA's bytes or packets up to a limit.

        Soft (the rekey share of `life_bytes`/`life_packets`): rekey it; hard: it
        must not carry more traffic, so delete it.
        """
        child = self.children.get(unique_id)
        if child is None or child.deleting:
            return
        if hard:
            self.expire_child(child, now, "byte or packet limit reached")
        elif not child.rekeying and child.peer_rekey is None:
            self.rekey_child(unique_id, now)

    def outstanding_tasks(self) -> set[str]:
        """Names of the tasks of our request on the wire (empty if none)."""
        out = self.tm.outstanding
        return set() if out is None else {task.name for task in out.context.tasks}

    def heard_from_peer(self, now: float) -> None:
        """The peer showed it is alive some other way (ESP arrived): no liveness check yet."""
        self.last_heard = max(self.last_heard, now)

    def _dpd_due(self) -> float | None:
        """When a liveness check is due (RFC 7296 §2.4), or None."""
        interval = self.config.dpd_interval
        if (
            interval <= 0
            or self.state is not IkeSaState.ESTABLISHED
            or self.tm.outstanding is not None
            or self.tm.pending
        ):
            return None
        return self.last_heard + interval

    def create_child(self, config: ChildConfig, now: float) -> None:
        """Negotiate one more CHILD SA under this IKE SA with CREATE_CHILD_SA (§1.3.1)."""
        if self.state not in (IkeSaState.ESTABLISHED, IkeSaState.HALF_OPEN, IkeSaState.CREATED):
            raise LocalProtocolError(f"IKE SA {self.ike_sa_id} is going away")
        self.queue_exchange(Exchange(ExchangeType.CREATE_CHILD_SA, [CreateChild(config)]), now)

    def queue_exchange(self, exchange: Exchange, now: float) -> None:
        """Queue an exchange we initiate; it goes out when the window allows (§2.3)."""
        self.now = now
        if self.state is IkeSaState.DELETED:
            raise LocalProtocolError(f"IKE SA {self.ike_sa_id} is gone")
        self.tm.queue(exchange)
        self._send_next(now)

    def check_liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL request: the peer must answer it (§1.4, §2.4)."""
        if self.state is IkeSaState.ESTABLISHED:
            self.queue_exchange(Exchange(ExchangeType.INFORMATIONAL, [Task()]), now)

    # --- outputs ------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        """Datagrams queued since the last call."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        """The oldest pending event, or None."""
        return self._events.pop(0) if self._events else None

    def emit(self, event: Event) -> None:
        """Queue an event for the user (tasks call this)."""
        self._events.append(event)
        self.on_change(self)

    def get_timer(self) -> float | None:
        """When `handle_timer` must next run, or None."""
        if self.state is IkeSaState.DELETED:
            return None
        # The endpoint asks after every change of every SA: no lists, one pass.
        due: float | None = None
        for t in (
            self.tm.get_timer(),
            self.unconfirmed_until,
            self.half_open_deadline,
            self.expire_at,
            self.keepalive_at,
            self.ike_rekey_at,
            self._reassembler.next_timeout() if self._reassembler is not None else None,
            self._dpd_due(),
        ):
            if t is not None and (due is None or t < due):
                due = t
        for c in self.children.values():
            if not c.deleting:
                if due is None or c.expire_at < due:
                    due = c.expire_at
                if not c.rekeying and c.peer_rekey is None and c.rekey_at < due:
                    due = c.rekey_at
        return due

    # --- input --------------------------------------------------------------------------

    def receive_message(
        self, data: bytes, header: IkeHeader, local: Address, remote: Address, now: float
    ) -> None:
        """A message for this IKE SA (without the non-ESP marker)."""
        if self.state is IkeSaState.DELETED:
            self.on_drop(IkeDropReason.UNKNOWN_SPI)
            return
        self.now = now
        if header.initiator == self.initiator:
            # The I flag says who sent it: a peer must not claim our role (§3.1).
            log.debug("%s: dropping message with our own role's I flag", self.name)
            self.on_drop(IkeDropReason.WRONG_ROLE)
            return
        if header.response:
            self._receive_response(data, header, local, remote, now)
        else:
            self._receive_request(data, header, local, remote, now)

    def _open(self, data: bytes, header: IkeHeader) -> Message | None:
        """Decode a received message, decrypting it for encrypted exchanges.

        None means a fragment was taken in and the message is not complete yet.
        """
        # `header` is decode_header(data), done by the endpoint to route the message.
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            return header.message(decode_payloads(header.next_payload, data[IKE_HEADER_LEN:]))
        if self.sk is None:
            raise InvalidSyntax("encrypted message before keys exist")
        if is_fragmented(data):
            if not self.fragmentation:
                raise InvalidSyntax("IKE fragment although fragmentation was not negotiated")
            return self.reassembler.receive(data, self.sk.inbound, self.now)
        return self.sk.inbound.open(data, header)

    def _receive_response(
        self, data: bytes, header: IkeHeader, local: Address, remote: Address, now: float
    ) -> None:
        out = self.tm.outstanding
        if out is None or out.message_id != header.message_id:
            log.debug("%s: ignoring unexpected response %d", self.name, header.message_id)
            self.on_drop(IkeDropReason.UNEXPECTED_RESPONSE)
            return
        exchange = out.context
        if header.exchange_type != exchange.exchange_type:
            log.debug("%s: response of the wrong exchange type; ignored", self.name)
            self.on_drop(IkeDropReason.UNEXPECTED_RESPONSE)
            return
        try:
            message = self._open(data, header)
            if message is None:
                return  # more fragments to come
            check_payloads(header.exchange_type, True, message.payloads)
        except IkeError as exc:
            # Unauthenticated or garbled: drop and let retransmission recover (§2.21).
            log.info("%s: dropping invalid response: %s", self.name, exc)
            self.on_drop(_drop_reason(exc))
            return
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            self.init_response = data
            if self.spi_r == bytes(8):
                self.spi_r = header.spi_r
        else:
            self._peer_address_seen(local, remote)
        try:
            for task in exchange.tasks:
                task.process_response(self, message)
        except RetryExchange:
            self._retry_init(exchange, now)
            return
        except IkeError as exc:
            # The exchange is over (the response arrived), so its Message ID is used up.
            self.tm.response_received(header.message_id)
            self._fail_after_response(exc, now)
            return
        self.tm.response_received(header.message_id)
        self._after_exchange(now)
        self._send_next(now)

    def _receive_request(
        self, data: bytes, header: IkeHeader, local: Address, remote: Address, now: float
    ) -> None:
        cached = self.tm.cached_response
        if is_fragmented(data) and cached is not None and header.message_id == cached.message_id:
            self._fragment_retransmitted(data)
            return
        kind = self.tm.classify_request(header.message_id, data)
        if is_fragmented(data) and kind is RequestKind.INVALID:
            kind = (
                RequestKind.NEW
                if header.message_id == self.tm.expected_request_id
                else RequestKind.INVALID
            )
        if kind is RequestKind.RETRANSMIT:
            log.debug("%s: retransmitting response %d", self.name, header.message_id)
            self._send(self.tm.cached_packets())
            self.on_drop(IkeDropReason.RETRANSMIT_ANSWERED)
            return
        if kind is RequestKind.INVALID:
            log.debug("%s: request %d outside the window; dropped", self.name, header.message_id)
            self.on_drop(IkeDropReason.OUT_OF_WINDOW)
            return
        factory = _REQUEST_TASKS.get((self.state, header.exchange_type))
        if factory is None or (
            header.exchange_type == ExchangeType.IKE_SA_INIT and self.keys is not None
        ):
            log.info(
                "%s: unexpected %s request in state %s; dropped",
                self.name,
                enum_name(ExchangeType, header.exchange_type),
                self.state.value,
            )
            self.on_drop(IkeDropReason.UNEXPECTED_EXCHANGE)
            return
        message: Message | None = None
        unreadable: InvalidSyntax | None = None
        try:
            message = self._open(data, header)
        except InvalidSyntax as exc:
            if not _answerable(exc, header.exchange_type):
                self._drop_invalid_request(header, remote, exc)
                return
            # §2.5, §2.21.3: a message we cannot read gets its error notify back when it
            # comes from the peer for sure (authenticated), or is an unprotected
            # IKE_SA_INIT with an unknown critical payload.
            log.info("%s: refusing a request we cannot read: %s", self.name, exc)
            unreadable = exc
        except IkeError as exc:
            self._drop_invalid_request(header, remote, exc)
            return
        else:
            if message is None:
                return  # more fragments to come
        if message is not None and self.rekeyed_from is not None and not _deletes_ike(message):
            self._take_over_from_parent()
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            self.spi_i = header.spi_i
            self.init_request = data
        else:
            self._peer_address_seen(local, remote)
        payloads: list[Payload] = []
        fatal: IkeError | None = unreadable
        if unreadable is not None:
            payloads = [_error_notify(unreadable)]
        elif message is not None:
            tasks = factory(self)
            try:
                check_payloads(header.exchange_type, False, message.payloads)
                for task in tasks:
                    task.process_request(self, message)
                for task in tasks:
                    task.build_response(self, payloads)
            except IkeError as exc:
                fatal = exc
                payloads = [] if exc.notify is None else [_error_notify(exc)]
        response = Message(
            spi_i=self.spi_i,
            spi_r=bytes(8) if fatal is not None and self.keys is None else self.spi_r,
            exchange_type=header.exchange_type,
            message_id=header.message_id,
            initiator=self.initiator,
            response=True,
            payloads=tuple(payloads),
            encrypted=header.exchange_type != ExchangeType.IKE_SA_INIT,
        )
        packets = self._encode(response)
        if header.exchange_type == ExchangeType.IKE_SA_INIT and fatal is None:
            self.init_response = packets[0]
        self.tm.response_sent(header.message_id, data, packets)
        self._send(packets)
        if fatal is not None:
            if header.exchange_type == ExchangeType.IKE_SA_INIT and unreadable is not None:
                self.state = IkeSaState.DELETED  # answered; like garbage, no SA and no event
                return
            if (
                isinstance(fatal, InvalidKePayload)
                and header.exchange_type == ExchangeType.IKE_SA_INIT
            ):
                # Not a failure: the initiator retries with the group we named (§1.2),
                # and that retry starts a fresh SA here; this one keeps no state.
                log.debug("%s: %s", self.name, fatal)
                self.state = IkeSaState.DELETED
                return
            if header.exchange_type in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH):
                # §2.21.1-2: a refused IKE_SA_INIT or IKE_AUTH leaves no IKE SA behind.
                self.fail(str(fatal), fatal.notify)
                return
            # Any later request refused with a notify leaves the IKE SA as it was.
            log.info(
                "%s: refused %s request: %s",
                self.name,
                enum_name(ExchangeType, header.exchange_type),
                fatal,
            )
        self._after_exchange(now)
        self._send_next(now)

    def _drop_invalid_request(self, header: IkeHeader, remote: Address, exc: IkeError) -> None:
        # §2.21.1: an unauthenticated bad message changes nothing and gets no answer.
        self.on_drop(_drop_reason(exc))
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            # Garbage that merely looks like an IKE_SA_INIT: no SA, no event. Anyone can
            # send it from any address, so it is only counted (and logged at debug), lest
            # a flood of it flood the log.
            log.debug("%s: dropping invalid IKE_SA_INIT from %s: %s", self.name, _fmt(remote), exc)
            self.state = IkeSaState.DELETED
            return
        log.info("%s: dropping invalid request from %s: %s", self.name, _fmt(remote), exc)

    def _fragment_retransmitted(self, data: bytes) -> None:
        """A fragment of the request we answered last: RFC 7383 §2.6.1 has us resend the
        response when fragment 1 comes again (once, not for every fragment)."""
        if self.sk is None:
            self.on_drop(IkeDropReason.INVALID_MESSAGE)
            return
        try:
            fragment = open_fragment(self.sk.inbound, data)
        except IkeError as exc:
            log.debug("%s: dropping a bad fragment: %s", self.name, exc)
            self.on_drop(_drop_reason(exc))
            return
        if fragment.number == 1:
            log.debug("%s: request retransmitted in fragments; resending", self.name)
            self._send(self.tm.cached_packets())
        self.on_drop(IkeDropReason.RETRANSMIT_ANSWERED)

    # --- sending ------------------------------------------------------------------------

    def _encode(self, message: Message) -> tuple[bytes, ...]:
        if not message.encrypted:
            return (encode_message(message),)
        if self.sk is None:
            raise LocalProtocolError("no keys to protect the message with")
        # RFC 7383 §2.5.1: split what would not fit, once both sides support it.
        return tuple(
            seal_for_size(
                message,
                self.sk.outbound,
                self.rng,
                self.config.fragment_size,
                fragmentation=self.fragmentation,
            )
        )

    def _send(self, packets: tuple[bytes, ...]) -> None:
        # RFC 3948 §2.2: IKE on the NAT-T port is prefixed with four zero octets.
        marker = NON_ESP_MARKER if self.local[1] == self.nat_port else b""
        for packet in packets:
            self._out.append(Datagram(marker + packet, self.local, self.remote))
        self.on_change(self)

    def _build_request(self, exchange: Exchange, message_id: int) -> tuple[bytes, ...]:
        payloads: list[Payload] = []
        for task in exchange.tasks:
            task.build_request(self, payloads)
        message = Message(
            spi_i=self.spi_i,
            spi_r=self.spi_r,
            exchange_type=exchange.exchange_type,
            message_id=message_id,
            initiator=self.initiator,
            response=False,
            payloads=tuple(payloads),
            encrypted=exchange.exchange_type != ExchangeType.IKE_SA_INIT,
        )
        packets = self._encode(message)
        if exchange.exchange_type == ExchangeType.IKE_SA_INIT:
            self.init_request = packets[0]
        return packets

    def _send_next(self, now: float) -> None:
        """Send the next queued exchange if the window allows."""
        self.on_change(self)  # a new request or its timer, or a deferral until confirmed
        if self.unconfirmed_until is not None:
            return  # the peer may not know this SA yet: requests would be dropped
        while self.state is not IkeSaState.DELETED:
            exchange = self.tm.next_to_send()
            if exchange is None:
                return
            try:
                packets = self._build_request(exchange, self.tm.next_request_id)
            except IkeError as exc:
                self.fail(f"cannot build {exchange.exchange_type.name} request: {exc}", exc.notify)
                return
            self._send(packets)
            if exchange.one_shot:
                # Nobody waits for its answer; Message IDs still count (§2.3).
                self.tm.next_request_id += 1
                continue
            self.tm.request_sent(exchange, packets, now)
            return

    def _retry_init(self, exchange: Exchange, now: float) -> None:
        self.init_retries += 1
        if self.init_retries > MAX_INIT_RETRIES:
            self.tm.abandon_request()
            self.fail("peer keeps asking to retry IKE_SA_INIT; giving up", None)
            return
        self.spi_r = bytes(8)
        try:
            packets = self._build_request(exchange, 0)
        except IkeError as exc:
            self.tm.abandon_request()
            self.fail(f"cannot retry IKE_SA_INIT: {exc}", exc.notify)
            return
        self.tm.request_replaced(packets, now)
        self._send(packets)

    def send_notify_and_close(self, notify: Notify, now: float) -> None:
        """Tell the peer an error in an INFORMATIONAL request of its own, not awaited.

        RFC 7296 §2.21.2: an initiator that rejects the responder's AUTH may say so
        this way before it deletes the IKE SA.
        """
        if self.sk is None:
            return
        self.tm.abandon_request()
        self.tm.pending.clear()
        self.tm.queue(Exchange(ExchangeType.INFORMATIONAL, [NotifyOnly(notify)], one_shot=True))
        self._send_next(now)

    # --- state changes ------------------------------------------------------------------

    def _peer_address_seen(self, local: Address, remote: Address) -> None:
        self.last_heard = self.now
        self.unconfirmed_until = None  # an authenticated message: the peer has this SA
        # §2.23: behind a NAT, follow the address of the latest authenticated message.
        # Without one the only move is the initiator's from port 500 to 4500 when ESP
        # goes in UDP (forced, or two lockgates): same addresses, our port 4500. Any
        # other change would let a copy of a genuine message, replayed from elsewhere
        # first, redirect the SA.
        if (local, remote) != (self.local, self.remote) and (
            self.nat_local or self.nat_remote or self._to_nat_port(local, remote)
        ):
            log.info("%s: peer now at %s (we at %s)", self.name, _fmt(remote), _fmt(local))
            old_local, old_remote = self.local, self.remote
            self.local, self.remote = local, remote
            if self.established_at is not None and not self.silent:
                # Before IKE_AUTH completes IkeSaEstablished carries the addresses.
                self.emit(
                    IkeSaAddressChanged(
                        self.config.name, self.ike_sa_id, old_local, old_remote, local, remote
                    )
                )

    def _to_nat_port(self, local: Address, remote: Address) -> bool:
        """The peer moved IKE to port 4500 for ESP in UDP without a NAT (§2.23)."""
        return (
            self.udp_encap
            and self.local[1] != self.nat_port
            and local == (self.local[0], self.nat_port)
            and remote[0] == self.remote[0]
        )

    def float_to_nat_port(self) -> None:
        """Move IKE to the NAT-T port after IKE_SA_INIT (§2.23)."""
        if self.local[1] == self.nat_port:
            return
        remote_port = self.nat_port if self.remote[1] == self.config.ike_port else self.remote[1]
        self.local = (self.local[0], self.nat_port)
        self.remote = (self.remote[0], remote_port)
        log.debug("%s: switching to port %d", self.name, self.nat_port)

    def established(self, now: float) -> None:
        """IKE_AUTH succeeded (tasks call this)."""
        self.state = IkeSaState.ESTABLISHED
        self.established_at = now
        self.expire_at = now + self.config.ike_lifetime
        jitter = int.from_bytes(self.rng.token_bytes(2), "big") / 65536.0
        margin = self.config.rekey_margin
        # Up to a third of the margin earlier, so both ends rarely rekey at once.
        self.ike_rekey_at = max(now + self.config.ike_lifetime - margin * (1 + jitter / 3), now)
        self.half_open_deadline = None
        if self.nat_local:
            self.keepalive_at = now + NAT_KEEPALIVE_INTERVAL
        self.on_change(self)

    def _after_exchange(self, now: float) -> None:
        """Housekeeping after an exchange completed."""
        if self.state is IkeSaState.ESTABLISHED and (self.init_request or self.ke is not None):
            # IKE_AUTH is over: the IKE_SA_INIT messages its AUTH signed (§2.15) and our
            # Diffie-Hellman private key are never needed again; a gateway holding
            # thousands of IKE SAs keeps less. Nor are the IKE_SA_INIT nonces (they went
            # into the AUTH payloads and the first CHILD SA's KEYMAT, §2.17; rekeys bring
            # their own), the COOKIE, or SK_pi/SK_pr (AUTH only). SK_d, SK_a and SK_e stay
            # for CHILD SAs, rekeys and every later message; the last response stays in
            # the task manager to answer a retransmitted request (§2.1).
            self.init_request = self.init_response = b""
            self.ke = None
            self.nonce_i = self.nonce_r = self.cookie = b""
            if self.keys is not None:
                self.keys = self.keys.without_auth_keys()
        if (
            self.state is IkeSaState.ESTABLISHED
            and self.initiator
            and self.initial_child_failed
            and not self.children
            and not self.tm.pending
            and self.tm.outstanding is None
        ):
            # Like a strongSwan initiator, keep no IKE SA without the CHILD SA it was for.
            self.initial_child_failed = False
            self.delete(now, "its CHILD SA could not be established")

    def fail(self, reason: str, notify: int | None) -> None:
        """The IKE SA is unusable: report it and go away without further messages."""
        if self.state is IkeSaState.DELETED:
            return
        was = self.state
        self.state = IkeSaState.DELETED
        self.tm.pending.clear()
        self.tm.abandon_request()
        if was in (IkeSaState.CREATED, IkeSaState.HALF_OPEN):
            log.warning("%s: IKE SA with %s failed: %s", self.name, _fmt(self.remote), reason)
            self.emit(IkeSaFailed(self.config.name, self.ike_sa_id, reason, notify))
        else:
            self.gone(reason, by_peer=False)

    def gone(self, reason: str, *, by_peer: bool) -> None:
        """Remove every CHILD SA and the IKE SA itself, with their events."""
        if by_peer and self.peer_ike_rekey is not None and self.rekeyed_into is None:
            # §2.8.2: the peer deletes the old SA, so its crossing rekey won (or it never
            # saw ours): the SA that rekey created takes over.
            self.hand_over(self.peer_ike_rekey.new_sa)
        if by_peer and self.rekeyed_into is not None:
            # The peer deletes the SA it replaced: it surely has the new one.
            self.rekeyed_into.unconfirmed_until = None
            self.rekeyed_into._send_next(self.now)
        if self.rekeyed_into is not None or self.silent:
            # Replaced (its CHILD SAs live on in the new IKE SA), or never announced:
            # nothing to report.
            self.state = IkeSaState.DELETED
            log.debug("%s: replaced IKE SA removed (%s)", self.name, reason)
            return
        for child in list(self.children.values()):
            self.remove_child(child, "IKE SA deleted")
        self.state = IkeSaState.DELETED
        report = log.info if by_peer or "operator" in reason else log.warning
        report("%s: IKE SA with %s deleted: %s", self.name, _fmt(self.remote), reason)
        cause = ike_delete_cause(reason, by_peer=by_peer, we_deleted=bool(self.delete_reason))
        self.emit(IkeSaDeleted(self.config.name, self.ike_sa_id, reason, by_peer, cause))

    PEER_DELETED_KEPT = 8
    """How many unknown SPIs from the peer's Deletes `peer_deleted_unknown` keeps."""

    def peer_deleted_before_known(self, spi_out: int) -> None:
        """The peer deleted an ESP SA we do not know: keep its SPI for a while. RFC 7296
        §1.4.1 lets a Delete of an unknown SPI be ignored, but when the answer that
        creates it was lost and is retransmitted, it arrives after the Delete: the
        CHILD SA must then not be installed on our side alone."""
        kept = (*self.peer_deleted_unknown, spi_out)
        self.peer_deleted_unknown = kept[-self.PEER_DELETED_KEPT :]

    def deleted_by_peer_already(self, spi_out: int) -> bool:
        """True when the peer deleted this ESP SPI (its inbound) before we installed it."""
        return spi_out in self.peer_deleted_unknown

    def remove_child(self, child: ChildSa, reason: str) -> None:
        """Forget a CHILD SA and tell the user to remove its ESP SAs."""
        if self.children.pop(child.unique_id, None) is None:
            return
        log.info(
            "%s: CHILD SA %s{%d} removed (%s), SPIs %08x_i %08x_o",
            self.name,
            child.config.name,
            child.unique_id,
            reason,
            child.spi_in,
            child.spi_out,
        )
        self.emit(
            ChildSaDeleted(
                self.config.name,
                child.config.name,
                child.unique_id,
                self.ike_sa_id,
                child.spi_in,
                child.spi_out,
                reason,
                child_delete_cause(reason),
            )
        )

    def _fail_after_response(self, exc: IkeError, now: float) -> None:
        if isinstance(exc, PeerErrorNotify):
            # The peer told us; it keeps nothing, so neither do we (§2.21).
            self.fail(str(exc), exc.peer_notify)
            return
        if exc.notify is not None and self.sk is not None:
            # §2.21.2: tell the responder why before dropping the IKE SA.
            self.send_notify_and_close(_error_notify(exc), now)
        self.fail(str(exc), exc.notify)

    # --- time ---------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        """Retransmit, expire and keep alive as due."""
        if self.state is IkeSaState.DELETED:
            return
        self.now = now
        if self._reassembler is not None:
            self._reassembler.expire(now)
        try:
            self._send(self.tm.handle_timer(now))
        except GiveUp as exc:
            if self.state is IkeSaState.DELETING:
                self.gone(f"{self.delete_reason}; peer did not answer the Delete", by_peer=False)
            elif self.ike_rekey_failed():
                # The peer answers no more on this SA but rekeyed it itself (§2.8.2).
                log.info("%s: our IKE rekey went unanswered; the peer's took over", self.name)
            elif self.state is IkeSaState.ESTABLISHED:
                self.fail(f"peer is dead: {exc}", None)
            elif self.peer_prefers_udp and not (self.nat_local or self.nat_remote):
                # Two lockgates moved to port 4500 without a NAT: a firewall that lets
                # only port 500 and raw ESP through stops IKE_AUTH here. The endpoint
                # then initiates to this peer without the Vendor ID (raw ESP, port 500).
                self.udp_unanswered = True
                self.fail(
                    f"{exc} on UDP port {self.nat_port}, where two lockgates move for ESP in"
                    f" UDP; is it open between them? The next attempt stays on port"
                    f' {self.config.ike_port} with raw ESP, as encap = "nat" does',
                    None,
                )
            else:
                self.fail(str(exc), None)
            return
        if self.unconfirmed_until is not None and now >= self.unconfirmed_until:
            self.unconfirmed_until = None  # never confirmed: try; retransmission decides
            self._send_next(now)
        if self.half_open_deadline is not None and now >= self.half_open_deadline:
            self.fail("peer did not complete IKE_AUTH in time", None)
            return
        if self.expire_at is not None and now >= self.expire_at:
            self.expire_at = None
            if self.state is IkeSaState.REKEYED:
                self.gone("the peer never deleted it", by_peer=False)
                return
            self.delete(now, "IKE SA lifetime expired")
        if self.ike_rekey_at is not None and now >= self.ike_rekey_at:
            self.ike_rekey_at = None
            self.rekey_ike(now)
        for child in list(self.children.values()):
            if child.deleting:
                continue
            if now >= child.expire_at:
                self.expire_child(child, now, "lifetime expired")
            elif now >= child.rekey_at and not child.rekeying and child.peer_rekey is None:
                self.rekey_child(child.unique_id, now)
        dpd = self._dpd_due()
        if dpd is not None and now >= dpd:
            # §2.4: nothing heard for a while; an unanswered check ends the IKE SA through
            # the retransmission give-up, and the user applies the connection's dpd_action.
            log.debug("%s: sending a liveness check", self.name)
            self.check_liveness(now)
        if self.keepalive_at is not None and now >= self.keepalive_at:
            self.keepalive_at = now + NAT_KEEPALIVE_INTERVAL
            self.emit(NatKeepaliveDue(self.ike_sa_id, self.local, self.remote))


def _unwatched(sa: IkeSa) -> None:
    """`IkeSa.on_change` of an SA no endpoint watches (yet): nothing to tell."""


def _uncounted(reason: IkeDropReason) -> None:
    """`IkeSa.on_drop` of an SA no endpoint watches (yet): nobody counts."""


def _drop_reason(exc: IkeError) -> IkeDropReason:
    """The drop reason of a message that failed to open or check."""
    if isinstance(exc, IntegrityCheckFailed):
        return IkeDropReason.INTEGRITY_FAILURE
    return IkeDropReason.INVALID_MESSAGE


def _error_notify(exc: IkeError) -> Notify:
    if exc.notify is None:
        raise LocalProtocolError("no notify for this error")
    return Notify(exc.notify, exc.notify_data, exc.protocol, exc.spi)


def _answerable(exc: InvalidSyntax, exchange_type: int) -> bool:
    """Whether an unreadable request deserves an error notify rather than silence."""
    if exchange_type == ExchangeType.IKE_SA_INIT:
        return isinstance(exc, UnsupportedCriticalPayload)
    return exc.authenticated


def _deletes_ike(message: Message) -> bool:
    return any(isinstance(p, Delete) and p.protocol == ProtocolId.IKE for p in message.payloads)


def _fmt(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _responder_init(sa: IkeSa) -> list[Task]:
    return [IkeInit(), IkeNatd()]


def _responder_auth(sa: IkeSa) -> list[Task]:
    return [IkeAuth(), ChildCreate(None)]


def _informational(sa: IkeSa) -> list[Task]:
    return [Informational()]


def _create_child(sa: IkeSa) -> list[Task]:
    return [AnswerCreateChild()]


def _refuse_child(sa: IkeSa) -> list[Task]:
    return [RefuseCreateChild()]


_REQUEST_TASKS: dict[tuple[IkeSaState, int], Callable[[IkeSa], list[Task]]] = {
    (IkeSaState.HALF_OPEN, ExchangeType.IKE_SA_INIT): _responder_init,
    (IkeSaState.HALF_OPEN, ExchangeType.IKE_AUTH): _responder_auth,
    (IkeSaState.ESTABLISHED, ExchangeType.INFORMATIONAL): _informational,
    (IkeSaState.ESTABLISHED, ExchangeType.CREATE_CHILD_SA): _create_child,
    (IkeSaState.DELETING, ExchangeType.INFORMATIONAL): _informational,
    (IkeSaState.DELETING, ExchangeType.CREATE_CHILD_SA): _refuse_child,
    (IkeSaState.REKEYED, ExchangeType.INFORMATIONAL): _informational,
    (IkeSaState.REKEYED, ExchangeType.CREATE_CHILD_SA): _refuse_child,
}
"""(state, exchange type of a peer's request) -> the tasks that answer it.

Anything not listed is dropped: e.g. IKE_AUTH once established, or INFORMATIONAL
before authentication (RFC 7296 §1.4 requires the IKE SA to exist).
"""

__all__ = [
    "ChildSa",
    "Datagram",
    "Exchange",
    "IkeDropReason",
    "IkeSa",
    "IkeSaState",
    "PeerIkeRekey",
    "PeerRekey",
]
