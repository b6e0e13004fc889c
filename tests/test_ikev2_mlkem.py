"""Hybrid ML-KEM key exchange (RFC 9370 over RFC 9242, FIPS 203): proposals, the
key exchange method, the key schedule, IntAuth, and two lockgates in memory."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest

from conf import ConfigError, parse_config
from ikev2.codec import IkeHeader, Nonce, Notify, decode_header, decode_message
from ikev2.codec import KeyExchange as KePayload
from ikev2.codec.message import Message
from ikev2.constants import DhGroup, ExchangeType, NotifyType, TransformType
from ikev2.crypto import dh
from ikev2.crypto.dh import KEMS, KeyExchange, respond_key_exchange
from ikev2.crypto.intauth import chain_intauth, intauth_octets, intauth_trailer
from ikev2.crypto.keys import additional_skeyseed, derive_ike_keys, skeyseed
from ikev2.crypto.registry import ike_suite
from ikev2.crypto.rng import DeterministicRandom
from ikev2.errors import InvalidKeData, InvalidProposal, NoProposalChosen, UnknownAlgorithm
from ikev2.events import IkeSaEstablished, IkeSaFailed, IkeSaRekeyed
from ikev2.proposals import (
    additional_key_exchanges,
    describe_proposal,
    parse_esp_proposal,
    parse_ike_proposal,
    select_proposal,
    without_key_exchange,
)
from ikev2.sa_data import IkeSaData
from ikev2.tasks import ike_init, ike_intermediate
from testkit.fuzz.world import seal_raw, sk_ciphers
from testkit.ikev2_kdf import prf_plus_sha384, prf_sha384
from testkit.ikev2_pair import Pair, connection, establish

HYBRID = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
CLASSICAL = "aes256gcm16-prfsha384-x25519"

# --- proposals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HYBRID, [(TransformType.ADDITIONAL_KE_1, DhGroup.ML_KEM_768)]),
        (
            "aes256gcm16-prfsha384-ecp384-ke1_mlkem1024-ke2_mlkem768",
            [
                (TransformType.ADDITIONAL_KE_1, DhGroup.ML_KEM_1024),
                (TransformType.ADDITIONAL_KE_2, DhGroup.ML_KEM_768),
            ],
        ),
        ("aes256gcm16-prfsha384-x25519-ke7_mlkem768", [(12, DhGroup.ML_KEM_768)]),
        (CLASSICAL, []),
    ],
)
def test_ike_proposal_with_additional_key_exchanges(text: str, expected: list[Any]) -> None:
    proposal = parse_ike_proposal(text)
    assert additional_key_exchanges(proposal) == expected
    assert describe_proposal(proposal) == text
    assert ike_suite(proposal).name == text.replace("ke7_", "ke1_")
    assert ike_suite(proposal).quantum_safe == bool(expected)


def test_esp_proposal_with_pfs_and_ml_kem() -> None:
    proposal = parse_esp_proposal("aes256gcm16-x25519-ke1_mlkem768")
    assert describe_proposal(proposal) == "aes256gcm16-x25519-ke1_mlkem768"
    # IKE_AUTH's CHILD SA takes no key exchange at all, additional ones included.
    assert describe_proposal(without_key_exchange(proposal)) == "aes256gcm16"


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        (CLASSICAL + "-ke1_mlkem512", UnknownAlgorithm, "'ke1_mlkem512'"),
        (CLASSICAL + "-mlkem768", InvalidProposal, "write ke1_mlkem768"),
        ("aes256gcm16-prfsha384-ke1_mlkem768", InvalidProposal, "no key exchange group"),
        (CLASSICAL + "-ke8_mlkem768", UnknownAlgorithm, "'ke8_mlkem768'"),
    ],
)
def test_bad_ml_kem_proposals(text: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        parse_ike_proposal(text)


def test_cryptography_support_decides_what_is_offered() -> None:
    # The installed cryptography has ML-KEM-768 and -1024, not -512 (FIPS 203 all three).
    assert sorted(g.name for g in KEMS.values()) == ["mlkem1024", "mlkem768"]


def test_check_config_names_the_key_of_an_unsupported_ml_kem() -> None:
    data: dict[str, Any] = {
        "gateway": {"addresses": ["198.51.100.1"], "id": "198.51.100.1"},
        "peers": {
            "dc1": {"address": "198.51.100.2", "id": "198.51.100.2", "psk": "x" * 32},
        },
        "connections": {
            "dc1-net": {
                "peer": "dc1",
                "local_subnets": ["192.0.2.0/24"],
                "remote_subnets": ["203.0.113.0/24"],
                "ike_proposals": [HYBRID, CLASSICAL + "-ke1_mlkem512"],
            }
        },
    }
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert [str(p) for p in err.value.problems] == [
        "connections.dc1-net.ike_proposals[1]: unsupported algorithm 'ke1_mlkem512' "
        "(known, not implemented)"
    ]
    data["connections"]["dc1-net"]["ike_proposals"] = [HYBRID, CLASSICAL]
    parse_config(data)


def test_selection_falls_back_to_the_classical_proposal() -> None:
    ours = [parse_ike_proposal(HYBRID), parse_ike_proposal(CLASSICAL)]
    # A peer without RFC 9370 offers no transform type 6: the classical one matches.
    chosen = select_proposal(ours, [parse_ike_proposal(CLASSICAL)])
    assert additional_key_exchanges(chosen) == []
    chosen = select_proposal(ours, [parse_ike_proposal(HYBRID)])
    assert additional_key_exchanges(chosen) == [(6, DhGroup.ML_KEM_768)]


# --- the key exchange method ------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(KEMS))
def test_ml_kem_exchange_agrees(method: int) -> None:
    initiator = KeyExchange.generate(method, DeterministicRandom(b"i"))
    info = KEMS[method]
    assert len(initiator.public_bytes) == info.public_len
    ciphertext, secret = respond_key_exchange(
        method, initiator.public_bytes, DeterministicRandom(b"r")
    )
    assert len(ciphertext) == info.ciphertext_len
    assert initiator.shared_secret(ciphertext) == secret
    assert len(secret) == 32
    # The same seed gives the same key pair (FIPS 203 §7.1 KeyGen from d | z).
    again = KeyExchange.generate(method, DeterministicRandom(b"i"))
    assert again.public_bytes == initiator.public_bytes


@pytest.mark.parametrize("method", sorted(KEMS))
def test_malformed_ml_kem_data_is_invalid_syntax(method: int) -> None:
    info = KEMS[method]
    initiator = KeyExchange.generate(method, DeterministicRandom(b"i"))
    rng = DeterministicRandom(b"r")
    for bad in (b"", initiator.public_bytes[:-1], initiator.public_bytes + b"\x00"):
        with pytest.raises(InvalidKeData) as err:
            respond_key_exchange(method, bad, rng)
        assert err.value.notify == NotifyType.INVALID_SYNTAX
    # FIPS 203 §7.2 modulus check: coefficients of 0xfff are not below q = 3329.
    with pytest.raises(InvalidKeData):
        respond_key_exchange(method, b"\xff" * info.public_len, rng)
    for bad in (b"", b"\x00" * (info.ciphertext_len - 1), b"\x00" * (info.ciphertext_len + 1)):
        with pytest.raises(InvalidKeData) as err:
            initiator.shared_secret(bad)
        assert err.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize("method", sorted(KEMS))
def test_wrong_ciphertext_decapsulates_to_another_secret(method: int) -> None:
    initiator = KeyExchange.generate(method, DeterministicRandom(b"i"))
    ciphertext, secret = respond_key_exchange(
        method, initiator.public_bytes, DeterministicRandom(b"r")
    )
    tampered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    # Implicit rejection (FIPS 203 §6.3): no error, a different pseudo-random secret,
    # the same one every time for the same ciphertext.
    rejected = initiator.shared_secret(tampered)
    assert rejected != secret
    assert len(rejected) == 32
    assert initiator.shared_secret(tampered) == rejected


# --- the key schedule, computed a second time from the RFC text ------------------------


_prf, _prf_plus = prf_sha384, prf_plus_sha384


def _split(stream: bytes) -> dict[str, bytes]:
    # aes256gcm16-prfsha384: SK_d 48, no SK_a, SK_e 32 + 4 salt, SK_p 48 (RFC 5282 §7.1).
    names = ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")
    sizes = (48, 0, 0, 36, 36, 48, 48)
    out, offset = {}, 0
    for name, size in zip(names, sizes, strict=True):
        out[name] = stream[offset : offset + size]
        offset += size
    return out


def _rfc_keys(
    ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes, g_ir: bytes, extra: list[bytes]
) -> dict[str, bytes]:
    """RFC 7296 §2.14, then RFC 9370 §2.2.2 once per additional shared secret."""
    seed = _prf(ni + nr, g_ir)
    keys = _split(_prf_plus(seed, ni + nr + spi_i + spi_r, 264))
    for shared in extra:
        seed = _prf(keys["sk_d"], shared + ni + nr)
        keys = _split(_prf_plus(seed, ni + nr + spi_i + spi_r, 264))
    return keys


def test_key_schedule_with_two_additional_key_exchanges() -> None:
    suite = ike_suite(parse_ike_proposal("aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_mlkem1024"))
    ni, nr = bytes(range(32)), bytes(range(100, 132))
    spi_i, spi_r = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718")
    g_ir, sk1, sk2 = b"\x42" * 32, b"\x17" * 32, b"\x99" * 32
    keys = derive_ike_keys(suite, skeyseed(suite.prf, ni, nr, g_ir), ni, nr, spi_i, spi_r)
    for shared in (sk1, sk2):
        seed = additional_skeyseed(suite.prf, keys.sk_d, shared, ni, nr)
        keys = derive_ike_keys(suite, seed, ni, nr, spi_i, spi_r)
    expected = _rfc_keys(ni, nr, spi_i, spi_r, g_ir, [sk1, sk2])
    assert {name: getattr(keys, name) for name in expected} == expected
    # The additional exchanges change every key, not only SK_d.
    before = _rfc_keys(ni, nr, spi_i, spi_r, g_ir, [])
    assert all(before[n] != expected[n] for n in ("sk_d", "sk_ei", "sk_er", "sk_pi", "sk_pr"))


def test_intauth_of_a_message_from_the_rfc_layout() -> None:
    ke = KePayload(DhGroup.ML_KEM_768, b"\xab" * 1184)
    message = Message(
        b"\x01" * 8,
        b"\x02" * 8,
        ExchangeType.IKE_INTERMEDIATE,
        1,
        True,
        False,
        (ke,),
        encrypted=True,
    )
    # RFC 9242 §3.3.2: IKE header and Encrypted payload header with lengths as if
    # unencrypted, then the inner KE payload (RFC 7296 §3.4) in clear.
    inner = struct.pack("!BBHHH", 0, 0, 8 + 1184, DhGroup.ML_KEM_768, 0) + b"\xab" * 1184
    header = (
        b"\x01" * 8 + b"\x02" * 8
        + struct.pack("!BBBBII", 46, 0x20, 43, 0x08, 1, 28 + 4 + len(inner))
    )  # fmt: skip
    a = header + struct.pack("!BBH", 34, 0, 4 + len(inner))
    assert intauth_octets(message) == a + inner
    suite = ike_suite(parse_ike_proposal(HYBRID))
    first = chain_intauth(suite.prf, b"k" * 48, b"", message)
    assert first == _prf(b"k" * 48, a + inner)
    assert chain_intauth(suite.prf, b"j" * 48, first, message) == _prf(b"j" * 48, first + a + inner)
    assert intauth_trailer(b"I", b"R", 2) == b"IR\x00\x00\x00\x02"


# --- two lockgates in memory -------------------------------------------------------------


def _established(pair: Pair, side: str) -> IkeSaEstablished:
    (event,) = pair.of(side, IkeSaEstablished)
    return event


@pytest.mark.parametrize(
    "proposal",
    [
        HYBRID,
        "aes256gcm16-prfsha384-x25519-ke1_mlkem1024",
        "aes256gcm16-prfsha384-ecp384-ke1_mlkem768",
        "aes256gcm16-prfsha384-ecp384-ke1_mlkem1024",
    ],
)
def test_hybrid_ike_sa_in_memory_with_fragmentation(proposal: str) -> None:
    pair = Pair.make(connection(ike_proposals=(proposal,), fragment_size=1232))
    ia, ib = establish(pair)
    assert (ia.encr_key_out, ia.encr_key_in) == (ib.encr_key_in, ib.encr_key_out)
    for side in ("a", "b"):
        assert _established(pair, side).suite == proposal
        assert _established(pair, side).quantum_safe
    # One IKE_INTERMEDIATE exchange (RFC 9370), its ML-KEM key in RFC 7383 fragments.
    requests = pair.requests("a", ExchangeType.IKE_INTERMEDIATE)
    ids = {decode_header(s.ike).message_id for s in requests}
    assert ids == {1}
    assert len(requests) >= 2
    assert all(len(s.ike) <= 1232 for s in pair.wire)
    auth = pair.requests("a", ExchangeType.IKE_AUTH)
    assert {decode_header(s.ike).message_id for s in auth} == {2}
    # Both IKE_SA_INITs announced IKE_INTERMEDIATE (RFC 9242 §2).
    for sender, pick in (("a", pair.requests), ("b", pair.responses)):
        (init,) = pick(sender, ExchangeType.IKE_SA_INIT)
        message = decode_message(init.ike)
        assert message.notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is not None


def test_two_additional_key_exchanges_run_in_two_intermediate_exchanges() -> None:
    proposal = "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_mlkem1024"
    pair = Pair.make(connection(ike_proposals=(proposal,)))
    establish(pair)
    ids = {
        decode_header(s.ike).message_id for s in pair.requests("a", ExchangeType.IKE_INTERMEDIATE)
    }
    assert ids == {1, 2}
    assert _established(pair, "b").suite == proposal


def test_key_schedule_in_the_exchange_matches_the_rfc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SK_e of the established SA, recomputed from the wire's nonces and SPIs and
    the two shared secrets with the RFC's formulas (test helpers above)."""
    secrets: dict[str, bytes] = {}
    real_shared = KeyExchange.shared_secret

    def record_shared(self: KeyExchange, peer: bytes) -> bytes:
        out = real_shared(self, peer)
        secrets["kem" if self.group.kem else "dh"] = out
        return out

    monkeypatch.setattr(KeyExchange, "shared_secret", record_shared)
    pair = Pair.make(connection(ike_proposals=(HYBRID,)))
    establish(pair)
    (req,) = pair.requests("a", ExchangeType.IKE_SA_INIT)
    (resp,) = pair.responses("b", ExchangeType.IKE_SA_INIT)
    request, response = decode_message(req.ike), decode_message(resp.ike)
    ni, nr = request.get(Nonce), response.get(Nonce)
    assert ni is not None and nr is not None
    expected = _rfc_keys(
        ni.data, nr.data, response.spi_i, response.spi_r, secrets["dh"], [secrets["kem"]]
    )
    (sa_a,) = pair.a.ike_sas()
    assert sa_a.keys is not None
    assert (sa_a.keys.sk_d, sa_a.keys.sk_ei, sa_a.keys.sk_er) == (
        expected["sk_d"], expected["sk_ei"], expected["sk_er"],
    )  # fmt: skip


def test_auth_covers_the_intermediate_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    real = IkeSaData.int_auth

    def skewed(self: IkeSaData) -> bytes:
        octets: bytes = real.fget(self)  # type: ignore[attr-defined]
        # The initiator signs a different IntAuth: the responder's check must fail.
        return octets[:-5] + bytes([octets[-5] ^ 1]) + octets[-4:] if self.initiator else octets

    monkeypatch.setattr(IkeSaData, "int_auth", property(skewed))
    pair = Pair.make(connection(ike_proposals=(HYBRID,)))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert not pair.of("a", IkeSaEstablished) and not pair.of("b", IkeSaEstablished)
    (failed,) = pair.of("b", IkeSaFailed)
    assert failed.notify == NotifyType.AUTHENTICATION_FAILED


def test_bad_ciphertext_ends_in_silence_not_an_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    def tampering(method: int, peer: bytes, rng: Any) -> tuple[bytes, bytes]:
        ciphertext, secret = respond_key_exchange(method, peer, rng)
        return bytes([ciphertext[0] ^ 0x80]) + ciphertext[1:], secret

    monkeypatch.setattr(ike_intermediate, "respond_key_exchange", tampering)
    pair = Pair.make(connection(ike_proposals=(HYBRID,)))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    pair.advance(600.0)
    assert not pair.of("a", IkeSaEstablished) and not pair.of("b", IkeSaEstablished)
    # The initiator took the ciphertext without complaint (implicit rejection); its
    # IKE_AUTH, under keys the responder does not have, is dropped as unauthentic.
    # Once the half-open SA is gone, retransmissions get the answer any unknown SPI
    # gets (RFC 7296 §2.21.4), never one about the key exchange.
    assert pair.requests("a", ExchangeType.IKE_AUTH)
    answers = [decode_message(s.ike).payloads for s in pair.responses("b", ExchangeType.IKE_AUTH)]
    assert all(p == (Notify(NotifyType.INVALID_IKE_SPI),) for p in answers)
    (failed,) = pair.of("a", IkeSaFailed)
    assert failed.notify is None


def test_malformed_encapsulation_key_gets_invalid_syntax(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ike_intermediate.IkeIntermediate.build_request

    def truncating(self: Any, sa: Any, out: list[Any]) -> None:
        real(self, sa, out)
        ke = out.pop()
        out.append(KePayload(ke.group, ke.data[:-1]))

    monkeypatch.setattr(ike_intermediate.IkeIntermediate, "build_request", truncating)
    pair = Pair.make(connection(ike_proposals=(HYBRID,)))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (failed_b,) = pair.of("b", IkeSaFailed)
    assert failed_b.notify == NotifyType.INVALID_SYNTAX
    (failed_a,) = pair.of("a", IkeSaFailed)
    assert "INVALID_SYNTAX" in failed_a.reason


@pytest.mark.parametrize(
    "proposals",
    # The initiator's classical fallback is a proposal of its own, or (`ke1_none`) the
    # ML-KEM round made optional: a responder without ML-KEM answers without type 6,
    # which the initiator accepts as NONE (RFC 9370 §2.2.1).
    [(HYBRID, CLASSICAL), (HYBRID + "-ke1_none",)],
    ids=["classical-proposal", "optional-round"],
)
def test_peer_without_ml_kem_falls_back_to_classical(proposals: tuple[str, ...]) -> None:
    ours = connection(ike_proposals=proposals)
    peer = connection(
        local="198.51.100.2", remote="198.51.100.1", ike_proposals=(CLASSICAL,),
        children=(dataclasses_swap(ours),),
    )  # fmt: skip
    pair = Pair.make(ours, peer)
    establish(pair)
    for side in ("a", "b"):
        assert _established(pair, side).suite == CLASSICAL
        assert not _established(pair, side).quantum_safe
    assert pair.requests("a", ExchangeType.IKE_INTERMEDIATE) == []


def test_a_config_that_demands_pq_refuses_a_classical_peer() -> None:
    ours = connection(ike_proposals=(CLASSICAL,))
    peer = connection(
        local="198.51.100.2", remote="198.51.100.1", ike_proposals=(HYBRID,),
        children=(dataclasses_swap(ours),),
    )  # fmt: skip
    pair = Pair.make(ours, peer)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (failed_a,) = pair.of("a", IkeSaFailed)
    assert failed_a.notify == NotifyType.NO_PROPOSAL_CHOSEN
    (failed_b,) = pair.of("b", IkeSaFailed)
    assert failed_b.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert "ke1_mlkem768" in failed_b.reason


def test_hybrid_ike_sa_rekeys_with_ml_kem_and_stays_up() -> None:
    pair = Pair.make(connection(ike_proposals=(HYBRID,)))
    establish(pair)
    (sa_a,) = pair.a.ike_sas()
    pair.a.rekey_ike_sa(sa_a.ike_sa_id, pair.clock)
    pair.pump()
    (rekeyed,) = pair.of("a", IkeSaRekeyed)
    # The rekey runs ML-KEM again, in IKE_FOLLOWUP_KE (RFC 9370 §2.2.4).
    assert rekeyed.suite == HYBRID
    assert pair.requests("a", ExchangeType.IKE_FOLLOWUP_KE)
    (new_a,) = pair.a.ike_sas()
    assert new_a.quantum_safe
    assert not [n for n in pair.of("b", IkeSaFailed)]


def dataclasses_swap(conn: Any) -> Any:
    (c,) = conn.children
    return dataclasses.replace(c, local_ts=c.remote_ts, remote_ts=c.local_ts)


def test_intermediate_notify_type() -> None:
    assert Notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED).notify_type == 16438
    assert dh.KE_METHODS[DhGroup.ML_KEM_768].kem


@pytest.mark.parametrize("kem", ["mlkem768", "mlkem1024"])
def test_lost_intermediate_response_is_sent_again(kem: str) -> None:
    """The responder switched keys after answering; the initiator's retransmission (in
    fragments, sealed with the keys before) still gets the cached answer (RFC 7383
    §2.6.1)."""
    lost: list[int] = []

    def drop_first_response(sent: Any) -> bool:
        header = decode_header(sent.ike)
        intermediate = header.exchange_type == ExchangeType.IKE_INTERMEDIATE
        # Every fragment of b's first answer (sent at one moment), none later.
        if sent.sender == "b" and intermediate and (not lost or lost[0] == sent.time):
            lost[:] = [sent.time]
            return True
        return False

    proposal = f"{CLASSICAL}-ke1_{kem}"
    pair = Pair.make(connection(ike_proposals=(proposal,)), drop=drop_first_response)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    pair.advance(30.0)
    assert lost
    assert len(pair.requests("a", ExchangeType.IKE_INTERMEDIATE)) >= 4  # sent twice
    assert _established(pair, "a").quantum_safe and _established(pair, "b").quantum_safe


def test_ike_auth_before_the_additional_key_exchange_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An initiator that skips IKE_INTERMEDIATE and goes straight to IKE_AUTH.
    monkeypatch.setattr(ike_init, "_start_intermediate", lambda sa, rounds: None)
    pair = Pair.make(connection(ike_proposals=(HYBRID,)))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert not pair.of("a", IkeSaEstablished) and not pair.of("b", IkeSaEstablished)
    (failed,) = pair.of("b", IkeSaFailed)
    assert failed.notify == NotifyType.INVALID_SYNTAX
    assert "before the negotiated additional key exchanges" in failed.reason


def test_no_additional_key_exchange_without_the_intermediate_notify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RFC 9242 §2: an initiator that does not announce IKE_INTERMEDIATE gets a
    proposal without additional key exchanges, even if it offered one."""
    monkeypatch.setattr(ike_init, "has_additional_key_exchange", lambda proposals: False)
    pair = Pair.make(connection(ike_proposals=(HYBRID, CLASSICAL)))
    establish(pair)
    assert _established(pair, "b").suite == CLASSICAL
    (resp,) = pair.responses("b", ExchangeType.IKE_SA_INIT)
    assert decode_message(resp.ike).notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED) is None


def test_intauth_of_a_received_message_covers_the_octets_as_sent() -> None:
    """A peer's encoding we would not produce (RESERVED octets set in the KE payload)
    counts as it arrived (RFC 9242 §3.3.2 takes the message's own octets)."""
    cipher = sk_ciphers()["aes256gcm16"]
    inner = struct.pack("!BBHHH", 0, 0, 8 + 4, DhGroup.ML_KEM_768, 0xBEEF) + b"\x01" * 4
    template = IkeHeader(b"\x01" * 8, b"\x02" * 8, 34, 43, 1, 0, True, False)
    received = cipher.open(seal_raw(cipher, template, 34, inner))
    header = b"\x01" * 8 + b"\x02" * 8 + struct.pack("!BBBBII", 46, 0x20, 43, 0x08, 1, 28 + 4 + 12)
    assert intauth_octets(received) == header + struct.pack("!BBH", 34, 0, 4 + 12) + inner
    # Encoded afresh, the payload would read otherwise: the received octets matter.
    assert intauth_octets(dataclasses.replace(received, plaintext=None)) != intauth_octets(received)


# --- an optional additional key exchange (`keN_none`) -----------------------------------

OPTIONAL_PQ = HYBRID + "-ke1_none"


def test_an_optional_round_matches_a_proposal_without_it() -> None:
    # strongSwan 6 with `ke1_mlkem768-ke1_none` rekeys with that proposal; a responder
    # without type 6 picks NONE (RFC 9370 §2.2.1), and the answer leaves it out as it
    # leaves out an ESP DH of NONE (RFC 7296 §3.3.3).
    chosen = select_proposal([parse_ike_proposal(CLASSICAL)], [parse_ike_proposal(OPTIONAL_PQ)])
    assert additional_key_exchanges(chosen) == []
    assert chosen == parse_ike_proposal(CLASSICAL)
    # Ours with the optional round against a classical peer: the same choice.
    chosen = select_proposal([parse_ike_proposal(OPTIONAL_PQ)], [parse_ike_proposal(CLASSICAL)])
    assert chosen == parse_ike_proposal(CLASSICAL)
    # Both offering it: ML-KEM first in the proposal, so it is run.
    chosen = select_proposal([parse_ike_proposal(OPTIONAL_PQ)], [parse_ike_proposal(OPTIONAL_PQ)])
    assert additional_key_exchanges(chosen) == [(6, DhGroup.ML_KEM_768)]
    # A round we require still needs the peer to offer it.
    with pytest.raises(NoProposalChosen):
        select_proposal([parse_ike_proposal(HYBRID)], [parse_ike_proposal(CLASSICAL)])
