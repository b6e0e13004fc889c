"""Golden vectors from two strongSwan 5.9.8 charons (tests/vectors/README.md).

Every key charon derived is recomputed from the captured nonces, SPIs and g^ir; every
encrypted IKE message in the capture is verified, decrypted and decoded to the recorded
plaintext and payload list; the AUTH payloads are recomputed (PSK) or verified (ECDSA,
RFC 7427). The captures are the real bytes on the wire, read from capture.pcap.
"""

from __future__ import annotations

import pytest
from cryptography import x509

from ikev2.codec import (
    Authentication,
    Certificate,
    Delete,
    Encrypted,
    IdI,
    IdR,
    KeyExchange,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    Transform,
    TsI,
    TsR,
    check_payloads,
    decode_message,
    encode_message,
    encode_payloads,
)
from ikev2.codec.payloads import CertificateRequest
from ikev2.constants import AuthMethod, ExchangeType, NotifyType, ProtocolId
from ikev2.crypto import (
    child_suite,
    derive_child_keys_for,
    ike_suite,
    psk_auth,
    signed_octets,
    verify_psk_auth,
    verify_signature_auth,
)
from ikev2.errors import AuthenticationFailed, IntegrityCheckFailed
from testkit.golden import (
    SCENARIOS,
    VECTORS,
    derived_ike_keys,
    h,
    ike_frames,
    ike_sa_init,
    load,
    opened_messages,
    sk_cipher,
    suite_of,
)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_ike_sa_key_is_reproduced(scenario: str) -> None:
    # RFC 7296 §2.14 (and §2.18 for 02's rekeyed IKE SA).
    keys = load(scenario, "keys.json")
    derived = derived_ike_keys(keys)
    assert len(derived) == len(keys["ike_sas"])
    for sa, (_, ike_keys) in zip(keys["ike_sas"], derived, strict=True):
        for name in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
            assert getattr(ike_keys, name).hex() == (sa[name] or ""), name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_child_sa_keymat_is_reproduced(scenario: str) -> None:
    # RFC 7296 §2.17, with 02's PFS rekey feeding g^ir first.
    keys = load(scenario, "keys.json")
    derived = derived_ike_keys(keys)
    for child in keys["child_sas"]:
        ike_suite_, ike_keys = derived[child["ike_sa"]]
        p = child["proposal"]
        transforms = [
            Transform.make(1, 28)
            if p["encr"]["id"] == 28
            else Transform.make(1, p["encr"]["id"], p["encr"]["key_bits"])
        ]
        if p.get("integ"):
            transforms.append(Transform.make(3, p["integ"]["id"]))
        transforms.append(Transform.make(5, p["esn"]["id"]))
        suite = child_suite(Proposal(1, ProtocolId.ESP, h(child["spi_i"]), tuple(transforms)))
        g_ir = h(child["dh_shared_secret"]) if child["pfs"] else None
        seed = (g_ir or b"") + h(child["Ni"]) + h(child["Nr"])
        assert seed.hex() == child["keymat_seed"]
        km = derive_child_keys_for(
            ike_suite_, ike_keys.sk_d, suite, h(child["Ni"]), h(child["Nr"]), g_ir
        )
        assert km.encr_i_to_r.hex() == child["encr_key_i_to_r"]
        assert km.encr_r_to_i.hex() == child["encr_key_r_to_i"]
        assert km.integ_i_to_r.hex() == (child["integ_key_i_to_r"] or "")
        assert km.integ_r_to_i.hex() == (child["integ_key_r_to_i"] or "")


def payload_label(payload: Payload) -> str:
    """packets.json's label for a payload."""
    if isinstance(payload, Notify):
        name = NotifyType(payload.notify_type).name
        if name == "IKEV2_FRAGMENTATION_SUPPORTED":
            name = "FRAGMENTATION_SUPPORTED"  # strongSwan's name for RFC 7383's notify
        return f"N({name})"
    labels: dict[type[Payload], str] = {
        SecurityAssociation: "SA",
        KeyExchange: "KE",
        Nonce: "Ni/Nr",
        IdI: "IDi",
        IdR: "IDr",
        Authentication: "AUTH",
        Certificate: "CERT",
        CertificateRequest: "CERTREQ",
        TsI: "TSi",
        TsR: "TSr",
        Delete: "D",
    }
    return labels[type(payload)]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_encrypted_ike_message_decrypts_to_the_recorded_payloads(scenario: str) -> None:
    # RFC 7296 §3.14; RFC 5282 (GCM) and RFC 7634 §3 (ChaCha20-Poly1305) for AEAD.
    opened = opened_messages(scenario)
    expected = sum(
        1
        for r in load(scenario, "packets.json")["frames"]
        if r["kind"] == "ike" and r["exchange"] != "IKE_SA_INIT"
    )
    assert len(opened) == expected > 0
    for record, frame, message in opened:
        assert message.encrypted
        assert message.message_id == record["message_id"]
        assert message.exchange_type == ExchangeType[record["exchange"]]
        assert message.initiator == ("I" in record["flags"])
        assert message.response == ("R" in record["flags"])
        _, inner = encode_payloads(message.payloads)
        assert inner.hex() == record["plaintext"]
        assert [payload_label(p) for p in message.payloads] == record["payloads"]
        sk = decode_message(frame.data).payloads[-1]
        assert isinstance(sk, Encrypted)
        assert sk.body.startswith(h(record["sk_iv"]))
        assert sk.body.endswith(h(record["sk_icv"]))
        assert frame.data.startswith(h(record["aad"]))


class RecordedIv:
    """A RandomSource that hands out one recorded IV."""

    def __init__(self, iv: bytes) -> None:
        self.iv = iv

    def token_bytes(self, n: int) -> bytes:
        assert n == len(self.iv)
        return self.iv


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sealing_reproduces_charon_bytes_for_aead(scenario: str) -> None:
    # charon pads AEAD plaintext with nothing, as we do, so with the same IV our sealed
    # message must equal the captured one octet for octet. CBC padding is random.
    keys = load(scenario, "keys.json")
    derived = derived_ike_keys(keys)
    checked = 0
    for record, frame, message in opened_messages(scenario):
        suite, ike_keys = derived[record["ike_sa"]]
        cipher = sk_cipher(suite, ike_keys, "I" in record["flags"])
        if suite.integrity is not None:
            resealed = cipher.seal(message, RecordedIv(h(record["sk_iv"])))
            assert cipher.open(resealed) == message
            continue
        assert cipher.seal(message, RecordedIv(h(record["sk_iv"]))) == frame.data
        checked += 1
    assert checked > 0 or scenario.startswith("02")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_flipped_bit_fails_the_integrity_check(scenario: str) -> None:
    keys = load(scenario, "keys.json")
    derived = derived_ike_keys(keys)
    record, frame, _ = opened_messages(scenario)[0]
    suite, ike_keys = derived[record["ike_sa"]]
    cipher = sk_cipher(suite, ike_keys, "I" in record["flags"])
    for position in (12, 40, len(frame.data) - 20, len(frame.data) - 1):
        damaged = bytearray(frame.data)
        damaged[position] ^= 0x01
        with pytest.raises(IntegrityCheckFailed):
            cipher.open(bytes(damaged))
    # The other direction's keys do not open it either.
    with pytest.raises(IntegrityCheckFailed):
        sk_cipher(suite, ike_keys, "I" not in record["flags"]).open(frame.data)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ike_sa_init_matches_keys_json_and_round_trips(scenario: str) -> None:
    keys = load(scenario, "keys.json")
    sa = keys["ike_sas"][0]
    request_frame, response_frame = ike_sa_init(scenario)
    for frame, ke_hex, nonce_hex in (
        (request_frame, sa["KEi"], sa["Ni"]),
        (response_frame, sa["KEr"], sa["Nr"]),
    ):
        message = decode_message(frame.data)
        ke = message.get(KeyExchange)
        nonce = message.get(Nonce)
        assert ke is not None and nonce is not None
        assert ke.group == sa["ke_group"]
        assert ke.data.hex() == ke_hex
        assert nonce.data.hex() == nonce_hex
        assert encode_message(message) == frame.data
    response = decode_message(response_frame.data)
    assert response.spi_r.hex() == sa["spi_r"]
    chosen = response.get(SecurityAssociation)
    assert chosen is not None
    assert ike_suite(chosen.proposals[0]) == suite_of(sa["proposal"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_auth_signed_octets_and_psk_auth(scenario: str) -> None:
    # RFC 7296 §2.15: octets = RealMessage | peer NonceData | prf(SK_px, IDx').
    keys = load(scenario, "keys.json")
    suite, ike_keys = derived_ike_keys(keys)[0]
    sa = keys["ike_sas"][0]
    request_frame, response_frame = ike_sa_init(scenario)
    opened = opened_messages(scenario)
    auth_request = next(m for r, _, m in opened if r["exchange"] == "IKE_AUTH" and not m.response)
    auth_response = next(m for r, _, m in opened if r["exchange"] == "IKE_AUTH" and m.response)
    idi, idr = auth_request.get(IdI), auth_response.get(IdR)
    assert idi is not None and idr is not None
    auth_i, auth_r = auth_request.get(Authentication), auth_response.get(Authentication)
    assert auth_i is not None and auth_r is not None
    octets_i = signed_octets(
        request_frame.data, h(sa["Nr"]), suite.prf, ike_keys.sk_pi, idi.id_prime
    )
    octets_r = signed_octets(
        response_frame.data, h(sa["Ni"]), suite.prf, ike_keys.sk_pr, idr.id_prime
    )
    logged = sa["auth"]
    assert idi.id_prime.hex() == logged["initiator"]["id_prime"]
    assert idr.id_prime.hex() == logged["responder"]["id_prime"]
    assert octets_i.hex() == logged["initiator"]["signed_octets"]
    assert octets_r.hex() == logged["responder"]["signed_octets"]

    if "psk_hex" not in keys["authentication"]:
        # 04: ECDSA P-384 with SHA-384 in an RFC 7427 AUTH (method 14).
        assert auth_i.method == auth_r.method == AuthMethod.DIGITAL_SIGNATURE
        for message, auth, octets, pem in (
            (auth_request, auth_i, octets_i, "gwa.example.net.pem"),
            (auth_response, auth_r, octets_r, "gwb.example.net.pem"),
        ):
            cert_payload = message.get(Certificate)
            assert cert_payload is not None
            cert = x509.load_der_x509_certificate(cert_payload.data)
            file_cert = x509.load_pem_x509_certificate(
                (VECTORS / scenario / "certs" / pem).read_bytes()
            )
            assert cert == file_cert
            scheme = verify_signature_auth(cert.public_key(), octets, auth.data)
            assert scheme.name == "ecdsa-with-sha384"
            with pytest.raises(AuthenticationFailed):
                verify_signature_auth(cert.public_key(), octets + b"x", auth.data)
        return

    psk = h(keys["authentication"]["psk_hex"])
    assert auth_i.method == auth_r.method == AuthMethod.SHARED_KEY_MIC
    assert psk_auth(suite.prf, psk, octets_i).hex() == logged["initiator"]["auth_data"]
    assert psk_auth(suite.prf, psk, octets_r).hex() == logged["responder"]["auth_data"]
    assert auth_i.data.hex() == logged["initiator"]["auth_data"]
    assert auth_r.data.hex() == logged["responder"]["auth_data"]
    verify_psk_auth(suite.prf, psk, octets_i, auth_i.data)
    with pytest.raises(AuthenticationFailed):
        verify_psk_auth(suite.prf, psk + b"!", octets_i, auth_i.data)


def test_rekey_exchanges_carry_the_recorded_nonces_spis_and_ke() -> None:
    # 02: CHILD rekey with PFS (frames 19/20) and IKE rekey (29/30), RFC 7296 §1.3.
    scenario = next(s for s in SCENARIOS if s.startswith("02"))
    keys = load(scenario, "keys.json")
    by_frame = {r["frame"]: m for r, _, m in opened_messages(scenario)}
    child = keys["child_sas"][1]
    new_ike = keys["ike_sas"][1]
    for frame_no, nonce_key, ke_key, child_spi, ike_spi in (
        (19, "Ni", "KEi", "spi_i", "spi_i"),
        (20, "Nr", "KEr", "spi_r", "spi_r"),
    ):
        message = by_frame[frame_no]
        nonce, ke, sa = (
            message.get(Nonce),
            message.get(KeyExchange),
            message.get(SecurityAssociation),
        )
        assert nonce is not None and ke is not None and sa is not None
        assert nonce.data.hex() == child[nonce_key]
        assert ke.data.hex() == child[ke_key]
        assert sa.proposals[0].spi.hex() == child[child_spi]
        ike_message = by_frame[frame_no + 10]
        nonce, ke, sa = (
            ike_message.get(Nonce),
            ike_message.get(KeyExchange),
            ike_message.get(SecurityAssociation),
        )
        assert nonce is not None and ke is not None and sa is not None
        assert nonce.data.hex() == new_ike[nonce_key]
        assert ke.data.hex() == new_ike[ke_key]
        assert sa.proposals[0].spi.hex() == new_ike[ike_spi]
        assert ike_suite(sa.proposals[0]) == suite_of(new_ike["proposal"])
    rekey = by_frame[19].notify(NotifyType.REKEY_SA)
    assert rekey is not None and rekey.protocol == ProtocolId.ESP
    assert rekey.spi.hex() == keys["child_sas"][0]["spi_i"]
    delete = by_frame[21].get(Delete)
    assert delete is not None and delete.protocol == ProtocolId.ESP
    assert delete.spis == (h(keys["child_sas"][0]["spi_i"]),)
    ike_delete = by_frame[33].get(Delete)
    assert ike_delete == Delete(ProtocolId.IKE)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_captured_message_satisfies_the_payload_rules(scenario: str) -> None:
    # The declarative table (ikev2.codec.rules) must accept everything a real
    # strongSwan sends, including MOBIKE INFORMATIONALs and both rekeys.
    opened = {r["frame"]: m for r, _, m in opened_messages(scenario)}
    checked = 0
    for number, frame in ike_frames(scenario).items():
        message = opened.get(number) or decode_message(frame.data)
        check_payloads(message.exchange_type, message.response, message.payloads)
        checked += 1
    assert checked == len(ike_frames(scenario)) > 0
