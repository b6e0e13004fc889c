"""ESP suite table: names, IKEv2 transform ids, sizes and MTU arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esp.errors import UnknownSuite
from esp.sa import EspSA
from esp.suites import (
    AUTH_HMAC_SHA2_256_128,
    AUTH_HMAC_SHA2_384_192,
    AUTH_HMAC_SHA2_512_256,
    AUTH_NONE,
    ENCR_AES_CBC,
    ENCR_AES_GCM_16,
    ENCR_CHACHA20_POLY1305,
    SUITES,
    suite_by_name,
    suite_from_transforms,
)

# name -> (encr id, key bits, integ id, KEYMAT encr, KEYMAT integ, IV, ICV, align)
EXPECTED = {
    # RFC 4106 §8.1: key + 4-octet salt; 8-octet IV; 16-octet ICV.
    "aes128gcm16": (ENCR_AES_GCM_16, 128, None, 20, 0, 8, 16, 4),
    "aes256gcm16": (ENCR_AES_GCM_16, 256, None, 36, 0, 8, 16, 4),
    # RFC 7634 §2: 32-octet key + 4-octet salt.
    "chacha20poly1305": (ENCR_CHACHA20_POLY1305, 256, None, 36, 0, 8, 16, 4),
    # RFC 3602 (16-octet IV and block) with RFC 4868 §2.1.1 keys and §2.3 ICVs.
    "aes128-sha256": (ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_256_128, 16, 32, 16, 16, 16),
    "aes256-sha256": (ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_256_128, 32, 32, 16, 16, 16),
    "aes128-sha384": (ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_384_192, 16, 48, 16, 24, 16),
    "aes256-sha384": (ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_384_192, 32, 48, 16, 24, 16),
    "aes128-sha512": (ENCR_AES_CBC, 128, AUTH_HMAC_SHA2_512_256, 16, 64, 16, 32, 16),
    "aes256-sha512": (ENCR_AES_CBC, 256, AUTH_HMAC_SHA2_512_256, 32, 64, 16, 32, 16),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_suite_sizes(name: str) -> None:
    s = suite_by_name(name)
    got = (
        s.encr_id,
        s.key_bits,
        s.integ_id,
        s.encr_key_len,
        s.integ_key_len,
        s.iv_len,
        s.icv_len,
        s.align,
    )
    assert got == EXPECTED[name]
    assert s.name == name
    assert s.is_aead == (s.integ_id is None)
    assert suite_from_transforms(s.encr_id, s.key_bits, s.integ_id) is s


def test_every_suite_is_listed() -> None:
    assert set(SUITES) == set(EXPECTED)


def test_names_are_case_insensitive() -> None:
    assert suite_by_name(" AES128GCM16 ") is SUITES["aes128gcm16"]


@pytest.mark.parametrize("bad", ["aes128", "aes192gcm16", "3des-sha1", "", "aes128-sha1"])
def test_unknown_name_is_named_in_the_error(bad: str) -> None:
    with pytest.raises(UnknownSuite, match=repr(bad)):
        suite_by_name(bad)


def test_transforms_with_absent_or_none_fields() -> None:
    # ChaCha20-Poly1305 has no Key Length attribute (RFC 7634 §2); AEAD may carry
    # an explicit integrity transform NONE.
    assert suite_from_transforms(ENCR_CHACHA20_POLY1305, None, None).name == "chacha20poly1305"
    assert suite_from_transforms(ENCR_AES_GCM_16, 128, AUTH_NONE).name == "aes128gcm16"
    with pytest.raises(UnknownSuite):
        suite_from_transforms(ENCR_AES_GCM_16, 128, AUTH_HMAC_SHA2_256_128)
    with pytest.raises(UnknownSuite):
        suite_from_transforms(ENCR_AES_CBC, 192, AUTH_HMAC_SHA2_256_128)
    with pytest.raises(UnknownSuite):
        suite_from_transforms(ENCR_AES_CBC, 128, None)


def test_overhead_examples() -> None:
    gcm = suite_by_name("aes128gcm16")
    # 1400 + 2 is not a multiple of 4: 2 pad; 8 header + 8 IV + 2 + 2 + 16 ICV.
    assert gcm.overhead(1400) == 36
    cbc = suite_by_name("aes256-sha256")
    # 1400 + 2 = 1402 -> 1408: 6 pad; 8 + 16 IV + 6 + 2 + 16 ICV.
    assert cbc.overhead(1400) == 48
    # 1402 + 2 is a multiple of 4, so 1402 fits exactly where 1400 needs 2 pad.
    assert gcm.inner_mtu_for(1436) == 1402
    assert cbc.inner_mtu_for(1448) == 1406


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(list(SUITES)), budget=st.integers(0, 9000))
def test_inner_mtu_is_the_largest_that_fits(name: str, budget: int) -> None:
    suite = SUITES[name]
    mtu = suite.inner_mtu_for(budget)
    if mtu > 0 or suite.esp_len(0) <= budget:
        assert suite.esp_len(mtu) <= budget
    assert suite.esp_len(mtu + 1) > budget
    # The overhead for an MTU bounds every smaller packet too.
    assert all(
        suite.esp_len(n) <= mtu + suite.overhead(mtu) for n in range(max(0, mtu - 40), mtu + 1)
    )


@pytest.mark.parametrize("name", list(SUITES))
def test_esp_len_is_what_encapsulate_produces(name: str) -> None:
    suite = SUITES[name]
    sa = EspSA(0x1000, suite, bytes(suite.encr_key_len), bytes(suite.integ_key_len))
    for n in range(1, 40):
        packet = sa.encapsulate(b"\x45" + bytes(n - 1))
        assert isinstance(packet, bytes)
        assert len(packet) == suite.esp_len(n)
