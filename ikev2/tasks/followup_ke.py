"""IKE_FOLLOWUP_KE: the additional key exchanges of a CREATE_CHILD_SA (RFC 9370 §2.2.4).

A CREATE_CHILD_SA whose chosen proposal has ke1_ ... ke7_ transforms (a CHILD SA with
PFS, or an IKE rekey) runs its classical key exchange as usual; the responder's answer
adds N(ADDITIONAL_KEY_EXCHANGE) with a link of its choosing. One IKE_FOLLOWUP_KE per
additional key exchange follows, each request carrying the last link the responder
sent, each response but the last a new one. Nothing is created before the last
exchange: then KEYMAT, or the new IKE SA's SKEYSEED, takes every shared secret,
SK(0) | Ni | Nr | SK(1) | ... | SK(n).

The requester's CREATE_CHILD_SA task stays alive as the `FollowupRequester` its rounds
report to. The responder keeps its task in `TaskSa.followups` under the link it sent,
and forgets it `FOLLOWUP_TIMEOUT` seconds later if the next request has not come. A
request with a link it does not know gets STATE_NOT_FOUND; any error ends the series
on both sides, and the SA it was for is not created.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ikev2.codec import KeyExchange as KePayload
from ikev2.codec import Message, Notify, Payload
from ikev2.constants import ExchangeType, NotifyType
from ikev2.crypto.dh import KeyExchange
from ikev2.errors import IkeError, InvalidSyntax, StateNotFound
from ikev2.sa_types import ChildSa
from ikev2.tasks.base import Exchange, FollowupAnswer, Task, TaskSa
from ikev2.tasks.ike_intermediate import answer_round, finish_round, method_name

log = logging.getLogger(__name__)

FOLLOWUP_TIMEOUT = 20.0
"""Seconds a responder waits for the next IKE_FOLLOWUP_KE (§2.2.4 suggests 5-20 s; the
longest, as a request may take a few retransmissions)."""
LINK_SIZE = 8
"""Octets of the random link data we send; it means something to us alone (§2.2.4)."""


class FollowupRequester(Protocol):
    """The requester's CREATE_CHILD_SA task, waiting for its additional key exchanges."""

    @property
    def what(self) -> str:
        """What the exchange does, for logs ("rekeying CHILD SA net{3}")."""

    def followup_done(self, sa: TaskSa, additional: tuple[bytes, ...]) -> None:
        """Every additional key exchange ran: create the SA with SK(1) ... SK(n)."""

    def followup_failed(self, sa: TaskSa, exc: IkeError) -> None:
        """A round failed (the peer's error notify, or a bad response): nothing is made."""


class FollowupKe(Task):
    """Requester: one IKE_FOLLOWUP_KE round of a CREATE_CHILD_SA of ours.

    Named after the exchange it continues (the subclasses), so that a collision check
    that asks whether we are creating or rekeying something sees it too.
    """

    name = "followup_ke"

    def __init__(
        self,
        owner: FollowupRequester,
        rounds: list[tuple[int, int]],
        link: bytes,
        secrets: tuple[bytes, ...] = (),
        rekeys: ChildSa | None = None,
    ) -> None:
        self.owner = owner
        self.rounds = rounds
        """(transform type, method) of this round and the ones after it."""
        self.link = link
        """The responder's link data for this round."""
        self.secrets = secrets
        """SK(1) ... of the rounds before this one."""
        self.rekeys = rekeys
        """The CHILD SA the exchange rekeys, if it does."""
        self.ke: KeyExchange | None = None

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        _, method = self.rounds[0]
        self.ke = sa.new_key_exchange(method)
        out += [
            KePayload(method, self.ke.public_bytes),
            Notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, self.link),
        ]

    def process_response(self, sa: TaskSa, message: Message) -> None:
        # A failed round ends the CREATE_CHILD_SA it continues, never the IKE SA.
        try:
            shared, link = self._read(message)
        except IkeError as exc:
            self.owner.followup_failed(sa, exc)
            return
        secrets = (*self.secrets, shared)
        log.info(
            "%s: %s: additional key exchange %d (%s) done",
            sa.name,
            self.owner.what,
            len(secrets),
            method_name(self.rounds[0][1]),
        )
        if link is None:
            try:
                self.owner.followup_done(sa, secrets)
            except IkeError as exc:
                self.owner.followup_failed(sa, exc)
            return
        follow = type(self)(self.owner, self.rounds[1:], link, secrets, self.rekeys)
        sa.tm.queue_first(Exchange(ExchangeType.IKE_FOLLOWUP_KE, [follow]))

    def _read(self, message: Message) -> tuple[bytes, bytes | None]:
        shared = finish_round(message, self.ke, "IKE_FOLLOWUP_KE")
        self.ke = None  # the private key is not needed again
        link = message.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
        more = len(self.rounds) > 1
        if more and link is None:
            raise InvalidSyntax("IKE_FOLLOWUP_KE response ends the negotiated key exchanges early")
        if not more and link is not None:
            raise InvalidSyntax("IKE_FOLLOWUP_KE response asks for more key exchanges than chosen")
        return shared, link.data if link is not None else None


class ChildFollowupKe(FollowupKe):
    """A round of our CREATE_CHILD_SA for a CHILD SA."""

    name = "child_create_sa"


class IkeFollowupKe(FollowupKe):
    """A round of our IKE rekey."""

    name = "ike_rekey"


def _rounds_of_ours(sa: TaskSa) -> list[FollowupKe]:
    """Our IKE_FOLLOWUP_KE rounds on the wire or queued."""
    exchanges = list(sa.tm.pending)
    if sa.tm.outstanding is not None:
        exchanges.append(sa.tm.outstanding.context)
    return [task for ex in exchanges for task in ex.tasks if isinstance(task, FollowupKe)]


def rekeying_in_followups(sa: TaskSa, child: ChildSa) -> bool:
    """Our rekey of ``child`` finished its CREATE_CHILD_SA and runs its additional key
    exchanges."""
    return any(task.rekeys is child for task in _rounds_of_ours(sa))


def ike_rekey_in_followups(sa: TaskSa) -> bool:
    """Our IKE rekey finished its CREATE_CHILD_SA and runs its additional key exchanges."""
    return any(isinstance(task, IkeFollowupKe) for task in _rounds_of_ours(sa))


def followups_under_way(sa: TaskSa) -> bool:
    """Additional key exchanges of a CREATE_CHILD_SA run on this IKE SA, either way."""
    return bool(sa.followups) or bool(_rounds_of_ours(sa))


def ike_rekey_in_flight(sa: TaskSa) -> bool:
    """Our IKE rekey is queued, on the wire, or in its additional key exchanges."""
    exchanges = list(sa.tm.pending)
    if sa.tm.outstanding is not None:
        exchanges.append(sa.tm.outstanding.context)
    return any(task.name == "ike_rekey" for ex in exchanges for task in ex.tasks)


def followup_link(message: Message) -> bytes:
    """The link of a CREATE_CHILD_SA response that chose additional key exchanges."""
    link = message.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    if link is None:
        raise InvalidSyntax("peer chose additional key exchanges without a link to them")
    return link.data


def answer_with_followups(sa: TaskSa, answer: FollowupAnswer, out: list[Payload]) -> None:
    """Responder of a CREATE_CHILD_SA: keep ``answer`` for the first IKE_FOLLOWUP_KE and
    add the ADDITIONAL_KEY_EXCHANGE notify with its link to our response."""
    link = sa.rng.token_bytes(LINK_SIZE)
    sa.followups[link] = answer
    out.append(Notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, link))


def pending_peer_ike_rekey(sa: TaskSa) -> FollowupAnswer | None:
    """The peer's IKE rekey we answered, whose additional key exchanges are to come."""
    return next((a for a in sa.followups.values() if a.ike_rekey), None)


def pending_peer_rekey_of(sa: TaskSa, child: ChildSa) -> FollowupAnswer | None:
    """The peer's rekey of ``child`` we answered, whose key exchanges are to come."""
    return next((a for a in sa.followups.values() if a.rekeys is child), None)


def forget_answers_for(sa: TaskSa, child: ChildSa) -> None:
    """Drop the peer's unfinished rekeys of ``child``, which our rekey replaced."""
    for link, answer in list(sa.followups.items()):
        if answer.rekeys is child:
            del sa.followups[link]


def expire_followups(sa: TaskSa, now: float) -> None:
    """Forget the series whose next IKE_FOLLOWUP_KE did not come in time (§2.2.4)."""
    for link, answer in list(sa.followups.items()):
        if now >= answer.expires_at:
            del sa.followups[link]
            log.debug("%s: no IKE_FOLLOWUP_KE in time; the series is forgotten", sa.name)
            answer.owner.followup_abandoned(sa)


class AnswerFollowupKe(Task):
    """Responder: one IKE_FOLLOWUP_KE round of a CREATE_CHILD_SA we answered."""

    name = "answer_followup_ke"

    def __init__(self) -> None:
        self.reply: list[Payload] = []
        self.done: FollowupAnswer | None = None

    def process_request(self, sa: TaskSa, message: Message) -> None:
        expire_followups(sa, sa.now)
        link = message.notify(NotifyType.ADDITIONAL_KEY_EXCHANGE)
        if link is None:
            raise InvalidSyntax("IKE_FOLLOWUP_KE request without ADDITIONAL_KEY_EXCHANGE")
        answer = sa.followups.pop(link.data, None)
        if answer is None:
            raise StateNotFound("IKE_FOLLOWUP_KE for no CREATE_CHILD_SA we wait on")
        try:
            self._round(sa, message, answer)
        except IkeError:
            # §2.2.4: a failed round ends the series; the SA it was for is not made.
            answer.owner.followup_abandoned(sa)
            raise

    def _round(self, sa: TaskSa, message: Message, answer: FollowupAnswer) -> None:
        _, method = answer.rounds[0]
        ours, shared = answer_round(message, method, sa.rng, "IKE_FOLLOWUP_KE")
        answer.rounds.pop(0)
        answer.secrets.append(shared)
        self.reply = [KePayload(method, ours)]
        log.info(
            "%s: additional key exchange %d (%s) of the peer's CREATE_CHILD_SA done",
            sa.name,
            len(answer.secrets),
            method_name(method),
        )
        if answer.rounds:
            answer.expires_at = sa.now + FOLLOWUP_TIMEOUT
            answer_with_followups(sa, answer, self.reply)
            return
        self.done = answer
        answer.owner.followup_done(sa, tuple(answer.secrets))

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        out += self.reply
        if self.done is not None:
            self.done.owner.build_response(sa, out)


__all__ = [
    "FOLLOWUP_TIMEOUT",
    "AnswerFollowupKe",
    "ChildFollowupKe",
    "FollowupKe",
    "FollowupRequester",
    "IkeFollowupKe",
    "answer_with_followups",
    "expire_followups",
    "followup_link",
    "followups_under_way",
    "forget_answers_for",
    "ike_rekey_in_flight",
    "ike_rekey_in_followups",
    "pending_peer_ike_rekey",
    "pending_peer_rekey_of",
    "rekeying_in_followups",
]
