"""IKEv2 crypto: key exchange groups (RFC vectors), prf+, registry, SK seal/open, AUTH."""

from __future__ import annotations

import dataclasses
import hmac as stdlib_hmac
import random

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2.codec import (
    IdI,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    Transform,
    VendorId,
    decode_message,
    encode_message,
)
from ikev2.codec.message import generic_header
from ikev2.constants import (
    DhGroup,
    EncrId,
    ExchangeType,
    IntegId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from ikev2.crypto import (
    ENCRYPTIONS,
    GROUPS,
    INTEGRITIES,
    PRFS,
    DeterministicRandom,
    Encryption,
    IkeKeys,
    Integrity,
    KeyExchange,
    SkCipher,
    SkCipherPair,
    child_suite,
    derive_child_keys,
    derive_ike_keys,
    ike_suite,
    psk_auth,
    sign_signature_auth,
    verify_signature_auth,
)
from ikev2.crypto.algorithms import hmac_digest
from ikev2.crypto.auth import SIGNATURE_SCHEMES, split_signature_auth
from ikev2.crypto.dh import _curve_order, rfc3526_prime
from ikev2.errors import (
    AuthenticationFailed,
    IntegrityCheckFailed,
    InvalidKeData,
    InvalidSyntax,
    LocalProtocolError,
    UnsupportedSuite,
)


class FixedRandom:
    """Hands out preset octet strings, to inject RFC test vector private keys."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    def token_bytes(self, n: int) -> bytes:
        chunk = self.chunks.pop(0)
        assert len(chunk) == n
        return chunk


# --- Key exchange ---------------------------------------------------------------------


def test_x25519_rfc7748_section_6_1() -> None:
    # RFC 7748 §6.1 (RFC 8031: IKEv2 uses the raw octets in both directions).
    alice_private = bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
    )
    alice_public = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    ke = KeyExchange.generate(DhGroup.CURVE25519, FixedRandom(alice_private))
    assert ke.public_bytes.hex() == alice_public
    assert ke.shared_secret(bob_public).hex() == shared


def test_ecp256_rfc5903_section_8_1() -> None:
    # RFC 5903 §8.1: KE data is x | y, the shared secret is x only (§7).
    i = int("c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433", 16)
    gi = (
        "dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180"
        "5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3"
    )
    gr = bytes.fromhex(
        "d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63"
        "56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab"
    )
    gir = "d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de"
    # generate() maps its random octets r to r mod (n-1) + 1; feed i - 1.
    ke = KeyExchange.generate(DhGroup.ECP_256, FixedRandom((i - 1).to_bytes(40, "big")))
    assert ke.public_bytes.hex() == gi
    assert ke.shared_secret(gr).hex() == gir


@pytest.mark.parametrize(
    ("group", "curve"),
    [
        (DhGroup.ECP_256, ec.SECP256R1()),
        (DhGroup.ECP_384, ec.SECP384R1()),
        (DhGroup.ECP_521, ec.SECP521R1()),
    ],
)
def test_curve_orders(group: DhGroup, curve: ec.EllipticCurve) -> None:
    # (n-1)*G = -G: same x, other y. Checks the transcribed group orders.
    n = _curve_order(group)
    g = ec.derive_private_key(1, curve).public_key().public_numbers()
    minus_g = ec.derive_private_key(n - 1, curve).public_key().public_numbers()
    assert (g.x, g.y) != (minus_g.x, minus_g.y) and g.x == minus_g.x
    with pytest.raises(ValueError):
        ec.derive_private_key(n, curve)


def _miller_rabin(n: int, rounds: int = 4) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(7)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


RFC3526_PRIMES = [
    (2048, 124476, "8aacaa68ffffffffffffffff"),
    (3072, 1690314, "a93ad2caffffffffffffffff"),
    (4096, 240904, "34063199ffffffffffffffff"),
]


@pytest.mark.parametrize(("bits", "k", "tail"), RFC3526_PRIMES)
def test_rfc3526_primes_are_the_primes_of_the_rfc(bits: int, k: int, tail: str) -> None:
    # The formula of RFC 3526 with its k: a wrong formula or k changes the low digits.
    p = rfc3526_prime(bits, k)
    assert p.bit_length() == bits
    assert hex(p).startswith("0xffffffffffffffffc90fdaa22168c234c4c6628b80dc1cd1")
    assert hex(p).endswith(tail)


@pytest.mark.parametrize(
    ("bits", "k", "tail"),
    [
        RFC3526_PRIMES[0],
        # Miller-Rabin on 3072 and 4096 bits takes seconds: in the full suite only.
        *(pytest.param(*case, marks=pytest.mark.slow) for case in RFC3526_PRIMES[1:]),
    ],
)
def test_rfc3526_primes_are_safe_primes(bits: int, k: int, tail: str) -> None:
    p = rfc3526_prime(bits, k)
    assert _miller_rabin(p) and _miller_rabin((p - 1) // 2)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_both_sides_agree_in_every_group(group: int) -> None:
    a = KeyExchange.generate(group, DeterministicRandom(b"a"))
    b = KeyExchange.generate(group, DeterministicRandom(b"b"))
    info = GROUPS[group]
    assert len(a.public_bytes) == info.public_len
    secret = a.shared_secret(b.public_bytes)
    assert secret == b.shared_secret(a.public_bytes)
    assert len(secret) == info.shared_len
    # Same seed, same key: the randomness source alone decides.
    assert KeyExchange.generate(group, DeterministicRandom(b"a")).public_bytes == a.public_bytes
    assert repr(a) == f"KeyExchange(group={info.name})"  # never the private value


def test_modp_shared_secret_is_the_padded_modular_power() -> None:
    # RFC 7296 §2.14: g^ir big-endian, zero-padded to the prime's length.
    a = KeyExchange.generate(DhGroup.MODP_2048, DeterministicRandom(b"x"))
    b = KeyExchange.generate(DhGroup.MODP_2048, DeterministicRandom(b"y"))
    p = rfc3526_prime(2048, 124476)
    x = int.from_bytes(DeterministicRandom(b"x").token_bytes(64), "big") | 2
    assert int.from_bytes(a.public_bytes, "big") == pow(2, x, p)
    expected = pow(int.from_bytes(b.public_bytes, "big"), x, p).to_bytes(256, "big")
    assert a.shared_secret(b.public_bytes) == expected


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_bad_public_values_are_rejected(group: int) -> None:
    ke = KeyExchange.generate(group, DeterministicRandom(b"k"))
    info = GROUPS[group]
    with pytest.raises(InvalidKeData):
        ke.shared_secret(bytes(info.public_len - 1))
    with pytest.raises(InvalidKeData):
        # All zeros: y = 0 for MODP, not a point for ECP, small order for X25519/X448.
        ke.shared_secret(bytes(info.public_len))
    if group in (DhGroup.MODP_2048, DhGroup.MODP_3072, DhGroup.MODP_4096):
        for y in (1, (1 << (8 * info.public_len)) - 1):
            with pytest.raises(InvalidKeData):
                ke.shared_secret(y.to_bytes(info.public_len, "big"))


def test_unimplemented_group_is_unsupported() -> None:
    with pytest.raises(UnsupportedSuite):
        KeyExchange.generate(DhGroup.MODP_1024, DeterministicRandom(b""))


# --- PRF and prf+ -------------------------------------------------------------------------


def test_prf_hmac_sha256_rfc4231_case_1() -> None:
    # RFC 4231 §4.2, also RFC 4868 §2.7.1 PRF-HMAC-SHA-256 test case 1.
    prf = PRFS[PrfId.HMAC_SHA2_256]
    out = prf(b"\x0b" * 20, b"Hi There")
    assert out.hex() == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"


# RFC 4231 §4.2 (test case 1) and §4.7 (test case 6: a key longer than the hash's block,
# which HMAC hashes first) for the three PRFs of RFC 4868.
_RFC4231_CASE_1 = (b"\x0b" * 20, b"Hi There")
_RFC4231_CASE_6 = (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First")


@pytest.mark.parametrize(
    ("prf_id", "case", "expected"),
    [
        (
            PrfId.HMAC_SHA2_384,
            _RFC4231_CASE_1,
            "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec6"
            "82aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
        ),
        (
            PrfId.HMAC_SHA2_512,
            _RFC4231_CASE_1,
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
            "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        ),
        (
            PrfId.HMAC_SHA2_256,
            _RFC4231_CASE_6,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
        (
            PrfId.HMAC_SHA2_384,
            _RFC4231_CASE_6,
            "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f"
            "3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952",
        ),
        (
            PrfId.HMAC_SHA2_512,
            _RFC4231_CASE_6,
            "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
            "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
        ),
    ],
)
def test_prf_rfc4231_vectors(prf_id: int, case: tuple[bytes, bytes], expected: str) -> None:
    key, data = case
    assert PRFS[prf_id](key, data).hex() == expected


@settings(max_examples=60, deadline=None)
@given(
    hash_name=st.sampled_from(["sha256", "sha384", "sha512", "sha1"]),
    key=st.binary(max_size=300),
    data=st.binary(max_size=300),
)
def test_hmac_digest_matches_the_standard_library(hash_name: str, key: bytes, data: bytes) -> None:
    # hmac_digest builds HMAC from hashlib (cheaper than hmac.digest under OpenSSL 3);
    # it must agree with the standard one for keys shorter, as long as and longer than
    # the block, and for hashes outside its table (sha1).
    assert hmac_digest(hash_name, key, data) == stdlib_hmac.digest(key, data, hash_name)


@pytest.mark.parametrize("prf_id", sorted(PRFS))
def test_prf_plus_matches_a_standard_library_prf_plus(prf_id: int) -> None:
    prf = PRFS[prf_id]
    key, seed = b"k" * 200, b"s" * 40  # a key longer than every block size
    expected, block = b"", b""
    for counter in range(1, 5):
        block = stdlib_hmac.digest(key, block + seed + bytes([counter]), prf.hash_name)
        expected += block
    assert prf.prf_plus(key, seed, 4 * prf.output_len - 3) == expected[:-3]


@pytest.mark.parametrize("prf_id", sorted(PRFS))
def test_prf_plus_follows_rfc7296_2_13(prf_id: int) -> None:
    prf = PRFS[prf_id]
    key, seed = b"K" * 7, b"seed"
    t1 = prf(key, seed + b"\x01")
    t2 = prf(key, t1 + seed + b"\x02")
    t3 = prf(key, t2 + seed + b"\x03")
    stream = prf.prf_plus(key, seed, 3 * prf.output_len)
    assert stream == t1 + t2 + t3
    assert prf.prf_plus(key, seed, 5) == t1[:5]
    assert len(prf.prf_plus(key, seed, 255 * prf.output_len)) == 255 * prf.output_len
    with pytest.raises(LocalProtocolError):
        prf.prf_plus(key, seed, 255 * prf.output_len + 1)


# --- Registry -----------------------------------------------------------------------------


def _proposal(protocol: int, *transforms: Transform) -> Proposal:
    return Proposal(1, protocol, b"", transforms)


GCM256 = Transform.make(TransformType.ENCR, EncrId.AES_GCM_16, 256)
CBC256 = Transform.make(TransformType.ENCR, EncrId.AES_CBC, 256)
SHA256 = Transform.make(TransformType.INTEG, IntegId.HMAC_SHA2_256_128)
PRF384 = Transform.make(TransformType.PRF, PrfId.HMAC_SHA2_384)
X25519 = Transform.make(TransformType.DH, DhGroup.CURVE25519)


def test_ike_suite_from_a_selected_proposal() -> None:
    suite = ike_suite(_proposal(ProtocolId.IKE, GCM256, PRF384, X25519))
    assert suite.name == "aes256gcm16-prfsha384-x25519"
    assert suite.integrity is None and suite.encryption.key_material_len == 36
    suite = ike_suite(_proposal(ProtocolId.IKE, CBC256, SHA256, PRF384, X25519))
    assert suite.name == "aes256-sha256-prfsha384-x25519"


@pytest.mark.parametrize(
    "transforms",
    [
        (GCM256, SHA256, PRF384, X25519),  # AEAD with integrity
        (CBC256, PRF384, X25519),  # CBC without integrity
        (GCM256, X25519),  # no PRF
        (GCM256, PRF384),  # no KE
        (GCM256, GCM256, PRF384, X25519),  # not a selected proposal
        (Transform.make(TransformType.ENCR, EncrId.AES_CBC, 512), SHA256, PRF384, X25519),
        (GCM256, Transform.make(TransformType.PRF, PrfId.HMAC_MD5), X25519),
    ],
)
def test_invalid_or_unsupported_ike_suites(transforms: tuple[Transform, ...]) -> None:
    with pytest.raises(UnsupportedSuite):
        ike_suite(_proposal(ProtocolId.IKE, *transforms))


def test_child_suite_with_pfs_and_esn() -> None:
    esn = Transform.make(TransformType.ESN, 1)
    suite = child_suite(_proposal(ProtocolId.ESP, CBC256, SHA256, X25519, esn))
    assert suite.name == "aes256-sha256-x25519-esn"
    assert child_suite(_proposal(ProtocolId.ESP, GCM256)).esn is False
    with pytest.raises(UnsupportedSuite):
        child_suite(_proposal(ProtocolId.IKE, GCM256))


def test_every_registered_algorithm_has_consistent_sizes() -> None:
    for enc in ENCRYPTIONS.values():
        assert enc.key_material_len == enc.key_bits // 8 + (4 if enc.aead else 0)
        assert enc.iv_len == (8 if enc.aead else 16)
    for integ in INTEGRITIES.values():
        assert integ.icv_len * 2 == integ.key_len  # RFC 4868: truncated to half
    for prf in PRFS.values():
        assert prf.output_len in (32, 48, 64)


# --- Key derivation -------------------------------------------------------------------------


def test_ike_key_split_sizes_and_secrecy_of_repr() -> None:
    suite = ike_suite(_proposal(ProtocolId.IKE, CBC256, SHA256, PRF384, X25519))
    keys = derive_ike_keys(suite, b"s" * 48, b"i" * 32, b"r" * 32, b"I" * 8, b"R" * 8)
    sizes = [len(getattr(keys, f.name)) for f in dataclasses.fields(IkeKeys)]
    assert sizes == [48, 32, 32, 32, 32, 48, 48]
    stream = suite.prf.prf_plus(b"s" * 48, b"i" * 32 + b"r" * 32 + b"I" * 8 + b"R" * 8, 272)
    assert b"".join(getattr(keys, f.name) for f in dataclasses.fields(IkeKeys)) == stream
    assert keys.sk_d.hex() not in repr(keys) and "secret" in repr(keys)


def test_child_keymat_split_rfc7296_2_17() -> None:
    prf = PRFS[PrfId.HMAC_SHA2_256]
    enc = ENCRYPTIONS[(EncrId.AES_CBC, 128)]
    integ = INTEGRITIES[IntegId.HMAC_SHA2_256_128]
    keys = derive_child_keys(prf, b"d" * 32, b"n" * 16, b"m" * 16, enc, integ, g_ir=b"g" * 32)
    stream = prf.prf_plus(b"d" * 32, b"g" * 32 + b"n" * 16 + b"m" * 16, 2 * (16 + 32))
    assert keys.encr_i_to_r == stream[:16]
    assert keys.integ_i_to_r == stream[16:48]
    assert keys.encr_r_to_i == stream[48:64]
    assert keys.integ_r_to_i == stream[64:96]
    assert stream[:4].hex() not in repr(keys)


# --- SK payload -----------------------------------------------------------------------------

ALL_SK_SUITES = [
    (enc, integ)
    for enc in ENCRYPTIONS.values()
    for integ in ([None] if enc.aead else list(INTEGRITIES.values()))
]


def _cipher(enc_integ: tuple[Encryption, Integrity | None], seed: bytes = b"k") -> SkCipher:
    enc, integ = enc_integ
    rng = DeterministicRandom(seed)
    enc_key = rng.token_bytes(enc.key_material_len)
    integ_key = rng.token_bytes(integ.key_len) if integ is not None else b""
    return SkCipher(enc, enc_key, integ, integ_key)


def _message(*payloads: Payload) -> Message:
    return Message(
        b"\x01" * 8,
        b"\x02" * 8,
        ExchangeType.INFORMATIONAL,
        5,
        True,
        False,
        payloads,
        encrypted=True,
    )


@pytest.mark.parametrize(
    "suite", ALL_SK_SUITES, ids=lambda s: f"{s[0].name}-{s[1].name if s[1] else 'aead'}"
)
def test_sk_seal_open_round_trip(suite: tuple[Encryption, Integrity | None]) -> None:
    cipher = _cipher(suite)
    rng = DeterministicRandom(b"iv")
    for message in (
        _message(),
        _message(Notify(NotifyType.ADDITIONAL_IP4_ADDRESS, b"\xc0\x00\x02\x01")),
        _message(IdI.from_fqdn("gw.example.net"), Nonce(b"n" * 32), VendorId(b"v" * 100)),
    ):
        wire = cipher.seal(message, rng)
        assert cipher.open(wire) == message
        # The SK payload wraps everything: the outer message has exactly one payload.
        outer = decode_message(wire)
        assert len(outer.payloads) == 1 and outer.payloads[0].payload_type == 46
        block = cipher.encryption.block_len
        iv_len = cipher.encryption.iv_len
        icv = cipher.integrity.icv_len if cipher.integrity else cipher.encryption.icv_len
        assert (len(wire) - 32 - iv_len - icv) % block == 0


@pytest.mark.parametrize("suite", ALL_SK_SUITES[:4] + ALL_SK_SUITES[-1:], ids=str)
def test_sk_tampering_and_wrong_keys_fail_integrity(
    suite: tuple[Encryption, Integrity | None],
) -> None:
    cipher = _cipher(suite)
    wire = cipher.seal(_message(VendorId(b"payload")), DeterministicRandom(b"iv"))
    for position in range(0, len(wire), 7):
        damaged = bytearray(wire)
        damaged[position] ^= 0x80
        with pytest.raises((IntegrityCheckFailed, InvalidSyntax)):
            cipher.open(bytes(damaged))
    with pytest.raises(IntegrityCheckFailed):
        _cipher(suite, seed=b"other").open(wire)


def test_sk_structure_errors_are_invalid_syntax() -> None:
    cbc = _cipher((ENCRYPTIONS[(EncrId.AES_CBC, 256)], INTEGRITIES[IntegId.HMAC_SHA2_256_128]))
    gcm = _cipher((ENCRYPTIONS[(EncrId.AES_GCM_16, 128)], None))
    wire = gcm.seal(_message(), DeterministicRandom(b"iv"))
    with pytest.raises(InvalidSyntax, match="IKE header says"):
        gcm.open(wire[:-20])
    # An SK payload too short for IV, Pad Length and ICV.
    short = (
        wire[:24]
        + (32 + 10).to_bytes(4, "big")
        + wire[28:32][:2]
        + (14).to_bytes(2, "big")
        + bytes(10)
    )
    with pytest.raises(InvalidSyntax, match="too short"):
        gcm.open(short)
    # A message that is not protected at all.
    plain = Message(b"\x01" * 8, b"\x02" * 8, 37, 0, True, False)
    with pytest.raises(InvalidSyntax, match="not protected"):
        cbc.open(encode_message(plain))
    with pytest.raises(LocalProtocolError):
        cbc.seal(plain, DeterministicRandom(b""))


def test_sk_bad_pad_length_is_invalid_syntax() -> None:
    # Build a CBC message by hand whose Pad Length exceeds the plaintext.
    enc = ENCRYPTIONS[(EncrId.AES_CBC, 128)]
    integ = INTEGRITIES[IntegId.HMAC_SHA2_256_128]
    cipher = SkCipher(enc, b"e" * 16, integ, b"a" * 32)
    header = _message().header(46, 28 + 4 + 16 + 16 + 16)
    aad = header.encode() + generic_header(0, 48)
    iv = b"\x00" * 16
    ciphertext = enc.seal(b"e" * 16, iv, b"\xff" * 16, b"")
    signed = aad + iv + ciphertext
    with pytest.raises(InvalidSyntax, match="Pad Length"):
        cipher.open(signed + integ.compute(b"a" * 32, signed))


def test_cipher_pair_directions() -> None:
    suite = ike_suite(_proposal(ProtocolId.IKE, GCM256, PRF384, X25519))
    keys = derive_ike_keys(suite, b"s" * 48, b"i" * 32, b"r" * 32, b"I" * 8, b"R" * 8)
    initiator = SkCipherPair.for_ike_sa(suite, keys, original_initiator=True)
    responder = SkCipherPair.for_ike_sa(suite, keys, original_initiator=False)
    wire = initiator.outbound.seal(_message(VendorId(b"hi")), DeterministicRandom(b"iv"))
    assert responder.inbound.open(wire).payloads == (VendorId(b"hi"),)
    with pytest.raises(IntegrityCheckFailed):
        initiator.inbound.open(wire)
    assert keys.sk_ei.hex() not in repr(initiator)


# --- AUTH -------------------------------------------------------------------------------


def test_psk_auth_is_prf_of_prf_keypad() -> None:
    prf = PRFS[PrfId.HMAC_SHA2_256]
    assert psk_auth(prf, b"secret", b"octets") == prf(
        prf(b"secret", b"Key Pad for IKEv2"), b"octets"
    )


def test_algorithm_identifiers_are_the_rfc7427_der() -> None:
    # RFC 7427 Appendix A.
    by_name = {s.name: s.algorithm_identifier.hex() for s in SIGNATURE_SCHEMES}
    assert by_name["ecdsa-with-sha256"] == "300a06082a8648ce3d040302"
    assert by_name["ecdsa-with-sha384"] == "300a06082a8648ce3d040303"
    assert by_name["sha256WithRSAEncryption"] == "300d06092a864886f70d01010b0500"
    assert by_name["ed25519"] == "300506032b6570"


@pytest.mark.parametrize(
    ("key", "hash_name", "scheme"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "sha256", "ecdsa-with-sha256"),
        (ec.generate_private_key(ec.SECP384R1()), "sha384", "ecdsa-with-sha384"),
        (ed25519.Ed25519PrivateKey.generate(), "sha512", "ed25519"),
        (rsa.generate_private_key(65537, 2048), "sha256", "sha256WithRSAEncryption"),
    ],
    ids=["p256", "p384", "ed25519", "rsa"],
)
def test_signature_auth_round_trip(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
    hash_name: str,
    scheme: str,
) -> None:
    octets = b"signed octets"
    auth = sign_signature_auth(key, octets, hash_name)
    public = key.public_key()
    assert verify_signature_auth(public, octets, auth).name == scheme
    with pytest.raises(AuthenticationFailed):
        verify_signature_auth(public, octets + b"!", auth)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    if scheme != "ecdsa-with-sha256":
        with pytest.raises(AuthenticationFailed):
            verify_signature_auth(other, octets, auth)


@pytest.mark.parametrize("data", [b"", b"\x0a\x30\x0a", b"\x03\x30\x01\x00sig"])
def test_malformed_signature_auth_is_authentication_failed(data: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        split_signature_auth(data)


# --- Properties of SK open -----------------------------------------------------------------

GCM_CIPHER = SkCipher(ENCRYPTIONS[(EncrId.AES_GCM_16, 128)], b"g" * 20, None, b"")
CBC_CIPHER = SkCipher(
    ENCRYPTIONS[(EncrId.AES_CBC, 128)],
    b"c" * 16,
    INTEGRITIES[IntegId.HMAC_SHA2_256_128],
    b"a" * 32,
)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([GCM_CIPHER, CBC_CIPHER]),
    st.lists(st.binary(max_size=40).map(VendorId), max_size=4),
    st.data(),
)
def test_open_never_raises_anything_but_remote_errors(
    cipher: SkCipher, payloads: list[VendorId], data: st.DataObject
) -> None:
    wire = bytearray(cipher.seal(_message(*payloads), DeterministicRandom(b"p")))
    assert cipher.open(bytes(wire)).payloads == tuple(payloads)
    mode = data.draw(st.sampled_from(["flip", "truncate", "random"]))
    if mode == "flip":
        position = data.draw(st.integers(0, len(wire) - 1))
        wire[position] ^= 1 << data.draw(st.integers(0, 7))
    elif mode == "truncate":
        wire = wire[: data.draw(st.integers(0, len(wire) - 1))]
    else:
        wire = wire[:28] + bytearray(data.draw(st.binary(max_size=120)))
    with pytest.raises((IntegrityCheckFailed, InvalidSyntax)):
        cipher.open(bytes(wire))
