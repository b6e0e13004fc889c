"""The golden vectors of two strongSwan 5.9.8 charons (tests/vectors/README.md): the
captured IKE messages by frame, the recorded keys recomputed, and every encrypted
message opened with them."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esp.udpencap import DatagramKind, classify, strip_marker
from ikev2.codec import (
    Message,
    Proposal,
    Transform,
)
from ikev2.constants import ProtocolId
from ikev2.crypto import (
    IkeKeys,
    SkCipher,
    derive_ike_keys,
    ike_suite,
    rekey_skeyseed,
    skeyseed,
)
from ikev2.crypto.registry import IkeSuite

VECTORS = Path(__file__).parent.parent / "tests" / "vectors"


SCENARIOS = sorted(p.name for p in VECTORS.iterdir() if p.is_dir())


def h(value: str | None) -> bytes:
    return bytes.fromhex(value or "")


@dataclass
class Frame:
    number: int
    sport: int
    data: bytes  # the IKE message, without the non-ESP marker


def ike_frames(scenario: str) -> dict[int, Frame]:
    """IKE messages of capture.pcap (classic pcap, Ethernet, IPv4/UDP), by frame number."""
    raw = (VECTORS / scenario / "capture.pcap").read_bytes()
    magic = raw[:4]
    endian = "<" if magic == b"\xd4\xc3\xb2\xa1" else ">"
    frames: dict[int, Frame] = {}
    offset, number = 24, 0
    while offset < len(raw):
        _, _, incl, _ = struct.unpack(endian + "IIII", raw[offset : offset + 16])
        packet = raw[offset + 16 : offset + 16 + incl]
        offset += 16 + incl
        number += 1
        ip = packet[14:]
        udp = ip[(ip[0] & 0x0F) * 4 :]
        sport, dport = struct.unpack("!HH", udp[:4])
        payload = udp[8:]
        if 4500 in (sport, dport):
            if classify(payload) is not DatagramKind.IKE:
                continue  # ESP in UDP (RFC 3948 §2.1)
            payload = strip_marker(payload)
        frames[number] = Frame(number, sport, payload)
    return frames


def load(scenario: str, name: str) -> Any:
    return json.loads((VECTORS / scenario / name).read_text())


def suite_of(proposal_json: dict[str, Any]) -> IkeSuite:
    """The IKE suite from keys.json's numeric proposal, through the codec's Transform."""
    transforms = [Transform.make(1, proposal_json["encr"]["id"], proposal_json["encr"]["key_bits"])]
    if proposal_json["encr"]["id"] == 28:  # ChaCha20-Poly1305 has no Key Length (RFC 7634 §2)
        transforms = [Transform.make(1, 28)]
    if proposal_json.get("integ"):
        transforms.append(Transform.make(3, proposal_json["integ"]["id"]))
    transforms.append(Transform.make(2, proposal_json["prf"]["id"]))
    transforms.append(Transform.make(4, proposal_json["ke"]["id"]))
    return ike_suite(Proposal(1, ProtocolId.IKE, b"", tuple(transforms)))


def derived_ike_keys(keys: dict[str, Any]) -> list[tuple[IkeSuite, IkeKeys]]:
    """Every IKE SA's suite and keys, recomputed from the capture's public values."""
    out: list[tuple[IkeSuite, IkeKeys]] = []
    for sa in keys["ike_sas"]:
        suite = suite_of(sa["proposal"])
        if sa["rekey_of"] is None:
            seed = skeyseed(suite.prf, h(sa["Ni"]), h(sa["Nr"]), h(sa["dh_shared_secret"]))
        else:
            old_suite, old_keys = out[sa["rekey_of"]]
            seed = rekey_skeyseed(
                old_suite.prf,
                old_keys.sk_d,
                h(sa["dh_shared_secret"]),
                h(sa["Ni"]),
                h(sa["Nr"]),
            )
        assert seed.hex() == sa["skeyseed"]
        ike_keys = derive_ike_keys(
            suite, seed, h(sa["Ni"]), h(sa["Nr"]), h(sa["spi_i"]), h(sa["spi_r"])
        )
        out.append((suite, ike_keys))
    return out


def sk_cipher(suite: IkeSuite, ike_keys: IkeKeys, from_initiator: bool) -> SkCipher:
    if from_initiator:
        return SkCipher(suite.encryption, ike_keys.sk_ei, suite.integrity, ike_keys.sk_ai)
    return SkCipher(suite.encryption, ike_keys.sk_er, suite.integrity, ike_keys.sk_ar)


def opened_messages(scenario: str) -> list[tuple[dict[str, Any], Frame, Message]]:
    keys = load(scenario, "keys.json")
    derived = derived_ike_keys(keys)
    frames = ike_frames(scenario)
    out = []
    for record in load(scenario, "packets.json")["frames"]:
        if record["kind"] != "ike" or "plaintext" not in record:
            continue
        frame = frames[record["frame"]]
        suite, ike_keys = derived[record["ike_sa"]]
        message = sk_cipher(suite, ike_keys, "I" in record["flags"]).open(frame.data)
        out.append((record, frame, message))
    return out


def ike_sa_init(scenario: str) -> tuple[Frame, Frame]:
    frames = ike_frames(scenario)
    return frames[1], frames[2]
