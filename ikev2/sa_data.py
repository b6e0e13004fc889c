"""What one IKE SA holds, and the bookkeeping that changes only that.

`IkeSaData` carries the keys, addresses, NAT flags, CHILD SAs and timers of an IKE
SA, its outputs (datagrams, events, the next timer) and the changes that start no
exchange. `ikev2.sa.IkeSa` adds the exchanges: the API, the message pipeline and
the timers' actions. `SaContext` is what all IKE SAs of one endpoint share.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Self

from ikev2.codec import Message, encode_message
from ikev2.config import ConnectionConfig, IpInterface
from ikev2.constants import NON_ESP_MARKER_LEN
from ikev2.crypto.dh import KeyExchange
from ikev2.crypto.intauth import chain_intauth, intauth_trailer
from ikev2.crypto.key_pool import KeyPool
from ikev2.crypto.keys import IkeKeys
from ikev2.crypto.registry import IkeSuite
from ikev2.crypto.rng import RandomSource
from ikev2.crypto.sk import SkCipherPair
from ikev2.errors import InvalidSyntax, LocalProtocolError
from ikev2.events import (
    Address,
    ChildSaDeleted,
    Event,
    IkeSaAddressChanged,
    child_delete_cause,
    format_address,
)
from ikev2.fragments import Reassembler, seal_for_size
from ikev2.identity import Identity
from ikev2.sa_types import (
    ChildSa,
    Datagram,
    IkeDropReason,
    IkeSaState,
    Intermediate,
    PeerIkeRekey,
    ResourceRetry,
)
from ikev2.task_manager import RetransmitPolicy, TaskManager
from ikev2.tasks.base import Exchange, FollowupAnswer, Task

log = logging.getLogger(__name__)

NAT_KEEPALIVE_INTERVAL = 20.0
"""Seconds between NAT keepalives (strongSwan's default, RFC 3948 §4 suggests 20 s)."""


@functools.lru_cache(maxsize=64)
def _retransmit_policy(timeout: float, base: float, tries: int) -> RetransmitPolicy:
    # Frozen: the SAs of a connection share one instead of holding one each.
    return RetransmitPolicy(timeout=timeout, base=base, tries=tries)


@dataclass(frozen=True, slots=True)
class SaContext:
    """What every IKE SA of one endpoint shares: given once, not to each SA apart."""

    rng: RandomSource
    """SPIs, nonces, key pairs, IVs and jitter."""
    ike_ids: Iterator[int]
    """Unique numbers of IKE SAs (also of those a rekey makes)."""
    child_ids: Iterator[int]
    """Unique numbers of CHILD SAs."""
    nat_port: int = 4500
    """The NAT-T port IKE floats to (§2.23)."""
    half_open_timeout: float = 30.0
    """Seconds a responder waits for IKE_AUTH to complete."""
    wall_clock: Callable[[], float] = time.time
    """Calendar time (POSIX seconds), only to check certificate validity dates."""
    key_pool: KeyPool | None = None
    """Key pairs made while the endpoint was idle (None: each made when needed)."""
    partial_csum: bool = False
    """The data plane can take TCP segments with partial checksums inside ESP, so
    IKE_SA_INIT offers them to a lockgate peer (`tasks.ike_init`)."""
    resources: int = 1
    """The data plane's workers: the worker of a CHILD SA is its inbound SPI modulo
    this, so inbound SPIs are chosen for a worker; above 1, CHILD SAs are negotiated
    per resource with a peer that agrees (RFC 9611, `tasks.resources`)."""
    spis_in: set[int] = field(default_factory=set)
    """Inbound ESP SPIs of the endpoint's installed CHILD SAs (kept by the endpoint
    from the events), which a new SPI chosen for a worker must not repeat."""


class IkeSaData:
    """An IKE SA's state and outputs; `ikev2.sa.IkeSa` runs its exchanges."""

    # A gateway holds thousands: slots instead of a per-object dict (about 1 KiB less
    # per IKE SA). Every attribute set in __init__ is listed here.
    __slots__ = (
        "_events",
        "_out",
        "_reassembler",
        "_state",
        "auth_continues",
        "auth_tasks",
        "candidates",
        "children",
        "config",
        "context",
        "cookie",
        "created_at",
        "delete_reason",
        "eap_identity",
        "encap_forced",
        "established_at",
        "expire_at",
        "followups",
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
        "intermediate",
        "ke",
        "keepalive_at",
        "key_pool",
        "keys",
        "last_heard",
        "last_path",
        "local",
        "mobike",
        "nat_local",
        "nat_port",
        "nat_remote",
        "nonce_i",
        "nonce_r",
        "now",
        "on_change",
        "on_drop",
        "partial_csum",
        "peer_deleted_unknown",
        "peer_hashes",
        "peer_id",
        "peer_ike_rekey",
        "peer_prefers_udp",
        "ppk_offered",
        "ppk_used",
        "rekeyed_from",
        "rekeyed_into",
        "remote",
        "resource_retries",
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
        "virtual_ips",
        "wall_clock",
        "withhold_udp_vid",
    )

    def __init__(
        self,
        context: SaContext,
        config: ConnectionConfig,
        *,
        initiator: bool,
        local: Address,
        remote: Address,
        now: float,
        candidates: tuple[ConnectionConfig, ...] = (),
    ) -> None:
        self.context = context
        """What this SA shares with every other IKE SA of its endpoint."""
        self.on_change: Callable[[Self], None] = _unwatched
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
        self.last_path: tuple[Address, Address] = (local, remote)
        """(ours, the peer's) addresses of the latest authenticated message: where a
        MOBIKE UPDATE_SA_ADDRESSES moves the SA to (RFC 4555 §3.5)."""
        self.mobike = False
        """Both sides sent MOBIKE_SUPPORTED in IKE_AUTH (RFC 4555 §3.3)."""
        self.rng = context.rng
        self.key_pool = context.key_pool
        """Key pairs made while the endpoint was idle (None: each made when needed)."""
        self.now = now
        """Time of the input being processed (tasks read it; nothing here reads a clock)."""
        self.ike_sa_id = next(context.ike_ids)
        self.nat_port = context.nat_port
        self.wall_clock = context.wall_clock
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
        self.intermediate: Intermediate | None = None
        """IKE_INTERMEDIATE state while additional key exchanges run (RFC 9370)."""
        self.peer_hashes: tuple[int, ...] | None = None
        """Hash algorithms of the peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4)."""
        self.fragmentation = False
        """Both sides sent IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 §2.3)."""
        self.ppk_offered = False
        """Both sides sent USE_PPK in IKE_SA_INIT (RFC 8784 §3)."""
        self.ppk_used = False
        """A post-quantum preshared key is mixed into SK_d (RFC 8784 §3): IKE_AUTH used
        it, or the IKE SA this one was rekeyed from did."""
        self.partial_csum = False
        """Both sides sent lockgate's partial-checksum Vendor ID in IKE_SA_INIT
        (tasks.ike_init): its CHILD SAs carry the TCP segments the kernel left
        unchecksummed with partial checksums, marked in ESP."""
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
        self.auth_tasks: list[Task] | None = None
        """A responder's IKE_AUTH tasks, kept over the several IKE_AUTH exchanges of
        an EAP login (§2.16) until the IKE SA is established."""
        self.auth_continues = False
        """An initiator's IKE_AUTH needs another round (EAP): its tasks go out again."""
        self.eap_identity = ""
        """A remote-access client's user: the one its EAP login named, or the common
        name of its client certificate ("" for other peers)."""
        self.virtual_ips: tuple[IpInterface, ...] | None = None
        """Addresses a remote-access server assigned to its client (§3.15): None when
        the client asked for none, () when none could be assigned."""
        self.children: dict[int, ChildSa] = {}
        self.peer_deleted_unknown: tuple[int, ...] = ()
        """The last ESP SPIs (the peer's inbound) the peer deleted before we knew them:
        the answer creating such an SA may still be on its way (see
        `deleted_by_peer_already`). A tuple: nothing per SA until it happens."""
        self.created_at = now
        self.established_at: float | None = None
        self.expire_at: float | None = None
        self.half_open_deadline: float | None = (
            None if initiator else now + context.half_open_timeout
        )
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
        self.rekeyed_into: Self | None = None
        """The IKE SA that replaced this one (§2.18)."""
        self.rekeyed_from: Self | None = None
        """The IKE SA whose rekey created this one, until this one takes over."""
        self.spawned: list[Self] = []
        """IKE SAs our rekey exchanges created (the endpoint routes their SPIs)."""
        self.peer_ike_rekey: PeerIkeRekey[Self] | None = None
        self.resource_retries: list[ResourceRetry] = []
        """Per-resource CHILD SAs to ask for again, each at its time (RFC 9611)."""
        self.followups: dict[bytes, FollowupAnswer] = {}
        """Responder: CREATE_CHILD_SAs whose IKE_FOLLOWUP_KE exchanges are under way,
        by the link of their next one (RFC 9370 §2.2.4)."""
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

    # --- state --------------------------------------------------------------------------

    @property
    def state(self) -> IkeSaState:
        """Where the SA is in its life (`IkeSaState`)."""
        return self._state

    @state.setter
    def state(self, value: IkeSaState) -> None:
        self._state = value
        self.changed()

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

    @property
    def offers_partial_csum(self) -> bool:
        """Whether IKE_SA_INIT carries lockgate's partial-checksum Vendor ID."""
        return self.context.partial_csum

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

    @property
    def resources(self) -> int:
        """The endpoint's data-plane workers (`SaContext.resources`)."""
        return self.context.resources

    @property
    def spis_in_use(self) -> set[int]:
        """Inbound SPIs of the endpoint's installed CHILD SAs (`SaContext.spis_in`)."""
        return self.context.spis_in

    def next_child_id(self) -> int:
        """A fresh CHILD SA unique number."""
        return next(self.context.child_ids)

    def outstanding_tasks(self) -> set[str]:
        """Names of the tasks of our request on the wire (empty if none)."""
        out = self.tm.outstanding
        return set() if out is None else {task.name for task in out.context.tasks}

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
        self.changed()

    def changed(self: Self) -> None:
        """Tell the endpoint this SA may have output, a new state or an earlier timer."""
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
        for answer in self.followups.values():
            if due is None or answer.expires_at < due:
                due = answer.expires_at
        for retry in self.resource_retries:
            if due is None or retry.at < due:
                due = retry.at
        for c in self.children.values():
            if not c.deleting:
                if due is None or c.expire_at < due:
                    due = c.expire_at
                if not c.rekeying and c.peer_rekey is None and c.rekey_at < due:
                    due = c.rekey_at
        return due

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

    def heard_from_peer(self, now: float) -> None:
        """The peer showed it is alive some other way (ESP arrived): no liveness check yet."""
        self.last_heard = max(self.last_heard, now)

    # --- sending ------------------------------------------------------------------------

    def _encode(self, message: Message) -> tuple[bytes, ...]:
        if not message.encrypted:
            return (encode_message(message),)
        if self.sk is None:
            raise LocalProtocolError("no keys to protect the message with")
        # RFC 7383 §2.5.1: split what would not fit, once both sides support it. On the
        # NAT-T port the daemon puts the non-ESP marker before the message (RFC 3948
        # §2.2), and the UDP payload as a whole must fit.
        limit = self.config.fragment_size
        if self.local[1] == self.nat_port:
            limit -= NON_ESP_MARKER_LEN
        return tuple(
            seal_for_size(
                message, self.sk.outbound, self.rng, limit, fragmentation=self.fragmentation
            )
        )

    def _send(
        self, packets: tuple[bytes, ...], path: tuple[Address, Address] | None = None
    ) -> None:
        """Queue IKE messages from `self.local` to `self.remote`, or over `path`
        (ours, the peer's): a response goes back where its request came from (RFC 7296
        §2.11), which with MOBIKE need not be the SA's addresses (RFC 4555 §3.5)."""
        local, remote = path if path is not None else (self.local, self.remote)
        # Bare IKE messages: the daemon adds the non-ESP marker on the NAT-T port.
        for packet in packets:
            self._out.append(Datagram(packet, local, remote))
        self.changed()

    # --- changes that need no exchange --------------------------------------------------

    @property
    def quantum_safe(self) -> bool:
        """Whether this SA's keys resist a quantum computer: an ML-KEM additional key
        exchange went into them (RFC 9370), or a post-quantum preshared key was mixed
        in (RFC 8784 §1: the PPK protects the keys even if the DH falls)."""
        return (self.suite is not None and self.suite.quantum_safe) or self.ppk_used

    @property
    def int_auth(self) -> bytes:
        """What RFC 9242 §3.3.2 appends to both AUTH payloads' signed octets: empty
        unless IKE_INTERMEDIATE exchanges took place."""
        state = self.intermediate
        if state is None or state.count == 0:
            return b""
        return intauth_trailer(state.int_auth_i, state.int_auth_r, state.count + 1)

    def start_intermediate(self, rounds: list[tuple[int, int]]) -> None:
        """IKE_SA_INIT chose additional key exchanges: IKE_INTERMEDIATE runs them."""
        self.intermediate = Intermediate(rounds=list(rounds)) if rounds else None

    def note_intermediate(self, message: Message) -> None:
        """Chain an IKE_INTERMEDIATE message (sent or received) into IntAuth, keyed
        by the SK_pi/SK_pr of this moment (RFC 9242 §3.3.1)."""
        state = self.intermediate
        if state is None or self.suite is None or self.keys is None:
            raise InvalidSyntax("IKE_INTERMEDIATE without additional key exchanges")
        prf = self.suite.prf
        if message.initiator:
            state.int_auth_i = chain_intauth(prf, self.keys.sk_pi, state.int_auth_i, message)
        else:
            state.int_auth_r = chain_intauth(prf, self.keys.sk_pr, state.int_auth_r, message)

    def take_deferred_keys(self) -> None:
        """Responder: the response of an IKE_INTERMEDIATE is sealed, switch keys now."""
        state = self.intermediate
        if state is not None and state.deferred is not None:
            suite, keys = state.deferred
            state.deferred = None
            state.answered_under = self.sk.inbound if self.sk is not None else None
            self.adopt_keys(suite, keys)

    def adopt_keys(self, suite: IkeSuite, keys: IkeKeys) -> None:
        """Take the algorithms and SK_* keys of IKE_SA_INIT or of a rekey (§2.14, §2.18)."""
        self.suite, self.keys = suite, keys
        self.sk = SkCipherPair.for_ike_sa(suite, keys, self.initiator)

    def use_ppk(self, keys: IkeKeys) -> None:
        """IKE_AUTH mixed the PPK into SK_d, SK_pi and SK_pr (RFC 8784 §3); SK_e and
        SK_a, which protect the messages, stay as IKE_SA_INIT made them."""
        self.keys = keys
        self.ppk_used = True

    def record_nat(self, *, nat_local: bool, nat_remote: bool, peer_prefers_udp: bool) -> None:
        """What NAT detection in IKE_SA_INIT found (§2.23, tasks.ike_natd)."""
        self.nat_local, self.nat_remote = nat_local, nat_remote
        self.peer_prefers_udp = peer_prefers_udp

    def use_connection(self, config: ConnectionConfig) -> None:
        """The responder picked this candidate by the identities of IKE_AUTH."""
        self.config = config

    def _peer_address_seen(self, local: Address, remote: Address) -> None:
        self.last_heard = self.now
        self.unconfirmed_until = None  # an authenticated message: the peer has this SA
        self.last_path = (local, remote)
        # §2.23: behind a NAT, follow the address of the latest authenticated message.
        # Without one the only move is the initiator's from port 500 to 4500 when ESP
        # goes in UDP (forced, or two lockgates): same addresses, our port 4500. Any
        # other change would let a copy of a genuine message, replayed from elsewhere
        # first, redirect the SA. With MOBIKE only UPDATE_SA_ADDRESSES moves the SA
        # (RFC 4555 §3.5), as strongSwan does: the initiator decides which path it uses.
        if (
            (local, remote) != (self.local, self.remote)
            and not self.mobike
            and (self.nat_local or self.nat_remote or self._to_nat_port(local, remote))
        ):
            log.info(
                "%s: peer now at %s (we at %s)",
                self.name,
                format_address(remote),
                format_address(local),
            )
            self._move(local, remote, mobike=False)

    def _move(self, local: Address, remote: Address, *, mobike: bool) -> None:
        old_local, old_remote = self.local, self.remote
        self.local, self.remote = local, remote
        if self.established_at is not None and not self.silent:
            # Before IKE_AUTH completes IkeSaEstablished carries the addresses.
            self.emit(
                IkeSaAddressChanged(
                    self.config.name,
                    self.ike_sa_id,
                    old_local,
                    old_remote,
                    local,
                    remote,
                    self.udp_encap,
                    self.udp_encap_reason,
                    self.nat_local,
                    self.nat_remote,
                    mobike,
                )
            )

    def enable_mobike(self) -> None:
        """Both sides support MOBIKE (RFC 4555 §3.3): addresses now change only by
        UPDATE_SA_ADDRESSES."""
        self.mobike = True

    def update_addresses(self, nat: tuple[bool, bool] | None) -> bool:
        """The peer's authenticated UPDATE_SA_ADDRESSES (RFC 4555 §3.5): move the IKE
        SA to the addresses that request came over, with the NAT state its NAT-D
        notifies show (`nat` as (before us, before the peer); None: it sent none,
        so no NAT). True if the addresses or the UDP encapsulation changed."""
        local, remote = self.last_path
        was_encap = self.udp_encap
        self.nat_local, self.nat_remote = nat if nat is not None else (False, False)
        if self.nat_local and self.keepalive_at is None:
            self.keepalive_at = self.now + NAT_KEEPALIVE_INTERVAL
        elif not self.nat_local:
            self.keepalive_at = None
        if (local, remote) == (self.local, self.remote) and was_encap == self.udp_encap:
            return False
        self._move(local, remote, mobike=True)
        return True

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

    def established(
        self, now: float, peer_id: Identity | None, *, initial_contact: bool = False
    ) -> None:
        """IKE_AUTH succeeded with the peer's identity (tasks call this); the peer sent
        INITIAL_CONTACT, or the IKE SA was made by a rekey of one that authenticated."""
        self.peer_id = peer_id
        if initial_contact:
            self.initial_contact = True
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
        self.changed()

    @property
    def ike_authenticated(self) -> bool:
        """IKE_AUTH is complete (after all its EAP rounds, §2.16)."""
        return self.established_at is not None

    def continue_auth(self) -> None:
        """Our IKE_AUTH needs another exchange (EAP, §2.16): its tasks build it."""
        self.auth_continues = True

    def record_eap_identity(self, identity: str) -> None:
        """A remote-access client's user, from its EAP login or its certificate (for
        the server's callbacks, events and logs)."""
        self.eap_identity = identity

    def assign_virtual_ips(self, addresses: tuple[IpInterface, ...]) -> None:
        """The virtual addresses of this IKE SA's client (§3.15)."""
        self.virtual_ips = addresses

    def mark_initial_child_failed(self) -> None:
        """The CHILD SA of our IKE_AUTH failed: `_after_exchange` deletes the IKE SA."""
        self.initial_child_failed = True

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


def _unwatched(sa: IkeSaData) -> None:
    """`IkeSa.on_change` of an SA no endpoint watches (yet): nothing to tell."""


def _uncounted(reason: IkeDropReason) -> None:
    """`IkeSa.on_drop` of an SA no endpoint watches (yet): nobody counts."""
