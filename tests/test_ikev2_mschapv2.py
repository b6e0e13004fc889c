"""MD4 (RFC 1320), MS-CHAPv2 (RFC 2759) and its MSK (RFC 3079), against the RFCs' vectors."""

from __future__ import annotations

import pytest

from ikev2.crypto.md4 import md4
from ikev2.crypto.mschapv2 import (
    MSK_LEN,
    asymmetric_start_key,
    authenticator_response,
    challenge_hash,
    challenge_response,
    check_nt_response,
    generate_nt_response,
    hash_nt_password_hash,
    master_key,
    msk,
    nt_password_hash,
)


def _h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# RFC 1320 §A.5 (test suite).
@pytest.mark.parametrize(
    ("message", "digest"),
    [
        (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
        (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
        (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
        (b"message digest", "d9130a8164549fe818874806e1c7014b"),
        (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
        (
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            "043f8582f241db351ce627e153e7f0e4",
        ),
        (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
    ],
)
def test_md4_rfc1320_vectors(message: bytes, digest: str) -> None:
    assert md4(message).hex() == digest


# RFC 2759 §9.2 (examples of MS-CHAP-V2 computations).
USER = b"User"
PASSWORD = "clientPass"
AUTH_CHALLENGE = _h("5B 5D 7C 7D 7B 3F 2F 3E 3C 2C 60 21 32 26 26 28")
PEER_CHALLENGE = _h("21 40 23 24 25 5E 26 2A 28 29 5F 2B 3A 33 7C 7E")
CHALLENGE = _h("D0 2E 43 86 BC E9 12 26")
NT_RESPONSE = _h("82 30 9E CD 8D 70 8B 5E A0 8F AA 39 81 CD 83 54 42 33 11 4A 3D 85 D6 DF")
PASSWORD_HASH = _h("44 EB BA 8D 53 12 B8 D6 11 47 44 11 F5 69 89 AE")
PASSWORD_HASH_HASH = _h("41 C0 0C 58 4B D2 D9 1C 40 17 A2 A1 2F A5 9F 3F")
AUTHENTICATOR_RESPONSE = b"S=407A5589115FD0D6209F510FE9C04566932CDA56"
# RFC 3079 §3.5.3 (sample 128-bit key derivation), same inputs.
MASTER_KEY = _h("FD EC E3 71 7A 8C 83 8C B3 88 E5 27 AE 3C DD 31")
SEND_START_KEY_128 = _h("8B 7C DC 14 9B 99 3A 1B A1 18 CB 15 3F 56 DC CB")


def test_mschapv2_rfc2759_vectors() -> None:
    assert nt_password_hash(PASSWORD) == PASSWORD_HASH
    assert hash_nt_password_hash(PASSWORD_HASH) == PASSWORD_HASH_HASH
    assert challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER) == CHALLENGE
    assert challenge_response(CHALLENGE, PASSWORD_HASH) == NT_RESPONSE
    assert generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD_HASH) == NT_RESPONSE
    assert (
        authenticator_response(PASSWORD_HASH, NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, USER)
        == AUTHENTICATOR_RESPONSE
    )


def test_nt_response_check() -> None:
    assert check_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, PASSWORD_HASH, NT_RESPONSE)
    wrong = nt_password_hash("clientPasS")
    assert not check_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER, wrong, NT_RESPONSE)
    # RFC 2759 §8.2: the domain a Windows client puts before the name is not hashed.
    assert challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, b"CORP\\User") == CHALLENGE


def test_msk_rfc3079_vectors() -> None:
    master = master_key(PASSWORD_HASH_HASH, NT_RESPONSE)
    assert master == MASTER_KEY
    # The RFC's SendStartKey128 is the server's send key (IsSend, IsServer).
    assert asymmetric_start_key(master, send=True, server=True) == SEND_START_KEY_128
    # One side's send key is the other side's receive key.
    assert asymmetric_start_key(master, send=False, server=False) == SEND_START_KEY_128
    assert asymmetric_start_key(master, send=True, server=False) == asymmetric_start_key(
        master, send=False, server=True
    )
    # IKEv2's MSK (as strongSwan and Windows build it): the server's receive key, its
    # send key, 32 zero octets.
    key = msk(PASSWORD_HASH, NT_RESPONSE)
    assert len(key) == MSK_LEN
    assert key[:16] == asymmetric_start_key(master, send=False, server=True)
    assert key[16:32] == SEND_START_KEY_128
    assert key[32:] == bytes(32)
