"""IKE fragmentation (RFC 7383) with the registry's real SK ciphers."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2.codec import (
    Authentication,
    Certificate,
    IdI,
    Message,
    Notify,
    decode_header,
)
from ikev2.constants import IKE_HEADER_LEN, AuthMethod, ExchangeType, NotifyType, PayloadType
from ikev2.crypto.registry import ike_suite
from ikev2.crypto.rng import DeterministicRandom
from ikev2.crypto.sk import SkCipher
from ikev2.errors import IntegrityCheckFailed, InvalidSyntax, LocalProtocolError
from ikev2.fragments import (
    FragmentLimitExceeded,
    FragmentLimits,
    Reassembler,
    fragment_message,
    is_fragmented,
    max_chunk_len,
    open_fragment,
    seal_for_size,
)
from ikev2.proposals import parse_ike_proposal

SUITES = [
    "aes256gcm16-prfsha384-x25519",
    "aes128-sha256-modp2048",
    "aes256-sha512-ecp384",
    "chacha20poly1305-prfsha256-x25519",
]


def cipher_for(proposal: str, seed: str = "keys") -> SkCipher:
    suite = ike_suite(parse_ike_proposal(proposal))
    rng = DeterministicRandom(seed + proposal)
    integrity_key = rng.token_bytes(suite.integrity.key_len) if suite.integrity else b""
    return SkCipher(
        suite.encryption,
        rng.token_bytes(suite.encryption.key_material_len),
        suite.integrity,
        integrity_key,
    )


def auth_message(cert_len: int = 3000, message_id: int = 1, response: bool = False) -> Message:
    """An IKE_AUTH request with a large CERT, the case fragmentation exists for."""
    fill = DeterministicRandom(f"cert{cert_len}").token_bytes(cert_len)
    return Message(
        spi_i=bytes.fromhex("1122334455667788"),
        spi_r=bytes.fromhex("99aabbccddeeff00"),
        exchange_type=ExchangeType.IKE_AUTH,
        message_id=message_id,
        initiator=True,
        response=response,
        payloads=(
            IdI.from_fqdn("gwa.example.net"),
            Certificate(4, fill),
            Notify(NotifyType.INITIAL_CONTACT),
            Authentication(AuthMethod.DIGITAL_SIGNATURE, b"\x0c" * 104),
        ),
        encrypted=True,
    )


@pytest.mark.parametrize("proposal", SUITES)
@pytest.mark.parametrize("max_len", [576, 1280])
def test_split_and_reassemble_in_order(proposal: str, max_len: int) -> None:
    cipher = cipher_for(proposal)
    message = auth_message()
    fragments = fragment_message(message, cipher, DeterministicRandom("iv"), max_len)
    assert len(fragments) > 2
    for number, data in enumerate(fragments, start=1):
        assert len(data) <= max_len
        header = decode_header(data)
        assert header.next_payload == 53  # SKF, RFC 7383 §2.5
        assert header.message_id == 1 and header.exchange_type == ExchangeType.IKE_AUTH
        assert int.from_bytes(data[32:34], "big") == number
        assert int.from_bytes(data[34:36], "big") == len(fragments)
        # RFC 7383 §2.5: only fragment 1 names the first inner payload.
        assert data[IKE_HEADER_LEN] == (PayloadType.IDi if number == 1 else 0)
        assert is_fragmented(data)
    # Sizes are used well: every fragment but the last is close to the limit.
    assert all(len(d) > max_len - 32 for d in fragments[:-1])
    reassembler = Reassembler()
    results = [reassembler.receive(d, cipher, now=0.0) for d in fragments]
    assert results[:-1] == [None] * (len(fragments) - 1)
    assert results[-1] == message
    assert len(reassembler) == 0


@pytest.mark.parametrize("proposal", SUITES)
def test_out_of_order_and_duplicate_fragments(proposal: str) -> None:
    cipher = cipher_for(proposal)
    message = auth_message(5000)
    fragments = fragment_message(message, cipher, DeterministicRandom("iv"), 700)
    order = list(reversed(fragments[1:])) + fragments[1:3]  # all but #1, with duplicates
    random.Random(7).shuffle(order)
    reassembler = Reassembler()
    for data in order:
        assert reassembler.receive(data, cipher, now=1.0) is None
    assert reassembler.receive(fragments[0], cipher, now=2.0) == message
    # A late duplicate after completion starts nothing that could complete on its own.
    assert reassembler.receive(fragments[3], cipher, now=3.0) is None
    assert len(reassembler) == 1


def test_tampered_fragment_is_rejected_and_genuine_one_still_completes() -> None:
    for proposal in SUITES:
        cipher = cipher_for(proposal)
        message = auth_message(2000)
        fragments = fragment_message(message, cipher, DeterministicRandom("iv"), 800)
        reassembler = Reassembler()
        for data in fragments[:-1]:
            assert reassembler.receive(data, cipher, now=0.0) is None
        last = fragments[-1]
        for index in (IKE_HEADER_LEN - 5, IKE_HEADER_LEN + 1, 40, len(last) // 2, len(last) - 1):
            tampered = bytearray(last)
            tampered[index] ^= 0x01
            with pytest.raises(IntegrityCheckFailed):
                reassembler.receive(bytes(tampered), cipher, now=0.0)
        # Another IKE SA's keys do not open it either.
        with pytest.raises(IntegrityCheckFailed):
            reassembler.receive(last, cipher_for(proposal, seed="other"), now=0.0)
        assert reassembler.receive(last, cipher, now=0.0) == message


def test_malformed_fragments_raise_invalid_syntax() -> None:
    cipher = cipher_for(SUITES[0])
    data = fragment_message(auth_message(2000), cipher, DeterministicRandom("iv"), 900)[0]
    with pytest.raises(InvalidSyntax):
        open_fragment(cipher, data[:-1])  # length no longer matches the header
    zero = bytearray(data)
    zero[32:34] = b"\x00\x00"  # Fragment Number 0
    with pytest.raises(InvalidSyntax, match="fragment number 0"):
        open_fragment(cipher, bytes(zero))
    beyond = bytearray(data)
    beyond[32:34] = (99).to_bytes(2, "big")
    with pytest.raises(InvalidSyntax, match="fragment number 99"):
        open_fragment(cipher, bytes(beyond))
    short_payload = bytearray(data)
    short_payload[IKE_HEADER_LEN + 2 : IKE_HEADER_LEN + 4] = (12).to_bytes(2, "big")
    with pytest.raises(InvalidSyntax, match="SKF payload length"):
        open_fragment(cipher, bytes(short_payload))
    whole_sk = cipher.seal(auth_message(100), DeterministicRandom("iv"))
    with pytest.raises(InvalidSyntax, match="not an IKE fragment"):
        open_fragment(cipher, whole_sk)
    assert not is_fragmented(whole_sk)
    assert not is_fragmented(b"\x35" * 10)


def test_limits() -> None:
    cipher = cipher_for(SUITES[0])
    rng = DeterministicRandom("iv")
    fragments = fragment_message(auth_message(3000), cipher, rng, 500)
    assert len(fragments) > 4
    with pytest.raises(FragmentLimitExceeded, match="at most 4"):
        Reassembler(FragmentLimits(max_fragments=4)).receive(fragments[0], cipher, 0.0)
    small = Reassembler(FragmentLimits(max_message_len=1000))
    with pytest.raises(FragmentLimitExceeded, match="exceeds 1000 octets"):
        for data in fragments:
            small.receive(data, cipher, 0.0)
    assert len(small) == 0  # the oversized message is forgotten
    busy = Reassembler(FragmentLimits(max_pending=2))
    for message_id in (1, 2):
        other = fragment_message(auth_message(3000, message_id), cipher, rng, 500)
        assert busy.receive(other[0], cipher, 0.0) is None
    third = fragment_message(auth_message(3000, 3), cipher, rng, 500)
    with pytest.raises(FragmentLimitExceeded, match="already reassembling 2"):
        busy.receive(third[0], cipher, 0.0)
    with pytest.raises(LocalProtocolError):
        FragmentLimits(max_fragments=0)


def test_incomplete_message_times_out() -> None:
    cipher = cipher_for(SUITES[1])
    fragments = fragment_message(auth_message(3000), cipher, DeterministicRandom("iv"), 600)
    reassembler = Reassembler(FragmentLimits(timeout=10.0))
    assert reassembler.next_timeout() is None
    assert reassembler.receive(fragments[0], cipher, now=100.0) is None
    assert reassembler.next_timeout() == 110.0
    reassembler.expire(109.9)
    assert len(reassembler) == 1
    reassembler.expire(110.0)
    assert len(reassembler) == 0
    # The rest arriving later cannot complete the message without fragment 1 again.
    for data in fragments[1:]:
        assert reassembler.receive(data, cipher, now=111.0) is None
    assert reassembler.receive(fragments[0], cipher, now=112.0) == auth_message(3000)


def test_refragmented_retransmission_replaces_and_stale_fragments_ignored() -> None:
    # RFC 7383 §2.5.2 and §2.6: a retransmission split smaller has more fragments; it wins, and
    # fragments of the older, larger split are ignored afterwards.
    cipher = cipher_for(SUITES[0])
    rng = DeterministicRandom("iv")
    message = auth_message(3000)
    large = fragment_message(message, cipher, rng, 1280)
    small = fragment_message(message, cipher, rng, 576)
    assert len(small) > len(large)
    reassembler = Reassembler()
    assert reassembler.receive(large[0], cipher, 0.0) is None
    assert reassembler.receive(small[1], cipher, 0.0) is None
    assert reassembler.receive(large[1], cipher, 0.0) is None  # stale: ignored
    result = None
    for data in small:
        result = reassembler.receive(data, cipher, 0.0) or result
    assert result == message


def test_request_and_response_with_same_id_kept_apart() -> None:
    cipher = cipher_for(SUITES[2])
    rng = DeterministicRandom("iv")
    request = auth_message(2000, message_id=5)
    response = auth_message(2500, message_id=5, response=True)
    a = fragment_message(request, cipher, rng, 700)
    b = fragment_message(response, cipher, rng, 700)
    interleaved = [d for pair in zip(a, b, strict=False) for d in pair]
    interleaved += a[len(b) :] + b[len(a) :]
    assert len(interleaved) == len(a) + len(b)
    reassembler = Reassembler()
    complete = [m for d in interleaved if (m := reassembler.receive(d, cipher, 0.0)) is not None]
    assert sorted(complete, key=lambda m: m.response) == [request, response]


def test_seal_for_size() -> None:
    cipher = cipher_for(SUITES[0])
    rng = DeterministicRandom("iv")
    small = auth_message(100)
    [single] = seal_for_size(small, cipher, rng, 1280, fragmentation=True)
    assert cipher.open(single) == small
    big = auth_message(3000)
    [unfragmented] = seal_for_size(big, cipher, rng, 1280, fragmentation=False)
    assert len(unfragmented) > 1280 and cipher.open(unfragmented) == big
    pieces = seal_for_size(big, cipher, rng, 1280, fragmentation=True)
    assert len(pieces) == 3 and all(is_fragmented(p) for p in pieces)


def test_local_misuse() -> None:
    cipher = cipher_for(SUITES[1])
    with pytest.raises(LocalProtocolError, match="no room"):
        max_chunk_len(cipher, 80)
    plain = Message(bytes(8), bytes(8), ExchangeType.IKE_SA_INIT, 0, True, False, ())
    with pytest.raises(LocalProtocolError, match="only messages protected by SK"):
        fragment_message(plain, cipher, DeterministicRandom("iv"), 576)
    # CBC: chunk | padding | Pad Length fills whole 16-octet blocks within the size.
    chunk = max_chunk_len(cipher, 576)
    assert (chunk + 1) % 16 == 0
    assert 36 + 16 + chunk + 1 + 16 <= 576


# --- Properties ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    proposal=st.sampled_from(SUITES),
    cert_len=st.integers(min_value=0, max_value=6000),
    max_len=st.integers(min_value=200, max_value=1500),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_property_round_trip_any_order(
    proposal: str, cert_len: int, max_len: int, seed: int
) -> None:
    cipher = cipher_for(proposal)
    message = auth_message(cert_len)
    fragments = fragment_message(message, cipher, DeterministicRandom(str(seed)), max_len)
    assert all(len(d) <= max_len for d in fragments)
    order = list(fragments)
    random.Random(seed).shuffle(order)
    reassembler = Reassembler(FragmentLimits(max_fragments=256))
    results = [reassembler.receive(d, cipher, 0.0) for d in order]
    assert results[-1] == message
    assert results[:-1] == [None] * (len(order) - 1)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=300), flip=st.integers(min_value=0, max_value=10_000))
def test_property_garbage_raises_only_typed_errors(data: bytes, flip: int) -> None:
    cipher = cipher_for(SUITES[1])
    genuine = fragment_message(auth_message(500), cipher, DeterministicRandom("g"), 300)[0]
    mutated = bytearray(genuine)
    mutated[flip % len(mutated)] ^= 1 + flip % 255
    for candidate in (data, bytes(mutated), genuine[: flip % len(genuine)]):
        with contextlib.suppress(InvalidSyntax, IntegrityCheckFailed, FragmentLimitExceeded):
            Reassembler().receive(candidate, cipher, 0.0)
