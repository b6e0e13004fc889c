"""IKE_INTERMEDIATE: the additional key exchanges of RFC 9370 between IKE_SA_INIT and
IKE_AUTH (RFC 9242).

One exchange per additional key exchange, in the order of their transform types: the
initiator sends its KE data (an ML-KEM encapsulation key), the responder answers with
its own (the ciphertext). Both then derive every SK_* anew from
SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr) (§2.2.2); the responder only after its
response went out under the old keys. ``ikev2.sa`` chains each message into IntAuth
(``ikev2.crypto.intauth``) with the keys of its moment, before these tasks run.
"""

from __future__ import annotations

import logging

from ikev2.codec import KeyExchange as KePayload
from ikev2.codec import Message, Payload
from ikev2.crypto.dh import KE_METHODS, KeyExchange, respond_key_exchange
from ikev2.crypto.keys import IkeKeys, additional_skeyseed, derive_ike_keys
from ikev2.crypto.registry import IkeSuite
from ikev2.crypto.rng import RandomSource
from ikev2.errors import InvalidSyntax, LocalProtocolError, PeerErrorNotify
from ikev2.sa_types import Intermediate
from ikev2.tasks.base import Task, TaskSa

log = logging.getLogger(__name__)


def keys_after_additional_ke(sa: TaskSa, shared: bytes) -> tuple[IkeSuite, IkeKeys]:
    """The IKE SA's keys once additional key exchange n gave ``shared`` (RFC 9370
    §2.2.2): SKEYSEED(n) from SK_d(n-1), then prf+ as in IKE_SA_INIT (RFC 7296 §2.14)."""
    suite, keys = sa.suite, sa.keys
    if suite is None or keys is None:
        raise LocalProtocolError("additional key exchange before IKE_SA_INIT's keys")
    seed = additional_skeyseed(suite.prf, keys.sk_d, shared, sa.nonce_i, sa.nonce_r)
    return suite, derive_ike_keys(suite, seed, sa.nonce_i, sa.nonce_r, sa.spi_i, sa.spi_r)


def _state(sa: TaskSa) -> Intermediate:
    state = sa.intermediate
    if state is None or not state.rounds:
        raise InvalidSyntax("IKE_INTERMEDIATE without an additional key exchange to run")
    return state


def method_name(method: int) -> str:
    info = KE_METHODS.get(method)
    return info.name if info is not None else f"method {method}"


def finish_round(message: Message, ke: KeyExchange | None, exchange: str) -> bytes:
    """Requester: SK(n) of one additional key exchange from the response of
    ``exchange`` to our ``ke`` (an error notify in it is the peer's refusal)."""
    for notify in message.error_notifies():
        raise PeerErrorNotify(notify.notify_type, notify.data)
    payload = message.get(KePayload)
    if payload is None or ke is None:
        raise InvalidSyntax(f"{exchange} response lacks the KE payload")
    if payload.group != ke.group.group:
        raise InvalidSyntax(
            f"{exchange} response has KE of {method_name(payload.group)}, not {ke.group.name}"
        )
    return ke.shared_secret(payload.data)


def answer_round(
    message: Message, method: int, rng: RandomSource, exchange: str
) -> tuple[bytes, bytes]:
    """Responder: one additional key exchange of ``method`` from a request of
    ``exchange`` (IKE_INTERMEDIATE or IKE_FOLLOWUP_KE): (our KE data, its SK(n))."""
    ke = message.get(KePayload)
    if ke is None:
        raise InvalidSyntax(f"{exchange} request lacks the KE payload")
    if ke.group != method:
        # RFC 9370 §2.2.1, §2.2.4: the rounds run in the negotiated order and methods.
        raise InvalidSyntax(
            f"{exchange} request has KE of {method_name(ke.group)}, "
            f"not the negotiated {method_name(method)}"
        )
    return respond_key_exchange(method, ke.data, rng)


class IkeIntermediate(Task):
    """Initiator: runs the next additional key exchange."""

    name = "ike_intermediate"

    def __init__(self) -> None:
        self.ke: KeyExchange | None = None
        """Our side of this round's key exchange."""

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        _, method = _state(sa).rounds[0]
        self.ke = sa.new_key_exchange(method)
        out.append(KePayload(method, self.ke.public_bytes))

    def process_response(self, sa: TaskSa, message: Message) -> None:
        state = _state(sa)
        shared = finish_round(message, self.ke, "IKE_INTERMEDIATE")
        self.ke = None  # the private key is not needed again
        state.rounds.pop(0)
        state.count += 1
        sa.adopt_keys(*keys_after_additional_ke(sa, shared))
        log.info("%s: additional key exchange %d done", sa.name, state.count)


class AnswerIntermediate(Task):
    """Responder: answers one additional key exchange."""

    name = "answer_intermediate"

    def __init__(self) -> None:
        self.reply: KePayload | None = None

    def process_request(self, sa: TaskSa, message: Message) -> None:
        state = _state(sa)
        _, method = state.rounds[0]
        ours, shared = answer_round(message, method, sa.rng, "IKE_INTERMEDIATE")
        state.rounds.pop(0)
        state.count += 1
        state.deferred = keys_after_additional_ke(sa, shared)
        self.reply = KePayload(method, ours)
        log.info("%s: additional key exchange %d done", sa.name, state.count)

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        if self.reply is not None:
            out.append(self.reply)


class RefuseEarlyAuth(Task):
    """Responder: IKE_AUTH before every additional key exchange ran is refused."""

    name = "refuse_early_auth"

    def process_request(self, sa: TaskSa, message: Message) -> None:
        raise InvalidSyntax("IKE_AUTH before the negotiated additional key exchanges")
