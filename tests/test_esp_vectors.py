"""ESP decapsulation against published test vectors and a real strongSwan's packets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import UDP
from scapy.utils import rdpcap

from esp.drops import DropReason
from esp.replay import ReplayWindow
from esp.sa import IPPROTO_IPIP, EspSA
from esp.suites import suite_by_name, suite_from_transforms
from esp.udpencap import DatagramKind, classify

VECTORS = Path(__file__).parent / "vectors"


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# --- RFC 7634 Appendix A: ChaCha20-Poly1305 ESP example (tunnel mode, IPv4 ICMP) ---
RFC7634_KEYMAT = h(
    """80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f
       90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f
       a0 a1 a2 a3"""
)
RFC7634_SPI = 0x01020304
RFC7634_SEQ = 5
RFC7634_INNER = h(
    """45 00 00 54 a6 f2 00 00 40 01 e7 78 c6 33 64 05 c0 00 02 05 08 00 5b 7a
       3a 08 00 00 55 3b ec 10 00 07 36 27 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13
       14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 20 21 22 23 24 25 26 27 28 29 2a 2b
       2c 2d 2e 2f 30 31 32 33 34 35 36 37"""
)
RFC7634_PACKET = h(
    """01 02 03 04 00 00 00 05 10 11 12 13 14 15 16 17
       24 03 94 28 b9 7f 41 7e 3c 13 75 3a 4f 05 08 7b 67 c3 52 e6 a7 fa b1 b9
       82 d4 66 ef 40 7a e5 c6 14 ee 80 99 d5 28 44 eb 61 aa 95 df ab 4c 02 f7
       2a a7 1e 7c 4c 4f 64 c9 be fe 2f ac c6 38 e8 f3 cb ec 16 3f ac 46 9b 50
       27 73 f6 fb 94 e6 64 da 91 65 b8 28 29 f6 41 e0
       76 aa a8 26 6b 7f b0 f7 b1 1b 36 99 07 e1 ad 43"""
)


def test_rfc7634_appendix_a_decapsulates() -> None:
    sa = EspSA(RFC7634_SPI, suite_by_name("chacha20poly1305"), RFC7634_KEYMAT)
    assert sa.decapsulate(RFC7634_PACKET) == (RFC7634_INNER, IPPROTO_IPIP)
    # The same packet again is a replay (RFC 4303 §3.4.3).
    assert sa.decapsulate(RFC7634_PACKET) is DropReason.REPLAY


def test_rfc7634_appendix_a_tampered_tag_is_icv_failure() -> None:
    sa = EspSA(RFC7634_SPI, suite_by_name("chacha20poly1305"), RFC7634_KEYMAT)
    forged = RFC7634_PACKET[:-1] + bytes([RFC7634_PACKET[-1] ^ 1])
    assert sa.decapsulate(forged) is DropReason.ICV_FAILURE
    # The forgery did not move the window: the genuine packet still goes through.
    assert sa.decapsulate(RFC7634_PACKET) == (RFC7634_INNER, IPPROTO_IPIP)


# --- draft-mcgrew-gcm-test-01 §4: AES-GCM ESP test cases -----------------------
# Each case gives the cipher key, the salt (first 4 octets of the nonce), the ESP
# packet and the plaintext (payload | padding | Pad Length | Next Header). The
# draft's examples carry Next Header 1 (ICMP) even around whole IP packets, so the
# SA is told to deliver that value too.


@dataclass(frozen=True)
class GcmCase:
    number: int
    key: bytes
    salt: bytes
    esn: bool
    seq: int
    packet: bytes
    plaintext: bytes


MCGREW_CASES = [
    GcmCase(  # case #1: AES-128, ESN (AAD = SPI | 64-bit sequence number)
        1,
        h("4c80cdefbb5d10da906ac73c3613a634"),
        h("2e443b68"),
        True,
        0x8765432100000000,
        h(
            """00004321000000004956ed7e3b244cfe
               fecf537e729d5b07dc30df528dd22b76 8d1b98736696a6fd348509fa13ceac34
               cfa2436f14a3f3cf65925bf1f4a13c5d 15b21e1884f5ff6247aeabb786b93bce
               61bc17d768fd9732459018148f6cbe72 2fd04796562dfdb4"""
        ),
        h(
            """45000048699a000080114db7c0a80102 c0a801010a9bf15638d3010000010000
               00000000045f736970045f7564700373 69700963796265726369747902646b00
               0021000101020201"""
        ),
    ),
    GcmCase(  # case #2: AES-128, 32-bit sequence number
        2,
        h("feffe9928665731c6d6a8f9467308308"),
        h("cafebabe"),
        False,
        0x0000000A,
        h(
            """0000a5f80000000afacedbaddecaf888
               deb22cd9b07c72c16e3a65beeb8df304 a5a5897d33ae530f1ba76d5d114d2a5c
               3de81827c10e9a4f51330d0eec416642 cfbb85a5b47e48a4ec3b9ba95d918bd1
               83b70d3aa8bc6ee4c309e9d85a41ad4a"""
        ),
        h(
            """4500003e698f000080114dccc0a80102 c0a801010a980035002a2343b2d00100
               00010000000000000373697009637962 65726369747902646b00000100010001"""
        ),
    ),
    GcmCase(  # case #3: AES-256
        3,
        h("abbccddef00112233445566778899aababbccddef00112233445566778899aab"),
        h("11223344"),
        False,
        2,
        h(
            """4a2cbfe3000000020102030405060708
               ff425c9b724599df7a3bcd510194e00d 6a78107f1b0b1cbf06efae9d65a5d763
               748a637985771d347f0545659f14e99d ef842d8eb335f4eecfdbf831824b4c49
               15956c96"""
        ),
        h(
            """4500003069a6400080062690c0a80102 9389155e0a9e008b2dc57ee000000000
               7002400020bf0000020405b401010402 01020201"""
        ),
    ),
    GcmCase(  # case #9: AES-256, ESN
        9,
        h("abbccddef00112233445566778899aababbccddef00112233445566778899aab"),
        h("73616c74"),
        True,
        0x156F3126DD0DB99B,
        h(
            """17405e67dd0db99b616e640169766563
               f2d69ecdbd5a0d5b8d5ef38bad4da58d 1f278fde98ef67549d524a3018d9a57f
               f4d3a31ce673119e451626c2415771e3 b7eebca614c89b35"""
        ),
        h(
            """45080028732c00004006e9f90a010612 0a01038f06b88023dd6bafbecb712602
               50101f646d540001"""
        ),
    ),
    GcmCase(  # case #12: AES-128, last 32-bit sequence number, empty payload
        12,
        h("7d773d00c144c525ac619d18c84a3f47"),
        h("d9664267"),
        False,
        0xFFFFFFFF,
        h(
            """335467aeffffffff43457e9182443bc6
               437f866bcb3f699fe9b0822bac961c45 04bef270"""
        ),
        h("01020201"),
    ),
    GcmCase(  # case #14: AES-256, ESN, the very last 64-bit sequence number
        14,
        h("6c6567616c697a656d6172696a75616e61616e64646f69746265666f72656961"),
        h("7475726e"),
        True,
        0xFFFFFFFFFFFFFFFF,
        h(
            """796b6963ffffffff333021696765746d
               f97ab2aa356d8edce17644ac8c78e25d d24dedbb29ebf1b64a274b39b49c3a86
               4cd3d78ca4ae68a32b42458fb57dbe82 1dcc63b9d0937ba2945f669368661a32
               9fb4c053"""
        ),
        h(
            """45000030da3a00008001df3bc0a80005 c0a800010800c6cd0200070061626364
               65666768696a6b6c6d6e6f7071727374 01020201"""
        ),
    ),
]


def _mcgrew_sa(case: GcmCase) -> EspSA:
    suite = suite_by_name("aes128gcm16" if len(case.key) == 16 else "aes256gcm16")
    spi = int.from_bytes(case.packet[:4], "big")
    sa = EspSA(spi, suite, case.key + case.salt, esn=case.esn, next_headers=frozenset({1, 4}))
    # Place the window just below the case's sequence number, as if the SA had
    # been running: ESN inference needs the high half (RFC 4303 Appendix A2.2).
    sa.replay = ReplayWindow(1024, highest=case.seq - 1)
    return sa


@pytest.mark.parametrize("case", MCGREW_CASES, ids=lambda c: f"case{c.number}")
def test_mcgrew_gcm_case_decapsulates(case: GcmCase) -> None:
    sa = _mcgrew_sa(case)
    padlen, next_header = case.plaintext[-2], case.plaintext[-1]
    payload = case.plaintext[: -2 - padlen]
    assert sa.decapsulate(case.packet) == (payload, next_header)
    assert sa.replay.highest == case.seq


@pytest.mark.parametrize(
    "case", [c for c in MCGREW_CASES if c.esn], ids=lambda c: f"case{c.number}"
)
def test_mcgrew_gcm_case_with_wrong_esn_high_half_fails(case: GcmCase) -> None:
    sa = _mcgrew_sa(case)
    # A window one 2^32 block further on infers another high half, so the AAD
    # differs and the tag must fail: the high half really is authenticated.
    sa.replay = ReplayWindow(1024, highest=(case.seq - 1 + (1 << 32)) % (1 << 64))
    assert sa.decapsulate(case.packet) is DropReason.ICV_FAILURE
    assert sa.drops[DropReason.ICV_FAILURE] == 1


# --- strongSwan 5.9.8 golden captures (tests/vectors/README.md) -------------------


def _strongswan_esp_frames() -> list[tuple[str, dict[str, Any], dict[str, Any], bytes]]:
    cases = []
    for scenario in sorted(p for p in VECTORS.iterdir() if p.is_dir()):
        keys = json.loads((scenario / "keys.json").read_text())
        frames = json.loads((scenario / "packets.json").read_text())["frames"]
        capture = rdpcap(str(scenario / "capture.pcap"))
        for frame in frames:
            if frame["kind"] == "ike":
                continue
            child = keys["child_sas"][frame["child_sa"]]
            payload = bytes(capture[frame["frame"] - 1][UDP].payload)
            cases.append((f"{scenario.name[:2]}-frame{frame['frame']}", child, frame, payload))
    return cases


STRONGSWAN_FRAMES = _strongswan_esp_frames()


def test_strongswan_vectors_are_all_there() -> None:
    # 6 + 12 + 6 + 6 ESP packets per tests/vectors/README.md.
    assert len(STRONGSWAN_FRAMES) == 30


@pytest.mark.parametrize(
    ("child", "frame", "payload"),
    [c[1:] for c in STRONGSWAN_FRAMES],
    ids=[c[0] for c in STRONGSWAN_FRAMES],
)
def test_strongswan_esp_packet_decapsulates(
    child: dict[str, Any], frame: dict[str, Any], payload: bytes
) -> None:
    proposal = child["proposal"]
    integ = proposal.get("integ")
    suite = suite_from_transforms(
        proposal["encr"]["id"],
        proposal["encr"].get("key_bits"),
        integ["id"] if integ else None,
    )
    direction = frame["direction"]
    encr_key = bytes.fromhex(child[f"encr_key_{direction}"])
    integ_hex = child[f"integ_key_{direction}"]
    integ_key = bytes.fromhex(integ_hex) if integ_hex else b""
    spi = int(frame["spi"], 16)
    sa = EspSA(spi, suite, encr_key, integ_key)

    # RFC 3948 §2.2: on port 4500 an ESP packet starts with its non-zero SPI.
    assert classify(payload) is DatagramKind.ESP
    # The recorded IV and ICV are the ones in the packet.
    assert payload[8 : 8 + suite.iv_len].hex() == frame["iv"]
    assert payload[-suite.icv_len :].hex() == frame["icv"]

    result = sa.decapsulate(payload)
    assert result == (bytes.fromhex(frame["inner_packet"]), frame["next_header"])
    assert sa.replay.highest == frame["seq"]
    # Padding as recorded: 1, 2, ..., n, checked by decapsulate; the length must
    # also match what our own encapsulation pads to for this suite.
    assert frame["padding"] == bytes(range(1, frame["pad_length"] + 1)).hex()
    # libipsec pads like we do (4 for AEAD, 16 for CBC): same packet length.
    inner_len = len(bytes.fromhex(frame["inner_packet"]))
    assert suite.esp_len(inner_len) == len(payload)
