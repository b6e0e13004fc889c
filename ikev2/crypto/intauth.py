"""IntAuth of RFC 9242 §3.3: the IKE_INTERMEDIATE messages that the AUTH payloads cover.

Each IKE_INTERMEDIATE message is taken as if it had been sent unfragmented and
unencrypted (§3.3.2): the IKE header and the Encrypted payload's generic header, their
Length fields counting only the header octets and the inner payloads (IntAuth_A), then
the inner payloads in clear (IntAuth_P), without IV, padding or ICV. Messages of each
direction are chained with the PRF keyed by the SK_pi (requests) or SK_pr (responses)
in force when the message was sent:

    IntAuth_i1 = prf(SK_pi1, IntAuth_i1_A | IntAuth_i1_P)
    IntAuth_in = prf(SK_pin, IntAuth_i(n-1) | IntAuth_in_A | IntAuth_in_P)

and the AUTH payload's signed octets end in IntAuth_iN | IntAuth_rN | IKE_AUTH_MID.
"""

from __future__ import annotations

from ikev2.codec.message import Message, encode_payloads, generic_header
from ikev2.constants import GENERIC_PAYLOAD_HEADER_LEN, IKE_HEADER_LEN, PayloadType
from ikev2.crypto.algorithms import Prf


def intauth_octets(message: Message) -> bytes:
    """IntAuth_A | IntAuth_P of one IKE_INTERMEDIATE message (``encrypted=True``): a
    received one's inner payloads as they arrived, ours as we encode them to seal."""
    if message.plaintext is not None:
        inner = message.plaintext
        first = message.payloads[0].payload_type if message.payloads else 0
    else:
        first, inner = encode_payloads(message.payloads)
    length = IKE_HEADER_LEN + GENERIC_PAYLOAD_HEADER_LEN + len(inner)
    return message.encode_header(PayloadType.SK, length) + generic_header(first, len(inner)) + inner


def chain_intauth(prf: Prf, sk_p: bytes, previous: bytes, message: Message) -> bytes:
    """The next IntAuth of one direction: prf(SK_p, previous | A | P); ``previous`` is
    empty for the first message."""
    return prf(sk_p, previous + intauth_octets(message))


def intauth_trailer(int_auth_i: bytes, int_auth_r: bytes, auth_message_id: int) -> bytes:
    """IntAuth_iN | IntAuth_rN | IKE_AUTH_MID (RFC 9242 §3.3.2), appended to the
    signed octets of both AUTH payloads; IKE_AUTH_MID is the first IKE_AUTH
    request's Message ID, 4 octets."""
    return int_auth_i + int_auth_r + auth_message_id.to_bytes(4, "big")
