"""Which payloads each exchange may carry, as one table (after strongSwan's message.c).

RFC 7296 §1.2-1.5 and §3 fix the payloads of each exchange. The table below lists,
per (exchange, request/response), every payload type allowed with its minimum and
maximum count. A payload marked *sufficient* (an error Notify, an EAP payload, ...)
lifts the minimums: a response that is only N(NO_PROPOSAL_CHOSEN) is valid.

Payloads not in the table are refused with INVALID_SYNTAX, except unknown
non-critical ones (the codec already refused the critical ones) which are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ikev2.codec.payloads import Notify, Payload, UnknownPayload
from ikev2.constants import ExchangeType, NotifyType, PayloadType, enum_name
from ikev2.errors import InvalidSyntax

_MANY = 64  # bound on repeated payloads (notifies, certs, deletes); strongSwan uses similar


@dataclass(frozen=True, slots=True)
class PayloadRule:
    """How often one payload type may appear in a message."""

    payload_type: PayloadType
    """The payload type this rule is about."""
    min_count: int
    """Required count unless a sufficient payload is present."""
    max_count: int
    """Largest count allowed."""
    sufficient: bool = False
    """If present, the other payloads' minimums do not apply."""


_R = PayloadRule
_PT = PayloadType

_IKE_SA_INIT_REQUEST = (
    _R(_PT.SA, 1, 1),
    _R(_PT.KE, 1, 1),
    _R(_PT.NONCE, 1, 1),
    _R(_PT.NOTIFY, 0, _MANY),
    _R(_PT.VENDOR_ID, 0, _MANY),
)
_IKE_SA_INIT_RESPONSE = (
    _R(_PT.SA, 1, 1),
    _R(_PT.KE, 1, 1),
    _R(_PT.NONCE, 1, 1),
    _R(_PT.CERTREQ, 0, _MANY),
    _R(_PT.NOTIFY, 0, _MANY, sufficient=True),  # COOKIE, INVALID_KE_PAYLOAD, errors
    _R(_PT.VENDOR_ID, 0, _MANY),
)
_IKE_AUTH_REQUEST = (
    _R(_PT.IDi, 0, 1),  # absent in later EAP rounds (RFC 7296 §2.16)
    _R(_PT.CERT, 0, _MANY),
    _R(_PT.CERTREQ, 0, _MANY),
    _R(_PT.IDr, 0, 1),
    _R(_PT.AUTH, 0, 1),
    _R(_PT.EAP, 0, 1),
    _R(_PT.CP, 0, 1),
    _R(_PT.SA, 0, 1),
    _R(_PT.TSi, 0, 1),
    _R(_PT.TSr, 0, 1),
    _R(_PT.NOTIFY, 0, _MANY),
    _R(_PT.VENDOR_ID, 0, _MANY),
)
_IKE_AUTH_RESPONSE = (
    _R(_PT.IDr, 0, 1),
    _R(_PT.CERT, 0, _MANY),
    _R(_PT.AUTH, 0, 1),
    _R(_PT.EAP, 0, 1),
    _R(_PT.CP, 0, 1),
    _R(_PT.SA, 0, 1),
    _R(_PT.TSi, 0, 1),
    _R(_PT.TSr, 0, 1),
    _R(_PT.NOTIFY, 0, _MANY),
    _R(_PT.VENDOR_ID, 0, _MANY),
)
_CREATE_CHILD_SA_REQUEST = (
    _R(_PT.SA, 1, 1),
    _R(_PT.NONCE, 1, 1),
    _R(_PT.KE, 0, 1),
    _R(_PT.TSi, 0, 1),  # absent for an IKE rekey (RFC 7296 §1.3.2)
    _R(_PT.TSr, 0, 1),
    _R(_PT.CP, 0, 1),
    _R(_PT.NOTIFY, 0, _MANY),
    _R(_PT.VENDOR_ID, 0, _MANY),
)
_CREATE_CHILD_SA_RESPONSE = (
    _R(_PT.SA, 1, 1),
    _R(_PT.NONCE, 1, 1),
    _R(_PT.KE, 0, 1),
    _R(_PT.TSi, 0, 1),
    _R(_PT.TSr, 0, 1),
    _R(_PT.CP, 0, 1),
    _R(_PT.NOTIFY, 0, _MANY, sufficient=True),  # NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD, ...
    _R(_PT.VENDOR_ID, 0, _MANY),
)
# RFC 9242 §3, RFC 9370 §2.2.1: one additional key exchange per IKE_INTERMEDIATE.
_IKE_INTERMEDIATE_REQUEST = (
    _R(_PT.KE, 0, 1),
    _R(_PT.NOTIFY, 0, _MANY),
    _R(_PT.VENDOR_ID, 0, _MANY),
)
_IKE_INTERMEDIATE_RESPONSE = _IKE_INTERMEDIATE_REQUEST
# RFC 9370 §2.2.4: one additional key exchange of a CREATE_CHILD_SA per IKE_FOLLOWUP_KE,
# linked to it by N(ADDITIONAL_KEY_EXCHANGE); a refusal is an error notify alone.
_IKE_FOLLOWUP_KE_REQUEST = (
    _R(_PT.KE, 1, 1),
    _R(_PT.NOTIFY, 1, _MANY),
    _R(_PT.VENDOR_ID, 0, _MANY),
)
_IKE_FOLLOWUP_KE_RESPONSE = (
    _R(_PT.KE, 1, 1),
    _R(_PT.NOTIFY, 0, _MANY, sufficient=True),  # STATE_NOT_FOUND, INVALID_SYNTAX, ...
    _R(_PT.VENDOR_ID, 0, _MANY),
)
_INFORMATIONAL = (
    _R(_PT.NOTIFY, 0, _MANY),
    _R(_PT.DELETE, 0, _MANY),
    _R(_PT.CP, 0, 1),
    _R(_PT.VENDOR_ID, 0, _MANY),
)

MESSAGE_RULES: dict[tuple[ExchangeType, bool], tuple[PayloadRule, ...]] = {
    (ExchangeType.IKE_SA_INIT, False): _IKE_SA_INIT_REQUEST,
    (ExchangeType.IKE_SA_INIT, True): _IKE_SA_INIT_RESPONSE,
    (ExchangeType.IKE_AUTH, False): _IKE_AUTH_REQUEST,
    (ExchangeType.IKE_AUTH, True): _IKE_AUTH_RESPONSE,
    (ExchangeType.CREATE_CHILD_SA, False): _CREATE_CHILD_SA_REQUEST,
    (ExchangeType.CREATE_CHILD_SA, True): _CREATE_CHILD_SA_RESPONSE,
    (ExchangeType.IKE_INTERMEDIATE, False): _IKE_INTERMEDIATE_REQUEST,
    (ExchangeType.IKE_INTERMEDIATE, True): _IKE_INTERMEDIATE_RESPONSE,
    (ExchangeType.IKE_FOLLOWUP_KE, False): _IKE_FOLLOWUP_KE_REQUEST,
    (ExchangeType.IKE_FOLLOWUP_KE, True): _IKE_FOLLOWUP_KE_RESPONSE,
    (ExchangeType.INFORMATIONAL, False): _INFORMATIONAL,
    (ExchangeType.INFORMATIONAL, True): _INFORMATIONAL,
}
"""(exchange, is_response) -> the payloads allowed in that message (inner payloads
for encrypted exchanges)."""

ENCRYPTED_EXCHANGES = frozenset(
    {
        ExchangeType.IKE_AUTH,
        ExchangeType.CREATE_CHILD_SA,
        ExchangeType.INFORMATIONAL,
        ExchangeType.IKE_FOLLOWUP_KE,
    }
)
"""Exchanges whose payloads all travel inside an SK payload (RFC 7296 §1.2-1.4)."""


@dataclass(frozen=True, slots=True)
class _Table:
    """One entry of MESSAGE_RULES in the forms the check needs, built once at import:
    every received message is checked."""

    allowed: dict[int, PayloadRule]
    """Rule by payload type."""
    required: tuple[PayloadRule, ...]
    """Rules with a minimum count."""
    sufficient: tuple[int, ...]
    """Payload types that may lift the minimums."""


_TABLES: dict[tuple[int, bool], _Table] = {
    key: _Table(
        allowed={rule.payload_type: rule for rule in rules},
        required=tuple(rule for rule in rules if rule.min_count > 0),
        sufficient=tuple(rule.payload_type for rule in rules if rule.sufficient),
    )
    for key, rules in MESSAGE_RULES.items()
}


def check_payloads(exchange_type: int, response: bool, payloads: Sequence[Payload]) -> None:
    """Check a message's (inner) payloads against :data:`MESSAGE_RULES`.

    Raises :class:`InvalidSyntax` naming the offending payload. Unknown exchanges are
    refused too: the caller decides whether to answer them at all.
    """
    key = (exchange_type, bool(response))
    table = _TABLES.get(key)
    if table is None:
        raise InvalidSyntax(f"unsupported exchange type {exchange_type}")
    counts: dict[int, int] = {}
    for payload in payloads:
        if isinstance(payload, UnknownPayload):
            continue
        counts[payload.payload_type] = counts.get(payload.payload_type, 0) + 1
    allowed = table.allowed
    for ptype, count in counts.items():
        rule = allowed.get(ptype)
        if rule is None:
            name = enum_name(PayloadType, ptype)
            raise InvalidSyntax(f"{name} payload not allowed in {_where(key)}")
        if count > rule.max_count:
            name = enum_name(PayloadType, ptype)
            raise InvalidSyntax(f"{count} {name} payloads in {_where(key)}")
    sufficient = any(counts.get(ptype) for ptype in table.sufficient) and _has_error_or_cookie(
        payloads
    )
    if not sufficient:
        for rule in table.required:
            if counts.get(rule.payload_type, 0) < rule.min_count:
                raise InvalidSyntax(f"{rule.payload_type.name} payload missing in {_where(key)}")


def _where(key: tuple[int, bool]) -> str:
    """``IKE_AUTH request``: named only when a check fails (the success path is hot)."""
    exchange_type, response = key
    return f"{enum_name(ExchangeType, exchange_type)} {'response' if response else 'request'}"


def _has_error_or_cookie(payloads: Sequence[Payload]) -> bool:
    """A sufficient Notify lifts the minimums only when it is an error or a COOKIE.

    A normal IKE_SA_INIT response carries status notifies (NAT detection, ...) and
    still needs SA, KE and Nonce.
    """
    return any(
        isinstance(p, Notify) and (p.is_error or p.notify_type == NotifyType.COOKIE)
        for p in payloads
    )
