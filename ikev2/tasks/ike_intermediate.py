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


def _method_name(method: int) -> str:
    info = KE_METHODS.get(method)
    return info.name if info is not None else f"method {method}"


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
        for notify in message.error_notifies():
            raise PeerErrorNotify(notify.notify_type, notify.data)
        state = _state(sa)
        ke = message.get(KePayload)
        if ke is None or self.ke is None:
            raise InvalidSyntax("IKE_INTERMEDIATE response lacks the KE payload")
        if ke.group != self.ke.group.group:
            raise InvalidSyntax(
                f"IKE_INTERMEDIATE response has KE of {_method_name(ke.group)}, "
                f"not {self.ke.group.name}"
            )
        shared = self.ke.shared_secret(ke.data)
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
        ke = message.get(KePayload)
        if ke is None:
            raise InvalidSyntax("IKE_INTERMEDIATE request lacks the KE payload")
        if ke.group != method:
            # RFC 9370 §2.2.1: the rounds run in the negotiated order and methods.
            raise InvalidSyntax(
                f"IKE_INTERMEDIATE request has KE of {_method_name(ke.group)}, "
                f"not the negotiated {_method_name(method)}"
            )
        ours, shared = respond_key_exchange(method, ke.data, sa.rng)
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
