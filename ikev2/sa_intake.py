"""What happens to a received message before the tasks see it (RFC 7296 §2.21, RFC 7383).

`ikev2.sa.IkeSa` routes a message by its header; these steps decode and decrypt it,
reassemble fragments, answer a request retransmitted in fragments, and decide what is
dropped silently and what is answered with an error notify. They need only what the
SA holds (`IkeSaData`), so this module needs no import of `ikev2.sa`.
"""

from __future__ import annotations

import logging

from ikev2.codec import Delete, IkeHeader, Message, Notify, Payload, decode_header, decode_payloads
from ikev2.constants import IKE_HEADER_LEN, ExchangeType, ProtocolId
from ikev2.crypto.sk import SkCipher
from ikev2.eap_mschapv2 import EapFailed
from ikev2.errors import (
    IkeError,
    IntegrityCheckFailed,
    InvalidSyntax,
    LocalProtocolError,
    UnsupportedCriticalPayload,
)
from ikev2.events import Address, format_address
from ikev2.fragments import is_fragmented, open_fragment
from ikev2.sa_data import IkeSaData
from ikev2.sa_types import IkeDropReason, IkeSaState

log = logging.getLogger(__name__)


def open_message(sa: IkeSaData, data: bytes, header: IkeHeader) -> Message | None:
    """Decode a received message, decrypting it for encrypted exchanges.

    None means a fragment was taken in and the message is not complete yet.
    """
    # `header` is decode_header(data), done by the endpoint to route the message.
    if header.exchange_type == ExchangeType.IKE_SA_INIT:
        return header.message(decode_payloads(header.next_payload, data[IKE_HEADER_LEN:]))
    if sa.sk is None:
        raise InvalidSyntax("encrypted message before keys exist")
    if is_fragmented(data):
        if not sa.fragmentation:
            raise InvalidSyntax("IKE fragment although fragmentation was not negotiated")
        return sa.reassembler.receive(data, sa.sk.inbound, sa.now)
    return sa.sk.inbound.open(data, header)


def resend_for_fragment(sa: IkeSaData, data: bytes) -> None:
    """A fragment of the request we answered last: RFC 7383 §2.6.1 has us resend the
    response when fragment 1 comes again (once, not for every fragment)."""
    if sa.sk is None:
        sa.on_drop(IkeDropReason.INVALID_MESSAGE)
        return
    try:
        fragment = open_fragment(_answered_under(sa, data), data)
    except IkeError as exc:
        log.debug("%s: dropping a bad fragment: %s", sa.name, exc)
        sa.on_drop(drop_reason(exc))
        return
    if fragment.number == 1:
        log.debug("%s: request retransmitted in fragments; resending", sa.name)
        sa._send(sa.tm.cached_packets())
    sa.on_drop(IkeDropReason.RETRANSMIT_ANSWERED)


def _answered_under(sa: IkeSaData, data: bytes) -> SkCipher:
    """The cipher a retransmitted request's fragments are sealed with: an answered
    IKE_INTERMEDIATE's are under the keys before its key update (RFC 9370 §2.2.2)."""
    state = sa.intermediate
    if (
        state is not None
        and state.answered_under is not None
        and decode_header(data).exchange_type == ExchangeType.IKE_INTERMEDIATE
    ):
        return state.answered_under
    if sa.sk is None:
        raise InvalidSyntax("encrypted message before keys exist")
    return sa.sk.inbound


def drop_invalid_request(sa: IkeSaData, header: IkeHeader, remote: Address, exc: IkeError) -> None:
    # §2.21.1: an unauthenticated bad message changes nothing and gets no answer.
    sa.on_drop(drop_reason(exc))
    if header.exchange_type == ExchangeType.IKE_SA_INIT:
        # Garbage that merely looks like an IKE_SA_INIT: no SA, no event. Anyone can
        # send it from any address, so it is only counted (and logged at debug), lest
        # a flood of it flood the log.
        log.debug(
            "%s: dropping invalid IKE_SA_INIT from %s: %s",
            sa.name,
            format_address(remote),
            exc,
        )
        sa.state = IkeSaState.DELETED
        return
    log.info("%s: dropping invalid request from %s: %s", sa.name, format_address(remote), exc)


def drop_reason(exc: IkeError) -> IkeDropReason:
    """The drop reason of a message that failed to open or check."""
    if isinstance(exc, IntegrityCheckFailed):
        return IkeDropReason.INTEGRITY_FAILURE
    return IkeDropReason.INVALID_MESSAGE


def answerable(exc: InvalidSyntax, exchange_type: int) -> bool:
    """Whether an unreadable request deserves an error notify rather than silence."""
    if exchange_type == ExchangeType.IKE_SA_INIT:
        return isinstance(exc, UnsupportedCriticalPayload)
    return exc.authenticated


def deletes_ike(message: Message) -> bool:
    return any(isinstance(p, Delete) and p.protocol == ProtocolId.IKE for p in message.payloads)


def error_payloads(exc: IkeError) -> list[Payload]:
    """What a refused request is answered with: the error notify, after the
    EAP-Failure of a refused EAP login (RFC 7296 §2.16, §2.21.2)."""
    payloads: list[Payload] = []
    if isinstance(exc, EapFailed) and exc.eap is not None:
        payloads.append(exc.eap)
    if exc.notify is not None:
        payloads.append(error_notify(exc))
    return payloads


def error_notify(exc: IkeError) -> Notify:
    if exc.notify is None:
        raise LocalProtocolError("no notify for this error")
    return Notify(exc.notify, exc.notify_data, exc.protocol, exc.spi)
