"""The IKE SA's tasks against strongSwan 5.9.8's recorded exchange (tests/vectors/01).

The vector holds charon's IKE_SA_INIT request and response (inside the AUTH signed
octets), every SK_* key and the AUTH values. These tests check, byte for byte, that
our tasks pick the right parts for NAT detection (§2.23) and PSK AUTH (§2.15), and
that our responder accepts charon's real IKE_SA_INIT request.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from ikev2.codec import (
    Authentication,
    IdI,
    IdR,
    KeyExchange,
    Message,
    Nonce,
    Notify,
    Payload,
    SecurityAssociation,
    decode_message,
)
from ikev2.config import ChildConfig, ConnectionConfig, Identity
from ikev2.constants import AuthMethod, NotifyType
from ikev2.crypto.keys import IkeKeys
from ikev2.crypto.registry import ike_suite
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint
from ikev2.proposals import parse_ike_proposal
from ikev2.sa import IkeSa
from ikev2.sa_data import SaContext
from ikev2.tasks import IkeAuth
from ikev2.tasks.ike_natd import natd_hash
from ikev2.ts import TrafficSelector
from testkit.ikev2_pair import deliver

VECTOR = Path(__file__).parent / "vectors" / "01-psk-aes128gcm16-prfsha256-x25519" / "keys.json"
GW_A, GW_B = ("198.51.100.1", 500), ("198.51.100.2", 500)


@pytest.fixture(scope="module")
def ike() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTOR.read_text())
    return data["ike_sas"][0]  # type: ignore[no-any-return]


def _real_message(signed_octets_hex: str) -> bytes:
    # RealMessage leads the signed octets; its IKE header says how long it is.
    octets = bytes.fromhex(signed_octets_hex)
    return octets[: int.from_bytes(octets[24:28], "big")]


def _config(local: str, remote: str, initiator: bool) -> ConnectionConfig:
    nets = ("192.0.2.0/24", "203.0.113.0/24")
    local_net, remote_net = nets if initiator else nets[::-1]
    return ConnectionConfig(
        name="vector",
        local_addresses=(local,),
        remote_address=remote,
        local_id=Identity.parse("gwa.example.net" if initiator else "gwb.example.net"),
        remote_id=Identity.parse("gwb.example.net" if initiator else "gwa.example.net"),
        psk=b"vec-golden-vectors-psk-NOT-SECRET-2024",
        ike_proposals=("aes128gcm16-prfsha256-x25519",),
        children=(
            ChildConfig(
                "net",
                (TrafficSelector.from_network(local_net),),
                (TrafficSelector.from_network(remote_net),),
            ),
        ),
    )


def _sa_from_vector(ike: dict[str, Any], initiator: bool) -> IkeSa:
    local, remote = (GW_A, GW_B) if initiator else (GW_B, GW_A)
    context = SaContext(DeterministicRandom(b"unused"), itertools.count(1), itertools.count(1))
    sa = IkeSa(
        context,
        _config(local[0], remote[0], initiator),
        initiator=initiator,
        local=local,
        remote=remote,
        now=0.0,
    )
    sa.spi_i, sa.spi_r = bytes.fromhex(ike["spi_i"]), bytes.fromhex(ike["spi_r"])
    sa.nonce_i, sa.nonce_r = bytes.fromhex(ike["Ni"]), bytes.fromhex(ike["Nr"])
    sa.init_request = _real_message(ike["auth"]["initiator"]["signed_octets"])
    sa.init_response = _real_message(ike["auth"]["responder"]["signed_octets"])
    chosen = decode_message(sa.init_response).get(SecurityAssociation)
    assert chosen is not None
    sa.suite = ike_suite(chosen.proposals[0])
    sa.keys = IkeKeys(
        *(
            bytes.fromhex(ike[name] or "")
            for name in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")
        )
    )
    return sa


def test_natd_destination_hashes_match_charon(ike: dict[str, Any]) -> None:
    request = decode_message(_real_message(ike["auth"]["initiator"]["signed_octets"]))
    response = decode_message(_real_message(ike["auth"]["responder"]["signed_octets"]))
    # §2.23: SHA-1(SPIi | SPIr | IP | port) of the message's destination, SPIr zero in
    # the request. (charon fakes its source hashes: kernel-libipsec forces encapsulation.)
    dst_req = request.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    dst_resp = response.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    assert dst_req is not None and dst_resp is not None
    assert natd_hash(request.spi_i, bytes(8), GW_B) == dst_req.data
    assert natd_hash(response.spi_i, response.spi_r, GW_A) == dst_resp.data


def test_initiator_auth_is_byte_exact(ike: dict[str, Any]) -> None:
    sa = _sa_from_vector(ike, initiator=True)
    out: list[Payload] = []
    IkeAuth().build_request(sa, out)
    idi = next(p for p in out if isinstance(p, IdI))
    auth = next(p for p in out if isinstance(p, Authentication))
    assert idi.id_prime.hex() == ike["auth"]["initiator"]["id_prime"]
    assert auth.method == AuthMethod.SHARED_KEY_MIC
    assert auth.data.hex() == ike["auth"]["initiator"]["auth_data"]


def test_responder_verifies_charons_auth_and_answers_byte_exact(ike: dict[str, Any]) -> None:
    sa = _sa_from_vector(ike, initiator=False)
    request = Message(
        sa.spi_i,
        sa.spi_r,
        35,
        1,
        True,
        False,
        (
            IdI(2, b"gwa.example.net"),
            Authentication(2, bytes.fromhex(ike["auth"]["initiator"]["auth_data"])),
        ),
        encrypted=True,
    )
    task = IkeAuth()
    task.process_request(sa, request)  # raises AuthenticationFailed if it did not verify
    assert str(sa.peer_id) == "gwa.example.net"
    out: list[Payload] = []
    task.build_response(sa, out)
    idr = next(p for p in out if isinstance(p, IdR))
    auth = next(p for p in out if isinstance(p, Authentication))
    assert idr.id_prime.hex() == ike["auth"]["responder"]["id_prime"]
    assert auth.data.hex() == ike["auth"]["responder"]["auth_data"]


def test_our_responder_accepts_charons_ike_sa_init(ike: dict[str, Any]) -> None:
    endpoint = Endpoint([_config(GW_B[0], GW_A[0], False)], rng=DeterministicRandom(b"r"))
    request = _real_message(ike["auth"]["initiator"]["signed_octets"])
    deliver(endpoint, request, GW_B, GW_A, 0.0)
    (answer,) = endpoint.datagrams_to_send(0.0)
    response = decode_message(answer.data)
    chosen = response.get(SecurityAssociation)
    assert chosen is not None and len(chosen.proposals) == 1
    assert chosen.proposals[0] == parse_ike_proposal("aes128gcm16-prfsha256-x25519")
    ke = response.get(KeyExchange)
    assert ke is not None and ke.group == 31 and len(ke.data) == 32
    nonce = response.get(Nonce)
    assert nonce is not None and len(nonce.data) >= 16
    dst = response.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    assert isinstance(dst, Notify)
    assert dst.data == natd_hash(response.spi_i, response.spi_r, GW_A)
    (sa,) = endpoint.ike_sas()
    # charon faked its source hash: it looks NATed to us, we are not.
    assert sa.nat_remote and not sa.nat_local and sa.udp_encap
