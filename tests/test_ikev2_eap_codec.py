"""The EAP messages inside IKEv2's EAP payload (RFC 3748, RFC 2759 via EAP): layouts,
hypothesis round-trips, and garbage that raises only the codec's error type."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2.codec import Eap
from ikev2.codec.eap import (
    EapData,
    EapIdentity,
    EapNak,
    EapOther,
    EapTls,
    EapType,
    MsChapV2Challenge,
    MsChapV2Failure,
    MsChapV2Response,
    MsChapV2Success,
    decode_eap_data,
    eap_data,
    eap_payload,
    encode_eap_data,
)
from ikev2.constants import EapCode
from ikev2.errors import InvalidSyntax

EXAMPLES = settings(max_examples=100, deadline=None)
u8 = st.integers(0, 0xFF)
text = st.binary(max_size=40)

requests: st.SearchStrategy[EapData] = st.one_of(
    st.builds(EapIdentity, text),
    st.builds(MsChapV2Challenge, u8, st.binary(min_size=16, max_size=16), text),
    st.builds(MsChapV2Success, u8, text),
    st.builds(MsChapV2Failure, u8, text),
    st.builds(EapOther, u8.filter(lambda t: t not in (1, 3, 13, 26)), text),
)
responses: st.SearchStrategy[EapData] = st.one_of(
    st.builds(EapIdentity, text),
    st.builds(EapNak, st.lists(u8, max_size=4).map(tuple)),
    st.builds(
        MsChapV2Response,
        u8,
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=24, max_size=24),
        text,
        u8,
    ),
    st.just(MsChapV2Success()),
    st.just(MsChapV2Failure()),
)


def test_mschapv2_challenge_layout() -> None:
    # EAP Type 26, OpCode 1, MS-CHAPv2-ID, MS-Length (EAP Length less 5), Value-Size 16.
    challenge = bytes(range(16))
    payload = eap_payload(EapCode.REQUEST, 7, MsChapV2Challenge(9, challenge, b"lockgate"))
    body = payload.encode_body()
    assert body[:4] == bytes([1, 7, 0, len(body)])
    assert body[4:9] == bytes([26, 1, 9, 0, len(body) - 5])
    assert body[9] == 16 and body[10:26] == challenge and body[26:] == b"lockgate"
    assert eap_data(Eap.decode_body(body)) == MsChapV2Challenge(9, challenge, b"lockgate")


def test_mschapv2_response_layout() -> None:
    response = MsChapV2Response(9, b"P" * 16, b"N" * 24, b"alice")
    data = encode_eap_data(EapCode.RESPONSE, response)
    # Value-Size 49: Peer-Challenge, 8 reserved zero octets, NT-Response, Flags.
    assert data[:5] == bytes([26, 2, 9, 0, len(data) - 1]) and data[5] == 49
    assert data[6:22] == b"P" * 16 and data[22:30] == bytes(8) and data[30:54] == b"N" * 24
    assert data[54] == 0 and data[55:] == b"alice"


def test_success_and_failure_responses_are_the_opcode_alone() -> None:
    assert encode_eap_data(EapCode.RESPONSE, MsChapV2Success()) == bytes([26, 3])
    assert encode_eap_data(EapCode.RESPONSE, MsChapV2Failure()) == bytes([26, 4])
    assert decode_eap_data(EapCode.RESPONSE, bytes([26, 3])) == MsChapV2Success()
    request = encode_eap_data(EapCode.REQUEST, MsChapV2Success(3, b"S=00 M=hi"))
    assert request[:5] == bytes([26, 3, 3, 0, 4 + 9])


def test_success_and_failure_packets_have_no_data() -> None:
    assert eap_payload(EapCode.SUCCESS, 4) == Eap(EapCode.SUCCESS, 4, b"")
    assert Eap.decode_body(bytes([4, 4, 0, 4])) == Eap(EapCode.FAILURE, 4)


@EXAMPLES
@given(requests)
def test_requests_round_trip(data: EapData) -> None:
    assert decode_eap_data(EapCode.REQUEST, encode_eap_data(EapCode.REQUEST, data)) == data


@EXAMPLES
@given(responses)
def test_responses_round_trip(data: EapData) -> None:
    assert decode_eap_data(EapCode.RESPONSE, encode_eap_data(EapCode.RESPONSE, data)) == data


@EXAMPLES
@given(st.sampled_from([EapCode.REQUEST, EapCode.RESPONSE]), st.binary(max_size=80))
def test_random_octets_raise_only_invalid_syntax(code: EapCode, data: bytes) -> None:
    try:
        decoded = decode_eap_data(code, data)
    except InvalidSyntax:
        return
    assert isinstance(
        decoded,
        (
            EapIdentity,
            EapNak,
            MsChapV2Challenge,
            MsChapV2Response,
            MsChapV2Success,
            MsChapV2Failure,
            EapTls,
            EapOther,
        ),
    )


@EXAMPLES
@given(st.one_of(requests.map(lambda d: (EapCode.REQUEST, d))), st.data())
def test_truncated_mschapv2_raises_invalid_syntax_or_decodes(
    item: tuple[EapCode, EapData], draw: st.DataObject
) -> None:
    code, data = item
    octets = encode_eap_data(code, data)
    cut = draw.draw(st.integers(0, max(len(octets) - 1, 0)))
    with contextlib.suppress(InvalidSyntax):
        decode_eap_data(code, octets[:cut])


def test_known_bad_mschapv2_packets() -> None:
    good = encode_eap_data(EapCode.RESPONSE, MsChapV2Response(1, bytes(16), bytes(24), b"u"))
    bad_length = good[:3] + bytes([0, 99]) + good[5:]
    for data in (
        b"",
        bytes([26]),
        bad_length,
        good[:5] + bytes([48]) + good[6:],  # Value-Size not 49
        good[:22] + b"\x01" + good[23:],  # reserved octets not zero
        bytes([26, 3, 0]),  # a Success Response with data
    ):
        try:
            decode_eap_data(EapCode.RESPONSE, data)
        except InvalidSyntax:
            continue
        raise AssertionError(f"accepted {data.hex()}")
    assert EapType.MSCHAPV2 == 26
