"""Rekeying the IKE SA with CREATE_CHILD_SA (RFC 7296 §1.3.2, §2.8, §2.18).

Request: SA (IKE proposals carrying the requester's new 8-octet SPI), Ni, KEi.
Response: SA (the chosen proposal with the responder's new SPI), Nr, KEr. The new IKE
SA's initiator is whoever sent the request; its keys come from
SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) with the old PRF, then prf+ as in
§2.14 with the new SPIs. The CHILD SAs move to the new IKE SA unchanged, and the
requester deletes the old IKE SA, which then goes quietly (no CHILD SA is lost).

Crossing IKE rekeys (§2.8.2, §2.25.2): a peer's request that arrives while ours is on
the wire is answered as usual; once ours completes, of the two new IKE SAs the one
whose exchange had the lowest nonce is deleted by its creator and the other inherits
the CHILD SAs; its creator deletes the old SA. A peer that completed its rekey before
it saw ours answers ours with TEMPORARY_FAILURE (the old SA is closing), and its new
SA is then the only one. A rekey request while one of our CHILD SA exchanges (create,
rekey, delete) is on the wire is refused with TEMPORARY_FAILURE (§2.25.1).

With additional key exchanges in the chosen proposal the new IKE SA is made after the
IKE_FOLLOWUP_KE exchanges (``ikev2.tasks.followup_ke``), from
SKEYSEED = prf(SK_d (old), g^ir | Ni | Nr | SK(1) | ... | SK(n)) (RFC 9370 §2.2.4).
Crossing rekeys are then settled when the CREATE_CHILD_SAs complete, as no new SA
exists yet: the initiator of the exchange with the lowest nonce stops there, without
IKE_FOLLOWUP_KE; a rekey request that arrives while our own rekey is in its
IKE_FOLLOWUP_KE exchanges gets TEMPORARY_FAILURE.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ikev2.codec import KeyExchange as KePayload
from ikev2.codec import Message, Nonce, Payload, Proposal, SecurityAssociation
from ikev2.constants import ExchangeType, NotifyType, ProtocolId, enum_name
from ikev2.crypto.dh import KeyExchange
from ikev2.crypto.keys import IkeKeys, derive_ike_keys, rekey_skeyseed
from ikev2.crypto.registry import IkeSuite, ike_suite
from ikev2.errors import (
    IkeError,
    InvalidKePayload,
    InvalidSyntax,
    NoProposalChosen,
    PeerErrorNotify,
    TemporaryFailure,
)
from ikev2.proposals import (
    LazyDescription,
    additional_key_exchanges,
    check_chosen_proposal,
    dh_group,
    parse_ike_proposal,
    sa_payload,
    select_proposal,
)
from ikev2.tasks.base import Exchange, FollowupAnswer, Task, TaskSa, retry_delay
from ikev2.tasks.followup_ke import (
    FOLLOWUP_TIMEOUT,
    IkeFollowupKe,
    answer_with_followups,
    followup_link,
    followups_under_way,
    ike_rekey_in_flight,
    ike_rekey_in_followups,
    pending_peer_ike_rekey,
)
from ikev2.tasks.ike_init import NONCE_SIZE

log = logging.getLogger(__name__)

CHILD_TASKS = frozenset({"child_create_sa", "child_delete"})
"""Task names of our CHILD SA exchanges, during which the IKE SA is not rekeyed."""
RETRY_AFTER = 60.0
"""Mean seconds before a failed IKE rekey is tried again (the hard lifetime still applies)."""


def _ours(sa: TaskSa) -> list[Proposal]:
    out: list[Proposal] = []
    for text in sa.config.ike_proposals:
        proposal = parse_ike_proposal(text)
        if proposal not in out:
            out.append(proposal)
    return out


def wanted_group(message: Message, sent: int | None, offered: Sequence[Proposal]) -> int | None:
    """The key exchange group an INVALID_KE_PAYLOAD answer asks us to retry with
    (RFC 7296 §1.2, §1.3): one we offered and did not send. ``None`` when the notify is
    absent, malformed or asks for something else; it is then an error like any other."""
    invalid_ke = message.notify(NotifyType.INVALID_KE_PAYLOAD)
    if invalid_ke is None or len(invalid_ke.data) != 2:
        return None
    wanted = int.from_bytes(invalid_ke.data, "big")
    if wanted != sent and any(dh_group(p) == wanted for p in offered):
        return wanted
    return None


def raise_refusal(message: Message, what: str) -> None:
    """Raise the first error notify of a CREATE_CHILD_SA response as the peer's refusal
    of ``what`` (RFC 7296 §2.21); return if there is none."""
    for notify in message.error_notifies():
        raise PeerErrorNotify(
            notify.notify_type,
            notify.data,
            f"peer refused {what}: {enum_name(NotifyType, notify.notify_type)}",
        )


def _suite(chosen: Proposal) -> IkeSuite:
    try:
        return ike_suite(chosen)
    except IkeError as exc:
        raise NoProposalChosen(f"selected IKE proposal is not implemented: {exc}") from exc


def _new_keys(sa: TaskSa, made: _NewSa, additional: tuple[bytes, ...]) -> IkeKeys:
    if sa.suite is None or sa.keys is None:
        raise InvalidSyntax("IKE rekey before the IKE SA has keys")
    ni, nr = made.nonce_i, made.nonce_r
    seed = rekey_skeyseed(sa.suite.prf, sa.keys.sk_d, made.g_ir, ni, nr, additional)
    return derive_ike_keys(made.suite, seed, ni, nr, made.spi_i, made.spi_r)


@dataclass(frozen=True, repr=False)
class _NewSa:
    """A completed IKE rekey's CREATE_CHILD_SA: what the new IKE SA is made of once
    its additional key exchanges (if any) ran."""

    spi_i: bytes
    spi_r: bytes
    suite: IkeSuite
    g_ir: bytes
    nonce_i: bytes
    nonce_r: bytes
    chosen: Proposal


class IkeRekey(Task):
    """Our request to rekey the IKE SA."""

    name = "ike_rekey"
    what = "rekeying the IKE SA"

    def __init__(self, group: int | None = None) -> None:
        self.group = group
        self.spi = b""
        self.nonce_i = b""
        self.ke: KeyExchange | None = None
        self.offered: list[Proposal] = []
        self.made: _NewSa | None = None
        """The responder's answer, once read."""

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        self.offered = _ours(sa)
        if self.group is None:
            # Prefer the group in use; the peer chose it once already.
            current = sa.suite.ke_group.group if sa.suite is not None else 0
            groups = [dh_group(p) for p in self.offered]
            self.group = current if current in groups else groups[0]
        self.spi = sa.random_spi(8)
        self.nonce_i = sa.rng.token_bytes(NONCE_SIZE)
        self.ke = sa.new_key_exchange(self.group)
        out += [
            sa_payload(self.offered, self.spi),
            Nonce(self.nonce_i),
            KePayload(self.group, self.ke.public_bytes),
        ]

    def process_response(self, sa: TaskSa, message: Message) -> None:
        try:
            self._process_response(sa, message)
        except IkeError as exc:
            self.followup_failed(sa, exc)

    def followup_failed(self, sa: TaskSa, exc: IkeError) -> None:
        """The rekey failed (in CREATE_CHILD_SA or one of its IKE_FOLLOWUP_KE rounds)."""
        if sa.ike_rekey_failed():
            log.info("%s: our IKE rekey failed (%s); the peer's took over", sa.name, exc)
            return
        delay = retry_delay(sa, RETRY_AFTER)
        log.warning(
            "%s: rekeying the IKE SA failed (%s); trying again in %.0f s",
            sa.name,
            exc,
            delay,
        )
        sa.retry_ike_rekey_at(sa.now + delay)

    def _process_response(self, sa: TaskSa, message: Message) -> None:
        wanted = wanted_group(message, self.group, self.offered)
        if wanted is not None:
            if sa.ike_rekey_failed():
                return  # the peer's crossing rekey made the new IKE SA already
            log.info("%s: peer wants group %d for the IKE rekey; retrying", sa.name, wanted)
            sa.tm.queue(Exchange(message.exchange_type, [IkeRekey(wanted)]))  # type: ignore[arg-type]
            return
        raise_refusal(message, "to rekey the IKE SA")
        answer = message.get(SecurityAssociation)
        nonce = message.get(Nonce)
        ke = message.get(KePayload)
        if answer is None or nonce is None or ke is None or self.ke is None:
            raise InvalidSyntax("IKE rekey response lacks SA, Nonce or KE")
        chosen = check_chosen_proposal(self.offered, answer)
        if len(chosen.spi) != 8:
            raise InvalidSyntax("IKE proposal without an 8-octet SPI")
        if ke.group != self.group or dh_group(chosen) != self.group:
            raise InvalidKePayload(self.group or 0, "peer answered with another group")
        suite = _suite(chosen)
        g_ir = self.ke.shared_secret(ke.data)
        self.made = _NewSa(self.spi, chosen.spi, suite, g_ir, self.nonce_i, nonce.data, chosen)
        rounds = additional_key_exchanges(chosen)
        if not rounds:
            self.followup_done(sa, ())
            return
        link = followup_link(message)
        lowest = min(self.nonce_i, nonce.data)
        theirs = sa.peer_ike_rekey
        pending = pending_peer_ike_rekey(sa)
        lowest_theirs = theirs.lowest_nonce if theirs is not None else None
        if pending is not None:
            lowest_theirs = pending.lowest_nonce
        if lowest_theirs is not None and lowest < lowest_theirs:
            # RFC 9370 §2.2.4: both rekeyed at once and our exchange had the lowest
            # nonce. No new SA exists yet to delete: ours stops here, without
            # IKE_FOLLOWUP_KE. The peer's rekey makes the new IKE SA (at once if it
            # did already, else when its last IKE_FOLLOWUP_KE is answered).
            log.info("%s: simultaneous IKE rekeying: the peer's wins", sa.name)
            sa.ike_rekey_failed()
            return
        follow = IkeFollowupKe(self, rounds, link)
        sa.tm.queue_first(Exchange(ExchangeType.IKE_FOLLOWUP_KE, [follow]))

    def followup_done(self, sa: TaskSa, additional: tuple[bytes, ...]) -> None:
        """Every key exchange ran: make the new IKE SA and hand over to it."""
        made = self.made
        if made is None:
            raise InvalidSyntax("IKE SA before its CREATE_CHILD_SA completed")
        keys = _new_keys(sa, made, additional)
        new = sa.spawn_rekeyed(
            initiator=True,
            spi_i=made.spi_i,
            spi_r=made.spi_r,
            suite=made.suite,
            keys=keys,
            nonce_i=made.nonce_i,
            nonce_r=made.nonce_r,
        )
        log.info("%s: IKE SA rekeyed into %s (%s)", sa.name, new.name, LazyDescription(made.chosen))
        # §2.8: the requester deletes the old IKE SA; its CHILD SAs live on in the new one
        # (unless a crossing rekey of the peer's wins, §2.8.2).
        sa.ike_rekeyed(new, min(made.nonce_i, made.nonce_r))


class AnswerIkeRekey(Task):
    """The responder's side of an IKE SA rekey."""

    name = "ike_rekey_responder"

    def __init__(self) -> None:
        self.response: list[Payload] = []
        self.made: _NewSa | None = None
        self.keys: IkeKeys | None = None
        """The new IKE SA's keys once every key exchange ran: it is made as the
        response goes out."""

    def process_request(self, sa: TaskSa, message: Message) -> None:
        busy = sa.outstanding_tasks()
        if busy & CHILD_TASKS:
            # §2.25.1: not while we create, rekey or delete a CHILD SA of this IKE SA.
            raise TemporaryFailure("an exchange of ours for a CHILD SA is under way")
        if sa.peer_ike_rekey is not None or pending_peer_ike_rekey(sa) is not None:
            raise TemporaryFailure("the peer's previous IKE rekey is not settled yet")
        if ike_rekey_in_followups(sa):
            # RFC 9370 §2.2.4: this request crossed ours, which completed its
            # CREATE_CHILD_SA and runs its IKE_FOLLOWUP_KE exchanges.
            raise TemporaryFailure("our IKE rekey is in its additional key exchanges")
        if followups_under_way(sa):
            # §2.25.1 as for CHILD SA exchanges: their state stays with this IKE SA.
            raise TemporaryFailure("additional key exchanges of a CHILD SA are under way")
        offer = message.get(SecurityAssociation)
        nonce = message.get(Nonce)
        ke = message.get(KePayload)
        if offer is None or nonce is None or ke is None:
            raise InvalidSyntax("IKE rekey request lacks SA, Nonce or KE")
        offered = [p for p in offer.proposals if p.protocol == ProtocolId.IKE]
        chosen = select_proposal(_ours(sa), offered)
        if len(chosen.spi) != 8:
            raise InvalidSyntax("IKE proposal without an 8-octet SPI")
        group = dh_group(chosen)
        if ke.group != group:
            raise InvalidKePayload(group)
        suite = _suite(chosen)
        ours = sa.new_key_exchange(group)
        g_ir = ours.shared_secret(ke.data)
        spi_r = sa.random_spi(8)
        nonce_r = sa.rng.token_bytes(NONCE_SIZE)
        answer = Proposal(chosen.number, ProtocolId.IKE, spi_r, chosen.transforms)
        self.response = [
            SecurityAssociation((answer,)),
            Nonce(nonce_r),
            KePayload(group, ours.public_bytes),
        ]
        self.made = _NewSa(chosen.spi, spi_r, suite, g_ir, nonce.data, nonce_r, chosen)
        log.info("%s: peer rekeys the IKE SA (%s)", sa.name, LazyDescription(chosen))
        rounds = additional_key_exchanges(chosen)
        if not rounds:
            self.followup_done(sa, ())
            return
        lowest = min(nonce.data, nonce_r)
        pending = FollowupAnswer(self, rounds, sa.now + FOLLOWUP_TIMEOUT, lowest, ike_rekey=True)
        answer_with_followups(sa, pending, self.response)

    def followup_done(self, sa: TaskSa, additional: tuple[bytes, ...]) -> None:
        """Every key exchange ran: the new IKE SA is made as the response goes out."""
        if self.made is None:
            raise InvalidSyntax("IKE SA before its CREATE_CHILD_SA was answered")
        if additional:
            self.response = []  # the last IKE_FOLLOWUP_KE response carries its KE only
        self.keys = _new_keys(sa, self.made, additional)

    def followup_abandoned(self, sa: TaskSa) -> None:
        """The peer's additional key exchanges stopped: no new IKE SA. If our own
        crossing rekey stopped in its favour, it is tried again."""
        log.info("%s: the peer's IKE rekey ended unfinished", sa.name)
        if sa.ike_rekeying and not ike_rekey_in_flight(sa) and sa.rekeyed_into is None:
            sa.retry_ike_rekey_at(sa.now)

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        out += self.response
        # The new IKE SA takes over now; the old one answers this request and then waits
        # for the peer's Delete (§2.8).
        made, keys = self.made, self.keys
        if made is None or keys is None:
            return
        new = sa.spawn_rekeyed(
            initiator=False,
            spi_i=made.spi_i,
            spi_r=made.spi_r,
            suite=made.suite,
            keys=keys,
            nonce_i=made.nonce_i,
            nonce_r=made.nonce_r,
        )
        if "ike_rekey" in sa.outstanding_tasks() or ike_rekey_in_followups(sa):
            # §2.8.2: which new SA survives is known once our own rekey completes.
            log.info("%s: simultaneous IKE rekeying; settled when ours completes", sa.name)
            sa.crossing_ike_rekey(new, min(made.nonce_i, made.nonce_r))
            return
        sa.hand_over(new)
