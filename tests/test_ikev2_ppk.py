"""Post-quantum preshared keys (RFC 8784) between two lockgate IKE SAs in memory.

The key mixing is checked against a second computation written here from the RFC
text (prf+ of RFC 7296 §2.13 with HMAC from the standard library), not by calling
the product's function; the exchanges against every outcome RFC 8784 §3 names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import pytest

from ikev2.codec import Nonce, Notify, decode_message
from ikev2.config import ConnectionConfig, PostQuantumKey
from ikev2.constants import ExchangeType, NotifyType
from ikev2.crypto.algorithms import PRFS
from ikev2.crypto.keys import IkeKeys
from ikev2.crypto.ppk import mix_ppk, parse_ppk_identity, ppk_identity_data
from ikev2.events import ChildSaInstalled, IkeSaEstablished, IkeSaFailed
from testkit.ikev2_pair import Pair, connection, establish, mirrored

PPK = bytes(range(32))
OTHER_PPK = bytes(range(1, 33))
AUTH = ExchangeType.IKE_AUTH


def _prf_plus(hash_name: str, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 §2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
    out, block, n = b"", b"", 1
    while len(out) < length:
        block = hmac.new(key, block + seed + bytes([n]), hash_name).digest()
        out += block
        n += 1
    return out[:length]


@pytest.mark.parametrize(("prf_id", "hash_name"), [(5, "sha256"), (6, "sha384"), (7, "sha512")])
def test_mixing_matches_rfc_8784_section_3(prf_id: int, hash_name: str) -> None:
    prf = PRFS[prf_id]
    size = hashlib.new(hash_name).digest_size
    keys = IkeKeys(
        sk_d=b"\x11" * size,
        sk_ai=b"ai",
        sk_ar=b"ar",
        sk_ei=b"ei",
        sk_er=b"er",
        sk_pi=b"\x22" * size,
        sk_pr=b"\x33" * size,
    )
    mixed = mix_ppk(prf, PPK, keys)
    # SK_d' = prf+ (PPK, SK_d), SK_pi' = prf+ (PPK, SK_pi), SK_pr' = prf+ (PPK, SK_pr),
    # each as long as the PRF's output.
    assert mixed.sk_d == _prf_plus(hash_name, PPK, keys.sk_d, size)
    assert mixed.sk_pi == _prf_plus(hash_name, PPK, keys.sk_pi, size)
    assert mixed.sk_pr == _prf_plus(hash_name, PPK, keys.sk_pr, size)
    # The keys that protect the IKE messages stay.
    assert (mixed.sk_ai, mixed.sk_ar, mixed.sk_ei, mixed.sk_er) == (b"ai", b"ar", b"ei", b"er")


def test_ppk_identity_carries_the_fixed_type_octet() -> None:
    assert ppk_identity_data(b"cloud-2026") == b"\x02cloud-2026"
    assert parse_ppk_identity(b"\x02cloud-2026") == b"cloud-2026"
    assert parse_ppk_identity(b"\x01opaque") == b"opaque"
    # Empty, type only, and an unknown type: no PPK_ID we could match.
    for bad in (b"", b"\x02", b"\x03abc", b"\x00abc"):
        assert parse_ppk_identity(bad) is None


def _with_ppk(
    conn: ConnectionConfig, key: bytes = PPK, ppk_id: bytes = b"cloud-2026", **kw: bool
) -> ConnectionConfig:
    return dataclasses.replace(conn, ppk=PostQuantumKey(ppk_id, key, **kw))


def _pair(a_ppk: dict[str, object] | None, b_ppk: dict[str, object] | None) -> Pair:
    conn = connection()
    a = _with_ppk(conn, **a_ppk) if a_ppk is not None else conn  # type: ignore[arg-type]
    peer = mirrored(conn)
    b = _with_ppk(peer, **b_ppk) if b_ppk is not None else peer  # type: ignore[arg-type]
    return Pair.make(a, b)


def _init_notifies(pair: Pair, sender: str, response: bool) -> set[int]:
    sent = (
        pair.responses(sender, ExchangeType.IKE_SA_INIT)
        if response
        else pair.requests(sender, ExchangeType.IKE_SA_INIT)
    )
    message = decode_message(sent[-1].ike)
    return {n.notify_type for n in message.get_all(Notify)}


def _nonce(pair: Pair, sender: str) -> bytes:
    """The Ni or Nr of the IKE_SA_INIT exchange on the wire (the SA forgets its own)."""
    if sender == "a":
        sent = pair.requests(sender, ExchangeType.IKE_SA_INIT)
    else:
        sent = pair.responses(sender, ExchangeType.IKE_SA_INIT)
    nonce = decode_message(sent[-1].ike).get(Nonce)
    assert nonce is not None
    return nonce.data


def test_ppk_required_on_both_sides_mixes_every_key() -> None:
    plain = _pair(None, None)
    plain_a, plain_b = establish(plain)
    (plain_sa,) = plain.a.ike_sas()
    assert plain_sa.keys is not None
    sk_d = plain_sa.keys.sk_d

    pair = _pair({"required": True}, {"required": True})
    ia, ib = establish(pair)
    assert NotifyType.USE_PPK in _init_notifies(pair, "a", response=False)
    assert NotifyType.USE_PPK in _init_notifies(pair, "b", response=True)
    (ea,) = pair.of("a", IkeSaEstablished)
    (eb,) = pair.of("b", IkeSaEstablished)
    assert ea.ppk_used and eb.ppk_used
    # RFC 8784 §1: a PPK makes the IKE SA quantum-safe without ML-KEM.
    assert ea.quantum_safe and eb.quantum_safe
    # Same seeds, same IKE_SA_INIT keys: the PPK run's SK_d is SK_d' = prf+(PPK, SK_d).
    (sa_a,) = pair.a.ike_sas()
    (sa_b,) = pair.b.ike_sas()
    assert sa_a.keys is not None and sa_b.keys is not None
    expected = _prf_plus("sha384", PPK, sk_d, len(sk_d))
    assert sa_a.keys.sk_d == sa_b.keys.sk_d == expected
    # The first CHILD SA's KEYMAT comes from SK_d' (RFC 7296 §2.17 with RFC 8784 §3).
    # aes128gcm16: 16 key octets and 4 of salt per direction, initiator's first.
    size = len(ia.encr_key_out)
    assert size == 20
    stream = _prf_plus("sha384", expected, _nonce(pair, "a") + _nonce(pair, "b"), 2 * size)
    assert ia.encr_key_out == ib.encr_key_in == stream[:size]
    assert ia.encr_key_in == ib.encr_key_out == stream[size:]
    assert ia.encr_key_out != plain_a.encr_key_out and ib.encr_key_in != plain_b.encr_key_in


def test_ppk_optional_with_a_peer_without_one_falls_back_to_no_ppk_auth() -> None:
    # b supports PPKs (another one, under another id), so both send USE_PPK; it
    # does not know a's id and authenticates a by NO_PPK_AUTH.
    pair = _pair({}, {"ppk_id": b"other-id", "key": OTHER_PPK})
    ia, ib = establish(pair)
    assert ia.encr_key_out == ib.encr_key_in
    (ea,) = pair.of("a", IkeSaEstablished)
    (eb,) = pair.of("b", IkeSaEstablished)
    assert not ea.ppk_used and not eb.ppk_used
    assert not ea.quantum_safe and not eb.quantum_safe


def test_ppk_optional_with_a_peer_that_has_no_ppk_support() -> None:
    pair = _pair({}, None)
    establish(pair)
    assert NotifyType.USE_PPK in _init_notifies(pair, "a", response=False)
    assert NotifyType.USE_PPK not in _init_notifies(pair, "b", response=True)
    (ea,) = pair.of("a", IkeSaEstablished)
    assert not ea.ppk_used


def test_a_ppk_mismatch_fails_authentication_on_both_sides() -> None:
    pair = _pair({}, {"key": OTHER_PPK})
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "post-quantum preshared key" in fb.reason
    # The responder knew the PPK id: no fallback to NO_PPK_AUTH (RFC 8784 §3).
    (fa,) = pair.of("a", IkeSaFailed)
    assert fa.notify == NotifyType.AUTHENTICATION_FAILED
    assert "post-quantum preshared key" in fa.reason
    assert not pair.of("a", IkeSaEstablished) and not pair.of("b", IkeSaEstablished)
    assert pair.a.ike_sas() == [] and pair.b.ike_sas() == []


def test_responder_requiring_a_ppk_refuses_an_initiator_without_use_ppk() -> None:
    pair = _pair(None, {"required": True})
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "no USE_PPK" in fb.reason and "ppk_required" in fb.reason
    assert pair.of("a", IkeSaFailed)
    assert not pair.of("b", IkeSaEstablished)


def test_initiator_requiring_a_ppk_refuses_a_responder_without_use_ppk() -> None:
    pair = _pair({"required": True}, None)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fa,) = pair.of("a", IkeSaFailed)
    assert "no USE_PPK" in fa.reason and "ppk_required" in fa.reason
    assert not pair.requests("a", AUTH)
    assert not pair.of("a", IkeSaEstablished)


def test_required_responder_refuses_an_unknown_ppk_id() -> None:
    pair = _pair({}, {"ppk_id": b"other-id", "required": True})
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "'cloud-2026'" in fb.reason and "'other-id'" in fb.reason
    assert "ppk_required" in fb.reason


def test_ike_rekey_keeps_the_ppk() -> None:
    pair = _pair({"required": True}, {"required": True})
    establish(pair)
    (old,) = pair.a.ike_sas()
    pair.a.rekey_ike_sa(old.ike_sa_id, pair.clock)
    pair.pump()
    (new,) = pair.a.ike_sas()
    assert new.ike_sa_id != old.ike_sa_id
    assert new.ppk_used
    assert pair.of("a", ChildSaInstalled)


def test_an_unknown_ppk_id_without_no_ppk_auth_is_refused() -> None:
    # a requires its PPK, so it sends no NO_PPK_AUTH; b has another id, not required.
    pair = _pair({"required": True}, {"ppk_id": b"other-id"})
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (fb,) = pair.of("b", IkeSaFailed)
    assert fb.notify == NotifyType.AUTHENTICATION_FAILED
    assert "sent no NO_PPK_AUTH" in fb.reason
    assert not pair.of("a", IkeSaEstablished)
