"""Fuzz sample for the IKEv2 codec, the SK payload, SKF reassembly, COOKIEs and the
EAP-TLS server method.

Structured messages (every payload type) are encoded, mutated on the wire and fed to
the entry points; each may refuse only with its documented error (see ``targets``).
"""

from __future__ import annotations

import dataclasses
import functools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ikev2.codec import IkeHeader, Message, Nonce, Notify, encode_message, encode_payloads
from ikev2.constants import ExchangeType, NotifyType
from testkit.fuzz.mutate import Mutation
from testkit.fuzz.strategies import messages, mutations, payload_chains, u8, u32
from testkit.fuzz.targets import (
    CodecTarget,
    CookieTarget,
    EapTlsTarget,
    FragmentTarget,
    PayloadTarget,
    SkInnerTarget,
    SkOpenTarget,
)
from testkit.fuzz.world import seal_raw, sk_ciphers

FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CIPHERS = sorted(sk_ciphers())


@functools.cache
def codec() -> CodecTarget:
    return CodecTarget()


@FUZZ
@given(messages(), mutations)
def test_mutated_messages_decode_or_raise_invalid_syntax(
    message: Message, mutation: Mutation
) -> None:
    codec().run(mutation.apply(encode_message(message)))


@FUZZ
@given(st.binary(max_size=400))
def test_random_octets_decode_or_raise_invalid_syntax(data: bytes) -> None:
    codec().run(data)


@FUZZ
@given(payload_chains, u8, mutations)
def test_mutated_payload_bodies_decode_or_raise_invalid_syntax(
    chain: tuple[object, ...], kind: int, mutation: Mutation
) -> None:
    target = PayloadTarget()
    for payload in chain:
        body = payload.encode_body()  # type: ignore[attr-defined]
        target.run(bytes([payload.payload_type]) + mutation.apply(body))  # type: ignore[attr-defined]
    target.run(bytes([kind]) + mutation.apply(b"".join(p.encode_body() for p in chain)))  # type: ignore[attr-defined]


def _template(message_id: int, response: bool) -> IkeHeader:
    return IkeHeader(b"\x01" * 8, b"\x02" * 8, 0, 37, message_id, 0, True, response)


@FUZZ
@given(st.sampled_from(CIPHERS), payload_chains, u32, st.booleans(), mutations)
def test_tampered_sk_messages_are_refused_with_typed_errors(
    cipher_name: str,
    chain: tuple[object, ...],
    message_id: int,
    response: bool,
    mutation: Mutation,
) -> None:
    target = SkOpenTarget(cipher_name)
    first, inner = encode_payloads(chain)  # type: ignore[arg-type]
    sealed = seal_raw(target.cipher, _template(message_id, response), first, inner)
    target.run(mutation.apply(sealed))


@FUZZ
@given(st.sampled_from(CIPHERS), payload_chains, u8, st.integers(0, 0x1FF), mutations)
def test_authenticated_sk_garbage_is_refused_with_invalid_syntax(
    cipher_name: str, chain: tuple[object, ...], first: int, pad: int, mutation: Mutation
) -> None:
    # pad > 0xFF means a correct Pad Length; otherwise any value the peer might send.
    first_real, inner = encode_payloads(chain)  # type: ignore[arg-type]
    kind = first_real if first % 3 else first
    SkInnerTarget(cipher_name).run(bytes([kind, min(pad, 0xFF)]) + mutation.apply(inner))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(0, 7),
            st.integers(0, 10),
            st.integers(0, 10),
            u8,
            st.binary(max_size=300),
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from(["aes256gcm16", "aes128-sha256"]),
)
def test_fragments_are_refused_with_typed_errors_and_limits_hold(
    fragments: list[tuple[int, int, int, int, int, bytes]], cipher_name: str
) -> None:
    target = FragmentTarget(cipher_name)
    for flags, message_id, number, total, first, chunk in fragments:
        header = bytes([flags & 2, message_id]) + number.to_bytes(2, "big")
        target.run(header + total.to_bytes(2, "big") + bytes([first]) + chunk)
    target.check_bounds()


@FUZZ
@given(st.binary(min_size=16, max_size=64), st.binary(max_size=80), mutations)
def test_cookie_checks_refuse_only_with_invalid_syntax(
    nonce: bytes, cookie: bytes, mutation: Mutation
) -> None:
    target = CookieTarget()
    request = Message(
        b"\x11" * 8,
        bytes(8),
        ExchangeType.IKE_SA_INIT,
        0,
        True,
        False,
        (Notify(NotifyType.COOKIE, cookie), Nonce(nonce)),
    )
    target.run(mutation.apply(encode_message(request)))
    target.run(mutation.apply(encode_message(dataclasses.replace(request, payloads=()))))


@functools.cache
def eap_tls() -> tuple[EapTlsTarget, bytes]:
    target = EapTlsTarget()
    return target, target.seeds()[0]


@FUZZ
@given(mutations)
def test_mutated_eap_tls_logins_only_ever_fail_the_login(mutation: Mutation) -> None:
    target, seed = eap_tls()
    target.run(mutation.apply(seed))
