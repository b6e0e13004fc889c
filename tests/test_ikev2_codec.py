"""Unit tests of the IKEv2 codec: wire layouts fixed by RFC 7296 §3 and the error paths."""

from __future__ import annotations

import ipaddress

import pytest

from ikev2.codec import (
    Configuration,
    Delete,
    Eap,
    Encrypted,
    IdI,
    IdR,
    IkeHeader,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    SecurityAssociation,
    TrafficSelector,
    Transform,
    TsI,
    UnknownPayload,
    VendorId,
    check_payloads,
    decode_header,
    decode_message,
    decode_payloads,
    encode_message,
    encode_payloads,
)
from ikev2.codec.payloads import ConfigAttribute, Proposal, TransformAttribute
from ikev2.constants import (
    CfgType,
    CpAttributeType,
    DhGroup,
    EncrId,
    ExchangeType,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from ikev2.errors import (
    InvalidMajorVersion,
    InvalidSyntax,
    LocalProtocolError,
    UnsupportedCriticalPayload,
)

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")


def header_bytes(next_payload: int, length: int, version: int = 0x20, flags: int = 0x08) -> bytes:
    return (
        SPI_I
        + SPI_R
        + bytes([next_payload, version, ExchangeType.IKE_SA_INIT, flags])
        + (0).to_bytes(4, "big")
        + length.to_bytes(4, "big")
    )


def test_header_layout_rfc7296_3_1() -> None:
    header = IkeHeader(SPI_I, SPI_R, PayloadType.SA, ExchangeType.IKE_AUTH, 7, 28, True, True)
    wire = header.encode()
    assert wire == SPI_I + SPI_R + bytes([33, 0x20, 35, 0x28]) + bytes([0, 0, 0, 7, 0, 0, 0, 28])
    assert decode_header(wire) == header


def test_header_flags_are_decoded_independently() -> None:
    decoded = decode_header(header_bytes(0, 28, flags=0x20))
    assert decoded.response and not decoded.initiator
    # Unknown flag bits are ignored on receipt (RFC 7296 §3.1).
    decoded = decode_header(header_bytes(0, 28, flags=0x0F))
    assert decoded.initiator and not decoded.response


def test_higher_minor_version_is_accepted_major_is_not() -> None:
    assert decode_header(header_bytes(0, 28, version=0x21)).version == 0x21
    with pytest.raises(InvalidMajorVersion) as info:
        decode_header(header_bytes(0, 28, version=0x30))
    assert info.value.notify == NotifyType.INVALID_MAJOR_VERSION


@pytest.mark.parametrize("length", [27, 29, 1000])
def test_header_length_must_match_the_datagram(length: int) -> None:
    with pytest.raises(InvalidSyntax) as info:
        decode_message(header_bytes(0, length))
    assert info.value.notify == NotifyType.INVALID_SYNTAX


def test_short_datagram_is_invalid_syntax() -> None:
    with pytest.raises(InvalidSyntax):
        decode_header(b"\x00" * 27)


def test_sa_payload_layout_rfc7296_3_3() -> None:
    # One IKE proposal: AES-GCM-16 with 128-bit key, PRF-HMAC-SHA2-256, Curve25519.
    # These are exactly the octets of the strongSwan IKE_SA_INIT in tests/vectors/01.
    sa = SecurityAssociation(
        (
            Proposal(
                1,
                ProtocolId.IKE,
                b"",
                (
                    Transform.make(TransformType.ENCR, EncrId.AES_GCM_16, 128),
                    Transform.make(TransformType.PRF, 5),
                    Transform.make(TransformType.DH, DhGroup.CURVE25519),
                ),
            ),
        )
    )
    expected = bytes.fromhex(
        "00000024010100030300000c01000014800e00800300000802000005000000080400001f"
    )
    assert sa.encode_body() == expected
    assert SecurityAssociation.decode_body(expected) == sa
    assert sa.proposals[0].transforms[0].key_length == 128


def test_unknown_transform_ids_and_attributes_are_parsed() -> None:
    proposal = Proposal(
        1,
        ProtocolId.ESP,
        b"\xaa\xbb\xcc\xdd",
        (
            Transform(TransformType.ENCR, 1234, (TransformAttribute(14, 128),)),
            Transform(9, 77, (TransformAttribute(99, b"\x01\x02\x03"),)),
        ),
    )
    sa = SecurityAssociation((proposal,))
    decoded = SecurityAssociation.decode_body(sa.encode_body())
    assert decoded == sa
    assert decoded.proposals[0].transforms[1].attributes[0].value == b"\x01\x02\x03"


@pytest.mark.parametrize(
    "body",
    [
        "",  # no proposals
        "02000008010100",  # "more proposals" but truncated
        "00000008010100",  # proposal claims one transform but has none
        "0000000c0101000100000004",  # transform shorter than its header
        "0000000c0101000000000000",  # data after the last (zero-transform) proposal
    ],
)
def test_malformed_sa_payloads_are_invalid_syntax(body: str) -> None:
    with pytest.raises(InvalidSyntax):
        decode_payloads(PayloadType.SA, _wrap(bytes.fromhex(body)))


def _wrap(body: bytes, next_payload: int = 0, flags: int = 0) -> bytes:
    return bytes([next_payload, flags]) + (4 + len(body)).to_bytes(2, "big") + body


def test_notify_layout_and_unknown_type() -> None:
    notify = Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, b"\x01\x02\x03\x04")
    assert notify.encode_body() == bytes.fromhex("0304400901020304")
    unknown = Notify.decode_body(bytes.fromhex("00003039") + b"data")
    assert unknown.notify_type == 12345 and unknown.data == b"data"
    assert unknown.is_error  # an unknown number below 16384 is still an error (§3.10.1)
    assert not Notify(0xC000).is_error
    assert Notify(NotifyType.NO_PROPOSAL_CHOSEN).is_error


def test_ke_and_id_layouts() -> None:
    assert KeyExchange(31, b"\xab" * 32).encode_body() == b"\x00\x1f\x00\x00" + b"\xab" * 32
    idi = IdI.from_fqdn("gwa.example.net")
    # IDi' as charon logs it for the golden vectors (tests/vectors/01 keys.json).
    assert idi.id_prime.hex() == "020000006777612e6578616d706c652e6e6574"
    assert IdR.from_address(ipaddress.ip_address("2001:db8::1")).id_type == IdType.ID_IPV6_ADDR
    assert IdR.from_address(ipaddress.ip_address("192.0.2.1")).data == bytes([192, 0, 2, 1])
    assert IdI.from_rfc822("ops@example.net").id_type == IdType.ID_RFC822_ADDR
    assert IdI.from_der_dn(b"\x30\x00").id_type == IdType.ID_DER_ASN1_DN


@pytest.mark.parametrize("size", [0, 15, 257])
def test_nonce_length_is_16_to_256(size: int) -> None:
    with pytest.raises(InvalidSyntax):
        decode_payloads(PayloadType.NONCE, _wrap(bytes(size)))


def test_traffic_selector_layout_rfc7296_3_13_1() -> None:
    ts = TrafficSelector(
        ipaddress.ip_address("192.0.2.0"), ipaddress.ip_address("192.0.2.255"), 0, 0, 65535
    )
    body = TsI((ts,)).encode_body()
    # The exact TSi strongSwan sent in tests/vectors/01 (frame 3).
    assert body.hex() == "01000000070000100000ffffc0000200c00002ff"
    assert TsI.decode_body(body) == TsI((ts,))


def test_unknown_or_inconsistent_traffic_selectors_are_rejected() -> None:
    with pytest.raises(InvalidSyntax):
        TsI.decode_body(bytes.fromhex("01000000090000100000ffffc0000200c00002ff"))  # TS_FC
    with pytest.raises(InvalidSyntax):
        TsI.decode_body(bytes.fromhex("01000000070000140000ffffc0000200c00002ff"))  # bad length
    with pytest.raises(LocalProtocolError):
        mixed = TrafficSelector(ipaddress.ip_address("192.0.2.0"), ipaddress.ip_address("::1"))
        encode_payloads([TsI((mixed,))])


def test_delete_payloads() -> None:
    esp = Delete(ProtocolId.ESP, (b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"))
    assert esp.encode_body().hex() == "030400020102030405060708"
    assert Delete.decode_body(esp.encode_body()) == esp
    with pytest.raises(InvalidSyntax):
        Delete.decode_body(bytes.fromhex("03000001"))  # SPIs of size 0
    with pytest.raises(InvalidSyntax):
        Delete.decode_body(bytes.fromhex("0304000101020304ff"))  # trailing octet


def test_cp_and_eap_payloads() -> None:
    cp = Configuration(
        CfgType.CFG_REQUEST, (ConfigAttribute(CpAttributeType.INTERNAL_IP4_ADDRESS),)
    )
    assert cp.encode_body().hex() == "0100000000010000"
    # The reserved top bit of a CP attribute type is ignored on receipt (§3.15.1).
    assert Configuration.decode_body(bytes.fromhex("0100000080010000")) == cp
    eap = Eap(1, 7, b"\x01hello")
    assert eap.encode_body().hex() == "0107000a" + b"\x01hello".hex()
    with pytest.raises(InvalidSyntax):
        Eap.decode_body(bytes.fromhex("0107000b") + b"\x01hello")  # length mismatch
    with pytest.raises(InvalidSyntax):
        Eap.decode_body(bytes.fromhex("01070004"))  # request without a Type


def test_unknown_payloads_skipped_or_rejected_by_critical_bit() -> None:
    # RFC 7296 §2.5: an unknown non-critical payload is ignored, a critical one rejects
    # the message with UNSUPPORTED_CRITICAL_PAYLOAD carrying the payload type.
    vendor = VendorId(b"x").encode_body()
    chain = _wrap(b"opaque", next_payload=PayloadType.VENDOR_ID) + _wrap(vendor)
    assert decode_payloads(200, chain) == (UnknownPayload(200, b"opaque"), VendorId(b"x"))
    critical = _wrap(b"opaque", next_payload=PayloadType.VENDOR_ID, flags=0x80) + _wrap(vendor)
    with pytest.raises(UnsupportedCriticalPayload) as info:
        decode_payloads(200, critical)
    assert info.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert info.value.notify_data == bytes([200])
    # A known payload with the critical bit set is simply decoded.
    assert decode_payloads(PayloadType.VENDOR_ID, _wrap(vendor, flags=0x80)) == (VendorId(b"x"),)


def test_sk_payload_must_be_last_and_not_nested() -> None:
    message = Message(
        SPI_I,
        SPI_R,
        ExchangeType.IKE_AUTH,
        1,
        True,
        False,
        (Encrypted(PayloadType.IDi, b"\x00" * 40),),
    )
    wire = encode_message(message)
    decoded = decode_message(wire)
    assert decoded == message
    assert wire[16] == PayloadType.SK and wire[28] == PayloadType.IDi
    with pytest.raises(InvalidSyntax):
        decode_message(wire + b"\x00")  # header length mismatch
    with pytest.raises(LocalProtocolError):
        encode_payloads([Encrypted(0, b""), VendorId(b"")])
    with pytest.raises(InvalidSyntax):
        decode_payloads(PayloadType.SK, _wrap(b"\x00" * 8), inner=True)
    # Data after the SK payload (it must be last, §3.14).
    with pytest.raises(InvalidSyntax):
        decode_payloads(PayloadType.SK, _wrap(b"\x00" * 8) + b"\x00\x00\x00\x04")


def test_trailing_octets_after_last_payload_are_rejected() -> None:
    with pytest.raises(InvalidSyntax):
        decode_payloads(PayloadType.VENDOR_ID, _wrap(b"v") + b"\x00")


def test_payload_length_below_header_is_rejected() -> None:
    with pytest.raises(InvalidSyntax):
        decode_payloads(PayloadType.VENDOR_ID, b"\x00\x00\x00\x03")


def test_encoding_out_of_range_values_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_payloads([KeyExchange(70000, b"")])
    with pytest.raises(LocalProtocolError):
        encode_payloads([VendorId(bytes(70000))])
    with pytest.raises(LocalProtocolError):
        encode_message(Message(b"short", SPI_R, 34, 0, True, False))
    with pytest.raises(LocalProtocolError):
        encode_message(Message(SPI_I, SPI_R, 34, 0, True, False, encrypted=True))


def test_message_helpers() -> None:
    message = Message(
        SPI_I,
        SPI_R,
        ExchangeType.IKE_SA_INIT,
        0,
        False,
        True,
        (
            Notify(NotifyType.NAT_DETECTION_SOURCE_IP, b"a" * 20),
            Notify(NotifyType.INVALID_KE_PAYLOAD, b"\x00\x13"),
            VendorId(b"v"),
        ),
    )
    assert message.get(VendorId) == VendorId(b"v")
    assert message.get(Nonce) is None
    assert len(message.get_all(Notify)) == 2
    ke = message.notify(NotifyType.INVALID_KE_PAYLOAD)
    assert ke is not None and ke.data == b"\x00\x13"
    assert [n.notify_type for n in message.error_notifies()] == [NotifyType.INVALID_KE_PAYLOAD]


# --- Payload rules table (strongSwan message.c style) -----------------------------------

SA = SecurityAssociation((Proposal(1, ProtocolId.IKE, b"", ()),))
KE = KeyExchange(31, bytes(32))
NONCE = Nonce(bytes(32))
NATD = Notify(NotifyType.NAT_DETECTION_SOURCE_IP, bytes(20))


def test_rules_accept_a_normal_ike_sa_init() -> None:
    check_payloads(ExchangeType.IKE_SA_INIT, False, [SA, KE, NONCE, NATD])
    check_payloads(ExchangeType.IKE_SA_INIT, True, [SA, KE, NONCE, NATD, VendorId(b"")])


def test_rules_require_sa_ke_nonce_unless_an_error_or_cookie_answers() -> None:
    with pytest.raises(InvalidSyntax, match="KE payload missing in IKE_SA_INIT request"):
        check_payloads(ExchangeType.IKE_SA_INIT, False, [SA, NONCE])
    with pytest.raises(InvalidSyntax):
        check_payloads(ExchangeType.IKE_SA_INIT, True, [NATD])  # status notify is not enough
    check_payloads(
        ExchangeType.IKE_SA_INIT, True, [Notify(NotifyType.INVALID_KE_PAYLOAD, b"\0\x13")]
    )
    check_payloads(ExchangeType.IKE_SA_INIT, True, [Notify(NotifyType.COOKIE, b"c" * 16)])
    check_payloads(ExchangeType.CREATE_CHILD_SA, True, [Notify(NotifyType.NO_PROPOSAL_CHOSEN)])


def test_rules_refuse_misplaced_or_repeated_payloads() -> None:
    with pytest.raises(InvalidSyntax, match="DELETE payload not allowed in IKE_SA_INIT request"):
        check_payloads(ExchangeType.IKE_SA_INIT, False, [SA, KE, NONCE, Delete(ProtocolId.IKE)])
    with pytest.raises(InvalidSyntax, match="2 TSi payloads"):
        check_payloads(ExchangeType.IKE_AUTH, False, [TsI(()), TsI(())])
    with pytest.raises(InvalidSyntax, match="unsupported exchange type 99"):
        check_payloads(99, False, [])


def test_rules_ignore_unknown_non_critical_payloads() -> None:
    check_payloads(ExchangeType.INFORMATIONAL, False, [UnknownPayload(200, b"")])
    check_payloads(ExchangeType.INFORMATIONAL, True, [])
