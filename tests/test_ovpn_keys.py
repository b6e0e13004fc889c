"""Key method 2 and OpenVPN's PRF key derivation."""

from __future__ import annotations

import contextlib
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovpn.keys import (
    KeyMethod2,
    KeyMethodError,
    client_ciphers,
    derive_data_keys,
    negotiate_cipher,
    parse_peer_info,
    tls1_prf,
)


def _reference_prf(secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 2246 §5 written out once more, independently, for the property below."""

    def p_hash(digest: str, key: bytes) -> bytes:
        out, a = b"", seed
        while len(out) < length:
            a = hmac.digest(key, a, digest)
            out += hmac.digest(key, a + seed, digest)
        return out[:length]

    n = len(secret)
    s1 = secret[: (n + 1) // 2]
    s2 = secret[n // 2 :]
    return bytes(a ^ b for a, b in zip(p_hash("md5", s1), p_hash("sha1", s2), strict=True))


# The TLS 1.0 PRF test vector circulated on the IETF TLS list; the same output comes
# from OpenSSL: `openssl kdf -keylen 104 -kdfopt digest:MD5-SHA1 -kdfopt hexsecret:ab..
# -kdfopt hexseed:<"PRF Testvector" + cd * 64> TLS1-PRF`.
PRF_VECTOR = bytes.fromhex(
    "d3d4d1e349b5d515044666d51de32bab258cb521b6b053463e354832fd976754"
    "443bcf9a296519bc289abcbc1187e4ebd31e602353776c408aafb74cbc85eff6"
    "9255f9788faa184cbb957a9819d84a5d7eb006eb459d3ae8de9810454b8b2d8f"
    "1afbc655a8c9a013"
)


def test_tls1_prf_vector() -> None:
    assert tls1_prf(b"\xab" * 48, b"PRF Testvector" + b"\xcd" * 64, 104) == PRF_VECTOR


@given(st.binary(min_size=1, max_size=65), st.binary(max_size=80), st.integers(1, 300))
def test_tls1_prf_matches_reference(secret: bytes, seed: bytes, length: int) -> None:
    # Odd secret lengths share their middle octet between the halves.
    assert tls1_prf(secret, seed, length) == _reference_prf(secret, seed, length)


def test_data_key_derivation_vector() -> None:
    # Computed with OpenSSL's TLS1-PRF (`openssl kdf ... TLS1-PRF`), in the two steps
    # of OpenVPN ssl.c generate_key_expansion_openvpn_prf: the master secret from
    # "OpenVPN master secret" + client random1 + server random1 keyed by the
    # pre-master, then 256 octets from "OpenVPN key expansion" + both random2 + the
    # client's and the server's session ids keyed by the master secret.
    client = KeyMethod2(b"\x11" * 32, b"\x33" * 32, bytes(range(48)))
    server = KeyMethod2(b"\x22" * 32, b"\x44" * 32)
    keys = derive_data_keys(
        client, server, bytes.fromhex("0102030405060708"), bytes.fromhex("f1f2f3f4f5f6f7f8")
    )
    block = keys.c2s_cipher + keys.c2s_hmac + keys.s2c_cipher + keys.s2c_hmac
    assert block.hex().upper() == (
        "E904C1B4E493782BF0243099465C52AA66968C637B20C5CCB0023DDB96F2B418"
        "4A3BF8EBA45E56340BD4CF50D76EF73B00181F842FFD7636B5877FA4EB6B4727"
        "CAC4342262129011C9B9AC4F97A2545B098ABED37B84D34B04823B85AB28991C"
        "2C695B594FB0B31E65382EB2C41F56A8D7FB8F95017E423FFFD8FF8BAD032B53"
        "261BC497BEBDB5391529BDD37E5572991502641F4C5FE8B7921EADDAAE055004"
        "B3FEB1A231DC68ACE692F56F3176900E5F47B3570C2D79E4D4FC1EE2FEF0EA77"
        "360CE47E7ED12556B625E436D50C600982983169F065BB3B52AD9C80399F4084"
        "7B579BA995B79BD16FCEF177B7A3A52ECEF8FC2FD7EA6CB79E72703E3EF88AA7"
    )


texts = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)


@given(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
    st.one_of(st.none(), st.binary(min_size=48, max_size=48)),
    texts,
    texts,
    texts,
    texts,
)
def test_key_method_2_round_trip(
    r1: bytes, r2: bytes, pre: bytes | None, opts: str, user: str, pw: str, info: str
) -> None:
    msg = KeyMethod2(r1, r2, pre, opts or "V4", user, pw, info)
    assert KeyMethod2.decode(msg.encode(), from_client=pre is not None) == msg


def test_key_method_2_layout() -> None:
    # draft-openvpntech-openvpn-wire-protocol, "Key method 2": four zero octets, the
    # method, the client's pre-master and randoms, then strings with a 16-bit length
    # that counts their NUL.
    msg = KeyMethod2(b"\x01" * 32, b"\x02" * 32, b"\x03" * 48, "V4", "u", "", "IV_PROTO=2")
    wire = msg.encode()
    assert wire[:5] == b"\0\0\0\0\x02"
    assert wire[5:53] == b"\x03" * 48
    assert wire[53:117] == b"\x01" * 32 + b"\x02" * 32
    assert wire[117:] == b"\0\x03V4\0" + b"\0\x02u\0" + b"\0\0" + b"\0\x0bIV_PROTO=2\0"


def test_password_never_in_repr() -> None:
    msg = KeyMethod2(b"\x01" * 32, b"\x02" * 32, None, "V4", "alice", "hunter2-secret")
    assert "hunter2" not in repr(msg)


@given(st.binary(max_size=200))
def test_garbage_raises_only_key_method_error(data: bytes) -> None:
    for from_client in (True, False):
        with contextlib.suppress(KeyMethodError):
            KeyMethod2.decode(data, from_client=from_client)


@pytest.mark.parametrize(
    "wire",
    [b"", b"\0\0\0\1\x02", b"\0\0\0\0\x01" + bytes(112), b"\0\0\0\0\x02" + bytes(100)],
)
def test_key_method_refuses(wire: bytes) -> None:
    with pytest.raises(KeyMethodError):
        KeyMethod2.decode(wire, from_client=True)


def test_peer_info_and_cipher_negotiation() -> None:
    info = parse_peer_info(
        "IV_VER=2.6.14\nIV_PROTO=990\nIV_CIPHERS=AES-128-GCM:chacha20-poly1305\nbogus\n"
    )
    assert info["IV_PROTO"] == "990"
    assert client_ciphers(info) == ["AES-128-GCM", "CHACHA20-POLY1305"]
    assert negotiate_cipher(["AES-256-GCM", "CHACHA20-POLY1305", "AES-128-GCM"], info) == (
        "CHACHA20-POLY1305"
    )
    assert negotiate_cipher(["AES-256-GCM"], info) is None
    assert client_ciphers({"IV_NCP": "2"}) == ["AES-256-GCM", "AES-128-GCM"]
    assert client_ciphers({}) == []


def test_md5_available_for_the_prf() -> None:
    # The PRF needs MD5 as an HMAC hash; a FIPS-only OpenSSL would refuse it.
    assert hmac.new(b"k", b"m", hashlib.md5).digest()
