"""Proposal strings, SA payload conversion and proposal selection (RFC 7296 §2.7, §3.3)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev2.codec import Proposal, SecurityAssociation, Transform, TransformAttribute
from ikev2.constants import (
    DhGroup,
    EncrId,
    EsnId,
    IntegId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from ikev2.crypto import child_suite, ike_suite
from ikev2.errors import InvalidProposal, NoProposalChosen, UnknownAlgorithm
from ikev2.proposals import (
    check_chosen_proposal,
    describe_proposal,
    mismatch_description,
    parse_esp_proposal,
    parse_ike_proposal,
    sa_payload,
    select_proposal,
    without_key_exchange,
)

T = Transform.make


@pytest.mark.parametrize(
    ("text", "transforms"),
    [
        (
            "aes256gcm16-prfsha384-x25519",
            [T(1, EncrId.AES_GCM_16, 256), T(2, PrfId.HMAC_SHA2_384), T(4, DhGroup.CURVE25519)],
        ),
        (
            "aes256-sha256-modp2048",
            [
                T(1, EncrId.AES_CBC, 256),
                T(3, IntegId.HMAC_SHA2_256_128),
                T(2, PrfId.HMAC_SHA2_256),  # implied by sha256, as strongSwan does
                T(4, DhGroup.MODP_2048),
            ],
        ),
        (
            "chacha20poly1305-prfsha256-x448",
            [T(1, EncrId.CHACHA20_POLY1305), T(2, PrfId.HMAC_SHA2_256), T(4, DhGroup.CURVE448)],
        ),
        (
            "aes128gcm16-aes256gcm16-prfsha256-ecp256-ecp384-ecp521-modp3072-modp4096",
            [
                T(1, EncrId.AES_GCM_16, 128),
                T(1, EncrId.AES_GCM_16, 256),
                T(2, PrfId.HMAC_SHA2_256),
                T(4, DhGroup.ECP_256),
                T(4, DhGroup.ECP_384),
                T(4, DhGroup.ECP_521),
                T(4, DhGroup.MODP_3072),
                T(4, DhGroup.MODP_4096),
            ],
        ),
    ],
)
def test_ike_proposal_strings(text: str, transforms: list[Transform]) -> None:
    proposal = parse_ike_proposal(text)
    assert proposal.protocol == ProtocolId.IKE
    assert list(proposal.transforms) == transforms
    assert describe_proposal(proposal) == text


@pytest.mark.parametrize(
    ("text", "transforms"),
    [
        ("aes128gcm16", [T(1, EncrId.AES_GCM_16, 128), T(5, EsnId.NO_ESN)]),
        (
            "aes256-sha256",
            [T(1, EncrId.AES_CBC, 256), T(3, IntegId.HMAC_SHA2_256_128), T(5, EsnId.NO_ESN)],
        ),
        (
            "aes256gcm16-x25519",
            [T(1, EncrId.AES_GCM_16, 256), T(4, DhGroup.CURVE25519), T(5, EsnId.NO_ESN)],
        ),
        (
            "aes256-sha512-esn",
            [T(1, EncrId.AES_CBC, 256), T(3, IntegId.HMAC_SHA2_512_256), T(5, EsnId.ESN)],
        ),
        (
            "aes128-sha384-esn-noesn",
            [
                T(1, EncrId.AES_CBC, 128),
                T(3, IntegId.HMAC_SHA2_384_192),
                T(5, EsnId.ESN),
                T(5, EsnId.NO_ESN),
            ],
        ),
    ],
)
def test_esp_proposal_strings(text: str, transforms: list[Transform]) -> None:
    proposal = parse_esp_proposal(text)
    assert proposal.protocol == ProtocolId.ESP
    assert list(proposal.transforms) == transforms
    assert describe_proposal(proposal) == text


def test_aliases() -> None:
    assert parse_ike_proposal("aes128gcm128-prfsha256-curve25519") == parse_ike_proposal(
        "aes128gcm16-prfsha256-x25519"
    )
    assert parse_esp_proposal("AES256-SHA2_256") == parse_esp_proposal("aes256-sha256")
    assert parse_esp_proposal("aes256-sha256-noesn") == parse_esp_proposal("aes256-sha256")


@pytest.mark.parametrize(
    ("text", "algorithm", "words"),
    [
        ("aes999-sha256-x25519", "aes999", "unknown algorithm 'aes999'"),
        ("aes128-sha1-modp1024", "sha1", "unsupported algorithm 'sha1'"),
        ("aes256gcm16-prfsha384-modp1024", "modp1024", "known, not implemented"),
    ],
)
def test_unknown_algorithm_is_named(text: str, algorithm: str, words: str) -> None:
    with pytest.raises(UnknownAlgorithm) as info:
        parse_ike_proposal(text)
    assert info.value.algorithm == algorithm
    assert info.value.proposal == text
    assert words in str(info.value) and text in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "aes256--sha256-x25519",
        "aes256gcm16-sha256-prfsha256-x25519",  # AEAD with integrity
        "aes256-prfsha256-x25519",  # CBC without integrity
        "aes256gcm16-x25519",  # AEAD without PRF
        "aes256gcm16-prfsha256",  # no key exchange
        "prfsha256-x25519",  # no encryption
        "aes256gcm16-aes256-sha256-prfsha256-x25519",  # AEAD and CBC mixed
    ],
)
def test_incomplete_ike_proposals(text: str) -> None:
    with pytest.raises(InvalidProposal):
        parse_ike_proposal(text)


def test_esp_keywords_are_not_ike_keywords() -> None:
    with pytest.raises(UnknownAlgorithm):
        parse_ike_proposal("aes256gcm16-prfsha256-x25519-esn")
    with pytest.raises(UnknownAlgorithm):
        parse_esp_proposal("aes256gcm16-prfsha256")


def test_sa_payload_numbers_proposals_and_sets_spi() -> None:
    sa = sa_payload(
        [parse_esp_proposal("aes256gcm16"), parse_esp_proposal("aes256-sha256")], b"SPI!"
    )
    assert [p.number for p in sa.proposals] == [1, 2]
    assert all(p.spi == b"SPI!" for p in sa.proposals)


# --- Selection ---------------------------------------------------------------------------


def _numbered(*texts: str, esp: bool = False) -> list[Proposal]:
    parse = parse_esp_proposal if esp else parse_ike_proposal
    return list(sa_payload([parse(t) for t in texts], b"\x99" * (4 if esp else 0)).proposals)


def test_our_order_wins_and_peer_number_and_spi_are_kept() -> None:
    ours = [
        parse_ike_proposal("aes256gcm16-prfsha384-x25519"),
        parse_ike_proposal("aes256-sha256-modp2048"),
    ]
    theirs = _numbered("aes256-sha256-modp2048", "aes256gcm16-prfsha384-x25519")
    chosen = select_proposal(ours, theirs)
    assert chosen.number == 2
    assert ike_suite(chosen).name == "aes256gcm16-prfsha384-x25519"


def test_within_a_proposal_we_pick_our_preferred_transform() -> None:
    ours = [parse_ike_proposal("aes256gcm16-aes128gcm16-prfsha384-prfsha256-x25519-ecp256")]
    theirs = _numbered("aes128gcm16-aes256gcm16-prfsha256-prfsha384-ecp256-x25519")
    chosen = select_proposal(ours, theirs)
    assert describe_proposal(chosen) == "aes256gcm16-prfsha384-x25519"
    assert len(chosen.transforms) == 3  # one per type, no INTEG NONE


def test_mismatch_names_both_sides_for_operators() -> None:
    peer = Proposal(
        1,
        ProtocolId.IKE,
        b"",
        (
            T(1, EncrId.AES_CBC, 128),
            T(3, IntegId.HMAC_SHA1_96),
            T(2, PrfId.HMAC_SHA1),
            T(4, DhGroup.MODP_1024),
        ),
    )
    with pytest.raises(NoProposalChosen) as info:
        select_proposal([parse_ike_proposal("aes256gcm16-prfsha384-x25519")], [peer])
    assert str(info.value) == (
        "peer proposed only aes128-sha1-modp1024; we accept aes256gcm16-prfsha384-x25519"
    )
    assert info.value.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert mismatch_description([], [peer, peer]).startswith("peer proposed aes128-sha1-modp1024, ")


def test_esp_pfs_group_must_match_and_none_is_optional() -> None:
    ours_pfs = [parse_esp_proposal("aes256gcm16-x25519")]
    ours_no_pfs = [parse_esp_proposal("aes256gcm16")]
    peer_pfs = _numbered("aes256gcm16-x25519", esp=True)
    # The peer offers the group or NONE (a DH transform with id 0, RFC 7296 §3.3.3).
    peer_optional = [replace(peer_pfs[0], transforms=(*peer_pfs[0].transforms, T(4, DhGroup.NONE)))]
    chosen = select_proposal(ours_pfs, peer_pfs)
    assert child_suite(chosen).ke_group is not None
    assert child_suite(select_proposal(ours_no_pfs, peer_optional)).ke_group is None
    with pytest.raises(NoProposalChosen):
        select_proposal(ours_no_pfs, peer_pfs)
    with pytest.raises(NoProposalChosen):
        select_proposal(ours_pfs, _numbered("aes256gcm16", esp=True))
    # In IKE_AUTH the KE transforms are ignored on both sides (§1.2).
    chosen = select_proposal(ours_pfs, _numbered("aes256gcm16", esp=True), ignore_key_exchange=True)
    assert child_suite(chosen).name == "aes256gcm16"
    # NO_ESN is answered explicitly: ESN is a mandatory transform type for ESP.
    assert chosen.transforms[-1] == T(5, EsnId.NO_ESN)


def test_peer_proposals_with_unknown_types_or_attributes_are_skipped() -> None:
    ours = [parse_esp_proposal("aes256gcm16")]
    good = _numbered("aes256gcm16", esp=True)[0]
    unknown_type = replace(good, number=1, transforms=(*good.transforms, Transform(6, 1)))
    odd_attr = replace(
        good,
        number=2,
        transforms=(
            Transform(
                1, EncrId.AES_GCM_16, (TransformAttribute(14, 256), TransformAttribute(99, 1))
            ),
            T(5, EsnId.NO_ESN),
        ),
    )
    with pytest.raises(NoProposalChosen):
        select_proposal(ours, [unknown_type, odd_attr])
    assert select_proposal(ours, [unknown_type, odd_attr, replace(good, number=3)]).number == 3


def test_protocols_do_not_mix() -> None:
    with pytest.raises(NoProposalChosen):
        select_proposal(
            [parse_esp_proposal("aes256gcm16")],
            [parse_ike_proposal("aes256gcm16-prfsha256-x25519")],
        )


def test_without_key_exchange() -> None:
    p = parse_esp_proposal("aes256gcm16-x25519-ecp256")
    assert describe_proposal(without_key_exchange(p)) == "aes256gcm16"


# --- Initiator side: checking the responder's choice --------------------------------------


def test_check_chosen_proposal_accepts_a_proper_answer() -> None:
    offered = [
        parse_ike_proposal("aes128gcm16-prfsha256-x25519"),
        parse_ike_proposal("aes256-sha256-modp2048"),
    ]
    answer = Proposal(
        2, ProtocolId.IKE, b"", parse_ike_proposal("aes256-sha256-modp2048").transforms
    )
    assert check_chosen_proposal(offered, SecurityAssociation((answer,))) == answer


@pytest.mark.parametrize(
    ("proposals", "words"),
    [
        ((), "0 proposals"),
        (
            (
                Proposal(
                    3,
                    ProtocolId.IKE,
                    b"",
                    parse_ike_proposal("aes128gcm16-prfsha256-x25519").transforms,
                ),
            ),
            "which we did not offer",
        ),
        (
            (
                Proposal(
                    1,
                    ProtocolId.IKE,
                    b"",
                    parse_ike_proposal("aes256gcm16-prfsha256-x25519").transforms,
                ),
            ),
            "aes256gcm16, which we did not offer",
        ),
        (
            (
                Proposal(
                    1,
                    ProtocolId.IKE,
                    b"",
                    parse_ike_proposal("aes128gcm16-prfsha256-x25519-ecp256").transforms,
                ),
            ),
            "more than one transform",
        ),
        (
            (
                Proposal(
                    1,
                    ProtocolId.IKE,
                    b"",
                    parse_ike_proposal("aes128gcm16-prfsha256-x25519").transforms[:2],
                ),
            ),
            "lacks a DH transform",
        ),
    ],
)
def test_check_chosen_proposal_refuses_bad_answers(
    proposals: tuple[Proposal, ...], words: str
) -> None:
    offered = [parse_ike_proposal("aes128gcm16-prfsha256-x25519-ecp256")]
    with pytest.raises(NoProposalChosen, match=words):
        check_chosen_proposal(offered, SecurityAssociation(proposals))


# --- Properties -----------------------------------------------------------------------------

IKE_WORDS = {
    "encr": ["aes128gcm16", "aes256gcm16", "chacha20poly1305"],
    "prf": ["prfsha256", "prfsha384", "prfsha512"],
    "dh": ["x25519", "x448", "ecp256", "ecp384", "modp2048", "modp3072"],
}


def _ike_text(parts: dict[str, list[str]]) -> str:
    return "-".join(parts["encr"] + parts["prf"] + parts["dh"])


ike_texts = st.fixed_dictionaries(
    {
        k: st.lists(st.sampled_from(v), min_size=1, max_size=3, unique=True)
        for k, v in IKE_WORDS.items()
    }
).map(_ike_text)


@settings(max_examples=60, deadline=None)
@given(st.lists(ike_texts, min_size=1, max_size=3), st.lists(ike_texts, min_size=1, max_size=3))
def test_selection_is_a_common_single_transform_choice(
    ours_t: list[str], theirs_t: list[str]
) -> None:
    ours = [parse_ike_proposal(t) for t in ours_t]
    theirs = _numbered(*theirs_t)
    try:
        chosen = select_proposal(ours, theirs)
    except NoProposalChosen as exc:
        assert "we accept" in str(exc)
        # No pair shares a transform of every type.
        for mine in ours:
            for peer in theirs:
                common = {t.transform_type for t in mine.transforms if t in peer.transforms}
                assert common != {1, 2, 4}
        return
    peer = theirs[chosen.number - 1]
    assert ike_suite(chosen)  # exactly one implemented transform per type
    assert all(t in peer.transforms for t in chosen.transforms)
    assert any(all(t in mine.transforms for t in chosen.transforms) for mine in ours)
    # The responder's answer passes the initiator's check.
    assert check_chosen_proposal(theirs, SecurityAssociation((chosen,))) == chosen
    # Offering exactly our own list selects our first proposal.
    assert describe_proposal(select_proposal(ours, _numbered(*ours_t))) == describe_proposal(
        select_proposal(ours[:1], _numbered(ours_t[0]))
    )


def test_a_no_esn_with_a_made_up_key_length_is_described_not_crashed_on() -> None:
    # Found by the fuzz target: a peer's NO_ESN with a Key Length attribute has no
    # strongSwan name, and describing it raised ValueError from list.remove.
    odd = Transform.make(TransformType.ESN, EsnId.NO_ESN, 128)
    proposal = Proposal(1, ProtocolId.ESP, b"", (Transform.make(TransformType.ENCR, 20, 128), odd))
    assert describe_proposal(proposal) == "aes128gcm16-esn0_128"
    plain = replace(proposal, transforms=(proposal.transforms[0], Transform.make(5, EsnId.NO_ESN)))
    assert describe_proposal(plain) == "aes128gcm16"
