"""One IKE SA as a sans-I/O state machine (RFC 7296).

Inputs: `receive_message(data, header, local, remote, now)`, `handle_timer(now)` and
the API calls `initiate`, `delete`, `delete_child`. Outputs: `datagrams_to_send(now)`,
`next_event()`, `get_timer()`. No sockets, no clock, no randomness of its own (an
injected `RandomSource` supplies SPIs, nonces, DH keys and IVs).

Exchanges are lists of tasks (`ikev2.tasks`); the table `_REQUEST_TASKS` says which
requests the peer may send in which state, so an unexpected message is refused in
one place rather than falling through. Message IDs, retransmission and the response
cache live in `ikev2.task_manager`. What the SA holds, and the bookkeeping that starts
no exchange, is `ikev2.sa_data.IkeSaData`; the handover to the IKE SA a rekey made is
`ikev2.ike_handover`; decoding, decrypting and reassembling a received message, and
which bad messages are dropped and which answered, `ikev2.sa_intake`. The tasks see
the SA as `ikev2.tasks.base.TaskSa`.

Ordering promise: events are queued before the datagram that they precede, so a
caller that drains `next_event()` before `datagrams_to_send()` installs the inbound
SA of a new CHILD SA before the message that completes it leaves (RFC 7296 §2.8).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Self

from ikev2 import ike_handover
from ikev2.codec import IkeHeader, Message, Notify, Payload, check_payloads
from ikev2.config import ChildConfig, ConnectionConfig
from ikev2.constants import ExchangeType, enum_name
from ikev2.crypto.keys import IkeKeys
from ikev2.crypto.registry import IkeSuite
from ikev2.errors import (
    IkeError,
    InvalidKePayload,
    InvalidSyntax,
    LocalProtocolError,
    LoginRefused,
    PeerErrorNotify,
)
from ikev2.events import (
    Address,
    IkeSaDeleted,
    IkeSaFailed,
    NatKeepaliveDue,
    format_address,
    ike_delete_cause,
)
from ikev2.fragments import is_fragmented
from ikev2.sa_data import NAT_KEEPALIVE_INTERVAL, IkeSaData
from ikev2.sa_intake import (
    answerable,
    deletes_ike,
    drop_invalid_request,
    drop_reason,
    error_notify,
    error_payloads,
    open_message,
    resend_for_fragment,
)
from ikev2.sa_types import ChildSa, IkeDropReason, IkeSaState, PeerIkeRekey, ResourceRetry
from ikev2.task_manager import GiveUp, RequestKind
from ikev2.tasks import (
    AnswerCreateChild,
    AnswerFollowupKe,
    AnswerIntermediate,
    ChildCreate,
    ChildDelete,
    CreateChild,
    Exchange,
    IkeAuth,
    IkeConfig,
    IkeDelete,
    IkeInit,
    IkeMobike,
    IkeNatd,
    IkeRekey,
    Informational,
    NotifyOnly,
    RefuseCreateChild,
    RefuseEarlyAuth,
    RetryExchange,
    Task,
    UpdateSaAddresses,
)
from ikev2.tasks.followup_ke import expire_followups
from ikev2.tasks.resources import used_indexes
from ikev2.ts import TrafficSelector

log = logging.getLogger(__name__)

MAX_INIT_RETRIES = 5
"""IKE_SA_INIT retries after INVALID_KE_PAYLOAD or COOKIE before giving up."""

HINT_CHECK_DELAYS = (0.5, 1.0, 2.0)
"""Waits of the fast liveness check after a hint that the peer restarted (§2.21.4):
sent at once, again after 0.5 s and 1.5 s, given up after 3.5 s. A live peer answers
an empty INFORMATIONAL within a round trip, far below 0.5 s on the paths a gateway
runs over (the policy's 4 s first wait is sized for IKE_SA_INIT's key exchange and
lossy paths); three sends survive two lost datagrams, and 3.5 s leaves time within
10 s of the restart for dpd_action to set up a new IKE SA."""


class IkeSa(IkeSaData):
    """An IKE SA, initiator or responder, and the CHILD SAs under it.

    Made with `IkeSa(context, config, initiator=..., local=..., remote=..., now=...)`
    by the endpoint, and by a rekey (`spawn_rekeyed`); its state is `IkeSaData`'s.
    """

    __slots__ = ()

    # --- API ----------------------------------------------------------------------------

    def initiate(self, now: float, child: ChildConfig | None = None) -> None:
        """Start IKE_SA_INIT and IKE_AUTH with the first (or given) CHILD SA."""
        if self.state is not IkeSaState.CREATED or not self.initiator:
            raise LocalProtocolError("initiate() is for a new initiator IKE SA")
        self.now = now
        self.state = IkeSaState.HALF_OPEN
        first = child or self.config.children[0]
        self.tm.queue(Exchange(ExchangeType.IKE_SA_INIT, [IkeInit(), IkeNatd()]))
        self.tm.queue(Exchange(ExchangeType.IKE_AUTH, [IkeAuth(), IkeConfig(), ChildCreate(first)]))
        if child is None:
            # The connection's other CHILD SAs follow with CREATE_CHILD_SA (§1.3.1).
            for other in self.config.children[1:]:
                if other.start == "initiate":
                    self.tm.queue(Exchange(ExchangeType.CREATE_CHILD_SA, [CreateChild(other)]))
        log.info("%s: initiating IKE SA to %s", self.name, format_address(self.remote))
        self.send_next(now)

    def children_requested(self) -> frozenset[str]:
        """Names of the CHILD SA configurations this IKE SA will ask for, or is asking
        for, as new CHILD SAs (not rekeys): the one in IKE_AUTH and those of the
        CREATE_CHILD_SA exchanges queued or outstanding. What is not among them does
        not come along when an IKE SA being set up is established (§1.3.1)."""
        exchanges = list(self.tm.pending)
        if self.tm.outstanding is not None:
            exchanges.append(self.tm.outstanding.context)
        names: set[str] = set()
        for exchange in exchanges:
            for task in exchange.tasks:
                if isinstance(task, CreateChild) and task.old is not None:
                    continue  # a rekey
                if isinstance(task, ChildCreate | CreateChild) and task.config is not None:
                    names.add(task.config.name)
        return frozenset(names)

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
        self.send_next(now)

    def delete_child(self, unique_id: int, now: float, reason: str = "deleted by operator") -> None:
        """Delete one CHILD SA with an INFORMATIONAL Delete of its inbound SPI."""
        self.now = now
        child = self.children.get(unique_id)
        if child is None:
            raise LocalProtocolError(f"no CHILD SA {unique_id} in IKE SA {self.ike_sa_id}")
        # Whatever else happens to it, nothing is to take its place: a rekey of ours
        # not sent yet is dropped, and one under way deletes what it makes
        # (`CreateChild.followup_done`).
        child.no_successor = True
        if child.rekeying and self._drop_queued_rekey(child):
            child.rekeying = False
        if child.deleting or self.state is not IkeSaState.ESTABLISHED:
            return
        child.deleting, child.delete_reason = True, reason
        self.tm.queue(Exchange(ExchangeType.INFORMATIONAL, [ChildDelete(child, reason)]))
        self.send_next(now)

    def _drop_queued_rekey(self, child: ChildSa) -> bool:
        """Take a queued (not yet sent) CREATE_CHILD_SA rekeying `child` out of the
        queue; False if there is none (it is outstanding, or in IKE_FOLLOWUP_KE)."""
        for exchange in self.tm.pending:
            if exchange.exchange_type is ExchangeType.CREATE_CHILD_SA and any(
                isinstance(task, CreateChild) and task.old is child for task in exchange.tasks
            ):
                self.tm.pending.remove(exchange)
                log.info("%s: rekey of CHILD SA %s{%d} dropped: it is being deleted",
                         self.name, child.config.name, child.unique_id)  # fmt: skip
                return True
        return False

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

    def reconfigure(self, config: ConnectionConfig) -> None:
        """A reload changed this connection's settings but not its peer or identities:
        use `config` from now on, and give each CHILD SA its configuration of the same
        name. What was negotiated stays; the new settings apply from the next exchange
        that uses them: a CHILD rekey offers (or, as responder, accepts) the new ESP
        proposals and the new CHILD SA gets the new lifetimes, an IKE rekey the new IKE
        proposals, and the IKE SA it makes (`spawn_rekeyed`) the new lifetime."""
        if config.name != self.config.name:
            raise LocalProtocolError(f"IKE SA {self.ike_sa_id} is not of {config.name!r}")
        self.config = config
        by_name = {child.name: child for child in config.children}
        for child in self.children.values():
            child.config = by_name.get(child.config.name, child.config)

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
    ) -> Self:
        """The IKE SA a rekey exchange created (§2.18), not in use until `hand_over`.

        The side that sent the rekey request is the new SA's initiator; Message IDs
        start again at 0. Until it takes over it is silent: after crossing rekeys one
        of the two new SAs is deleted again without the user ever hearing of it.
        """
        new = type(self)(
            self.context,
            self.config,
            initiator=initiator,
            local=self.local,
            remote=self.remote,
            now=self.now,
        )
        new.spi_i, new.spi_r = spi_i, spi_r
        new.adopt_keys(suite, keys)
        new.nonce_i, new.nonce_r = nonce_i, nonce_r
        new.init_local, new.init_remote = self.init_local, self.init_remote
        new.nat_local, new.nat_remote = self.nat_local, self.nat_remote
        new.peer_prefers_udp = self.peer_prefers_udp
        new.partial_csum = self.partial_csum
        new.encap_forced = self.encap_forced
        new.mobike = self.mobike
        new.fragmentation = self.fragmentation
        # RFC 8784 §3: the new SKEYSEED comes from our SK_d, which holds the PPK.
        new.ppk_used = self.ppk_used
        new.established(self.now, self.peer_id)
        new.rekeyed_from = self
        new.silent = True
        self.spawned.append(new)
        self.changed()
        return new

    def hand_over(self, new: Self) -> None:
        """`new` replaces this IKE SA (§2.18): see `ike_handover.hand_over`."""
        ike_handover.hand_over(self, new)

    def ike_rekeyed(self, new: Self, lowest_nonce: bytes) -> None:
        """Our IKE rekey created `new`; settle a collision with the peer's (§2.8.2)."""
        ike_handover.ike_rekeyed(self, new, lowest_nonce)

    def crossing_ike_rekey(self, new: Self, lowest_nonce: bytes) -> None:
        """The peer's rekey made `new` while ours is on the wire: which of the two new
        IKE SAs survives is known once ours completes (§2.8.2)."""
        self.peer_ike_rekey = PeerIkeRekey(new, lowest_nonce)

    def ike_rekey_failed(self) -> bool:
        """Our IKE rekey failed; True if the peer's crossing rekey took over instead."""
        return ike_handover.ike_rekey_failed(self)

    def retry_ike_rekey_at(self, when: float) -> None:
        """Our IKE rekey failed and no crossing one took over: try again at `when`."""
        self.ike_rekeying = False
        self.ike_rekey_at = when

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

    def request_resource_sa(self, like: ChildSa) -> None:
        """Ask for one more CHILD SA of `like`'s per-resource group (RFC 9611): same
        configuration and exactly its negotiated selectors, for the lowest worker index
        without one. Called once each SA of the group that we asked for is installed,
        so the requests go one at a time, until every worker has one or the peer
        answers TS_MAX_QUEUE (which ends the group quietly)."""
        self._ask_resource_sa(like.config, (like.local_ts, like.remote_ts))

    def retry_resource_sa(self, retry: ResourceRetry) -> None:
        """Ask for that per-resource CHILD SA again at `retry.at` (`handle_timer`)."""
        self.resource_retries.append(retry)
        self.changed()

    def _ask_resource_sa(
        self,
        config: ChildConfig,
        selectors: tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]],
    ) -> None:
        if self.state is not IkeSaState.ESTABLISHED:
            return
        if len(used_indexes(self, config)) >= self.resources:
            return
        self.tm.queue(Exchange(ExchangeType.CREATE_CHILD_SA, [CreateChild(config, like=selectors)]))
        self.changed()

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
        self.send_next(now)

    def check_liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL request: the peer must answer it (§1.4, §2.4)."""
        if self.state is IkeSaState.ESTABLISHED:
            self.queue_exchange(Exchange(ExchangeType.INFORMATIONAL, [Task()]), now)

    def check_liveness_soon(self, now: float) -> bool:
        """The peer may have restarted (an unprotected INVALID_SPI or INVALID_IKE_SPI,
        §2.21.4): check at once, on the short schedule `HINT_CHECK_DELAYS`.

        A hint is not proof, so nothing is deleted: a request already on the wire moves
        its remaining retransmissions to that schedule, or an empty INFORMATIONAL goes
        out; only a peer that answers neither ends the IKE SA, as after any failed
        liveness check. False if nothing could be hastened (not established, or our
        requests wait for the peer to confirm a rekey).
        """
        if self.state is not IkeSaState.ESTABLISHED:
            return False
        self.now = now
        if self.tm.outstanding is None:
            self.check_liveness(now)
        hastened = self.tm.hasten(HINT_CHECK_DELAYS, now)
        self.changed()  # an earlier timer
        return hastened

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
            message = open_message(self, data, header)
            if message is None:
                return  # more fragments to come
            check_payloads(header.exchange_type, True, message.payloads)
        except IkeError as exc:
            # Unauthenticated or garbled: drop and let retransmission recover (§2.21).
            log.info("%s: dropping invalid response: %s", self.name, exc)
            self.on_drop(drop_reason(exc))
            return
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            self.init_response = data
            if self.spi_r == bytes(8):
                self.spi_r = header.spi_r
        else:
            self._peer_address_seen(local, remote)
        try:
            if header.exchange_type == ExchangeType.IKE_INTERMEDIATE:
                self.note_intermediate(message)
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
        if self.auth_continues:
            # EAP (§2.16): the same tasks build the next IKE_AUTH request.
            self.auth_continues = False
            self.tm.queue_first(exchange)
        self._after_exchange(now)
        self.send_next(now)

    def _receive_request(
        self, data: bytes, header: IkeHeader, local: Address, remote: Address, now: float
    ) -> None:
        cached = self.tm.cached_response
        if is_fragmented(data) and cached is not None and header.message_id == cached.message_id:
            resend_for_fragment(self, data)
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
            self._send(self.tm.cached_packets(), (local, remote))
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
            message = open_message(self, data, header)
        except InvalidSyntax as exc:
            if not answerable(exc, header.exchange_type):
                drop_invalid_request(self, header, remote, exc)
                return
            # §2.5, §2.21.3: a message we cannot read gets its error notify back when it
            # comes from the peer for sure (authenticated), or is an unprotected
            # IKE_SA_INIT with an unknown critical payload.
            log.info("%s: refusing a request we cannot read: %s", self.name, exc)
            unreadable = exc
        except IkeError as exc:
            drop_invalid_request(self, header, remote, exc)
            return
        else:
            if message is None:
                return  # more fragments to come
        if message is not None and self.rekeyed_from is not None and not deletes_ike(message):
            ike_handover.take_over_from_parent(self)
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            self.spi_i = header.spi_i
            self.init_request = data
        else:
            self._peer_address_seen(local, remote)
        payloads: list[Payload] = []
        fatal: IkeError | None = unreadable
        if unreadable is not None:
            payloads = [error_notify(unreadable)]
        elif message is not None:
            tasks = factory(self)
            try:
                check_payloads(header.exchange_type, False, message.payloads)
                if header.exchange_type == ExchangeType.IKE_INTERMEDIATE:
                    self.note_intermediate(message)
                for task in tasks:
                    task.process_request(self, message)
                for task in tasks:
                    task.build_response(self, payloads)
            except IkeError as exc:
                fatal = exc
                payloads = error_payloads(exc)
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
        if header.exchange_type == ExchangeType.IKE_INTERMEDIATE and fatal is None:
            # RFC 9242 §3.3.1, RFC 9370 §2.2.2: our response counts under the keys it
            # was sealed with; the new keys protect what follows.
            self.note_intermediate(response)
            self.take_deferred_keys()
        self.tm.response_sent(header.message_id, data, packets)
        self._send(packets, (local, remote))
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
            if header.exchange_type in _SETUP_EXCHANGES:
                # §2.21.1-2: a refused IKE_SA_INIT or IKE_AUTH leaves no IKE SA behind,
                # nor does a refused IKE_INTERMEDIATE (RFC 9242 §3.4), which precedes it.
                refusal = fatal.refusal if isinstance(fatal, LoginRefused) else ""
                self.fail(str(fatal), fatal.notify, refusal=refusal)
                return
            # Any later request refused with a notify leaves the IKE SA as it was.
            log.info(
                "%s: refused %s request: %s",
                self.name,
                enum_name(ExchangeType, header.exchange_type),
                fatal,
            )
        self._after_exchange(now)
        self.send_next(now)

    # --- sending ------------------------------------------------------------------------

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
        elif exchange.exchange_type == ExchangeType.IKE_INTERMEDIATE:
            self.note_intermediate(message)
        return packets

    def send_next(self, now: float) -> None:
        """Send the next queued exchange if the window allows."""
        self.changed()  # a new request or its timer, or a deferral until confirmed
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
        self.send_next(now)

    # --- state changes ------------------------------------------------------------------

    def _after_exchange(self, now: float) -> None:
        """Housekeeping after an exchange completed."""
        if self.state is IkeSaState.ESTABLISHED:
            self.auth_tasks = None  # IKE_AUTH is over, however many rounds it took
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
            self.intermediate = None
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

    def fail(self, reason: str, notify: int | None, *, refusal: str = "") -> None:
        """The IKE SA is unusable: report it and go away without further messages."""
        if self.state is IkeSaState.DELETED:
            return
        was = self.state
        self.state = IkeSaState.DELETED
        self.tm.pending.clear()
        self.tm.abandon_request()
        if was in (IkeSaState.CREATED, IkeSaState.HALF_OPEN):
            log.warning(
                "%s: IKE SA with %s failed: %s", self.name, format_address(self.remote), reason
            )
            self.emit(
                IkeSaFailed(
                    self.config.name,
                    self.ike_sa_id,
                    reason,
                    notify,
                    self.eap_identity,
                    self.remote,
                    refusal,
                )
            )
        else:
            self.gone(reason, by_peer=False)

    def gone(self, reason: str, *, by_peer: bool) -> None:
        """Remove every CHILD SA and the IKE SA itself, with their events."""
        if by_peer:
            ike_handover.deleted_by_peer(self)
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
        report("%s: IKE SA with %s deleted: %s", self.name, format_address(self.remote), reason)
        cause = ike_delete_cause(reason, by_peer=by_peer, we_deleted=bool(self.delete_reason))
        self.emit(IkeSaDeleted(self.config.name, self.ike_sa_id, reason, by_peer, cause))

    def _fail_after_response(self, exc: IkeError, now: float) -> None:
        if isinstance(exc, PeerErrorNotify):
            # The peer told us; it keeps nothing, so neither do we (§2.21).
            self.fail(str(exc), exc.peer_notify)
            return
        if exc.notify is not None and self.sk is not None:
            # §2.21.2: tell the responder why before dropping the IKE SA.
            self.send_notify_and_close(error_notify(exc), now)
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
            self.send_next(now)
        if self.half_open_deadline is not None and now >= self.half_open_deadline:
            self.fail("peer did not complete IKE_AUTH in time", None)
            return
        if self.expire_at is not None and now >= self.expire_at:
            self.expire_at = None
            if self.state is IkeSaState.REKEYED:
                self.gone("the peer never deleted it", by_peer=False)
                return
            self.delete(now, "IKE SA lifetime expired")
        if self.followups:
            expire_followups(self, now)
        if self.ike_rekey_at is not None and now >= self.ike_rekey_at:
            self.ike_rekey_at = None
            self.rekey_ike(now)
        due = [r for r in self.resource_retries if now >= r.at]
        if due:
            self.resource_retries = [r for r in self.resource_retries if now < r.at]
            for retry in due:
                self._ask_resource_sa(retry.config, retry.like)
            self.send_next(now)
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


_SETUP_EXCHANGES = (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_INTERMEDIATE, ExchangeType.IKE_AUTH)


def _responder_init(sa: IkeSa) -> list[Task]:
    return [IkeInit(), IkeNatd()]


def _responder_auth(sa: IkeSa) -> list[Task]:
    if sa.intermediate is not None and sa.intermediate.rounds:
        return [RefuseEarlyAuth()]
    # One list for every IKE_AUTH exchange of an EAP login (§2.16): the CHILD SA and
    # configuration requested in the first are answered in the last.
    if sa.auth_tasks is None:
        sa.auth_tasks = [IkeAuth(), IkeConfig(), ChildCreate(None), IkeMobike()]
    return sa.auth_tasks


def _responder_intermediate(sa: IkeSa) -> list[Task]:
    return [AnswerIntermediate()]


def _informational(sa: IkeSa) -> list[Task]:
    return [Informational(), UpdateSaAddresses()]


def _create_child(sa: IkeSa) -> list[Task]:
    return [AnswerCreateChild()]


def _followup_ke(sa: IkeSa) -> list[Task]:
    return [AnswerFollowupKe()]


def _refuse_child(sa: IkeSa) -> list[Task]:
    return [RefuseCreateChild()]


_REQUEST_TASKS: dict[tuple[IkeSaState, int], Callable[[IkeSa], list[Task]]] = {
    (IkeSaState.HALF_OPEN, ExchangeType.IKE_SA_INIT): _responder_init,
    (IkeSaState.HALF_OPEN, ExchangeType.IKE_INTERMEDIATE): _responder_intermediate,
    (IkeSaState.HALF_OPEN, ExchangeType.IKE_AUTH): _responder_auth,
    (IkeSaState.ESTABLISHED, ExchangeType.INFORMATIONAL): _informational,
    (IkeSaState.ESTABLISHED, ExchangeType.CREATE_CHILD_SA): _create_child,
    (IkeSaState.ESTABLISHED, ExchangeType.IKE_FOLLOWUP_KE): _followup_ke,
    (IkeSaState.DELETING, ExchangeType.INFORMATIONAL): _informational,
    (IkeSaState.DELETING, ExchangeType.CREATE_CHILD_SA): _refuse_child,
    (IkeSaState.REKEYED, ExchangeType.INFORMATIONAL): _informational,
    (IkeSaState.REKEYED, ExchangeType.CREATE_CHILD_SA): _refuse_child,
}
"""(state, exchange type of a peer's request) -> the tasks that answer it.

Anything not listed is dropped: e.g. IKE_AUTH once established, or INFORMATIONAL
before authentication (RFC 7296 §1.4 requires the IKE SA to exist).
"""

__all__ = ["IkeSa"]
