"""Proposals: strongSwan-style strings, SA payload proposals, and selection (RFC 7296 §2.7).

Proposal strings are dash-separated algorithm keywords as in strongSwan's
``swanctl.conf``: ``aes256gcm16-prfsha384-x25519`` or ``aes256-sha256-modp2048`` for
IKE, ``aes128gcm16``, ``aes256-sha256``, ``aes256gcm16-x25519`` (PFS group) or
``aes256-sha256-esn`` for ESP. Additional key exchanges (RFC 9370) take a ``ke1_`` ...
``ke7_`` prefix: ``aes256gcm16-prfsha384-x25519-ke1_mlkem768`` runs X25519 in
IKE_SA_INIT and ML-KEM-768 in one IKE_INTERMEDIATE exchange. Several keywords of one
kind in a string offer all of them, most preferred first. For IKE with a non-AEAD
cipher and no ``prf...`` keyword,
the PRF follows the integrity algorithm (``sha256`` -> ``prfsha256``), as in strongSwan.

Selection rule (documented, since §2.7 leaves it to the responder): **our configured
order wins**. We walk our proposals in our order and, for each, the peer's proposals
in the peer's order; the first pair that shares a transform of every type is chosen,
and within each type we take the transform *we* prefer. This is strongSwan's default
(``prefer_configured_proposals = yes``). The result keeps the peer's proposal number
and SPI, since the response must echo the number (§3.3.1).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

from ikev2.codec.payloads import Proposal, SecurityAssociation, Transform
from ikev2.constants import (
    ADDITIONAL_KE_TYPES,
    DhGroup,
    EncrId,
    EsnId,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)
from ikev2.crypto.algorithms import ENCRYPTIONS, INTEGRITIES, PRFS
from ikev2.crypto.dh import GROUPS, KE_METHODS, KEMS
from ikev2.errors import InvalidProposal, NoProposalChosen, UnknownAlgorithm

log = logging.getLogger(__name__)

# --- Keywords ----------------------------------------------------------------------------

_ENCR_WORDS: dict[str, Transform] = {}
for _enc in ENCRYPTIONS.values():
    _ENCR_WORDS[_enc.name] = Transform.make(
        TransformType.ENCR,
        _enc.transform_id,
        _enc.key_bits if _enc.has_key_length_attribute else None,
    )
    if _enc.transform_id == EncrId.AES_GCM_16:
        # strongSwan also spells the 16-octet ICV as 128 bits.
        _ENCR_WORDS[_enc.name.replace("gcm16", "gcm128")] = _ENCR_WORDS[_enc.name]
_INTEG_WORDS: dict[str, Transform] = {}
for _integ in INTEGRITIES.values():
    _INTEG_WORDS[_integ.name] = Transform.make(TransformType.INTEG, _integ.transform_id)
    _INTEG_WORDS[_integ.name.replace("sha", "sha2_")] = _INTEG_WORDS[_integ.name]
_PRF_WORDS: dict[str, Transform] = {
    prf.name: Transform.make(TransformType.PRF, prf.transform_id) for prf in PRFS.values()
}
_DH_WORDS: dict[str, Transform] = {
    g.name: Transform.make(TransformType.DH, g.group) for g in GROUPS.values()
}
_DH_WORDS["curve25519"] = _DH_WORDS["x25519"]
_DH_WORDS["curve448"] = _DH_WORDS["x448"]
# RFC 9370 §2.2: "ke<n>_<method>" is Additional Key Exchange n (transform type 5 + n);
# any method may run there, ML-KEM only there. "ke<n>_none" makes round n optional.
_ADDITIONAL_WORDS: dict[str, Transform] = {}
for _n, _type in enumerate(ADDITIONAL_KE_TYPES, start=1):
    for _method in KE_METHODS.values():
        _ADDITIONAL_WORDS[f"ke{_n}_{_method.name}"] = Transform.make(_type, _method.group)
    _ADDITIONAL_WORDS[f"ke{_n}_none"] = Transform.make(_type, DhGroup.NONE)
_KEM_NAMES = {"mlkem512", "mlkem768", "mlkem1024"}
_ESN_WORDS: dict[str, Transform] = {
    "esn": Transform.make(TransformType.ESN, EsnId.ESN),
    "noesn": Transform.make(TransformType.ESN, EsnId.NO_ESN),
}

# Names of algorithms we know but do not implement, for error messages and for
# describing what a peer proposed (e.g. "aes128-sha1-modp1024").
_LEGACY_NAMES: dict[tuple[int, int, int | None], str] = {
    (TransformType.ENCR, EncrId.THREE_DES, None): "3des",
    (TransformType.ENCR, EncrId.DES, None): "des",
    (TransformType.ENCR, EncrId.NULL, None): "null",
    (TransformType.ENCR, EncrId.AES_CTR, 128): "aes128ctr",
    (TransformType.ENCR, EncrId.AES_CTR, 256): "aes256ctr",
    (TransformType.ENCR, EncrId.AES_CCM_16, 128): "aes128ccm16",
    (TransformType.ENCR, EncrId.AES_CCM_16, 256): "aes256ccm16",
    (TransformType.ENCR, EncrId.AES_GCM_8, 128): "aes128gcm8",
    (TransformType.ENCR, EncrId.AES_GCM_12, 128): "aes128gcm12",
    (TransformType.ENCR, EncrId.AES_GCM_8, 256): "aes256gcm8",
    (TransformType.ENCR, EncrId.AES_GCM_12, 256): "aes256gcm12",
    (TransformType.INTEG, IntegId.HMAC_MD5_96, None): "md5",
    (TransformType.INTEG, IntegId.HMAC_SHA1_96, None): "sha1",
    (TransformType.INTEG, IntegId.AES_XCBC_96, None): "aesxcbc",
    (TransformType.INTEG, IntegId.AES_CMAC_96, None): "aescmac",
    (TransformType.PRF, PrfId.HMAC_MD5, None): "prfmd5",
    (TransformType.PRF, PrfId.HMAC_SHA1, None): "prfsha1",
    (TransformType.PRF, PrfId.AES128_XCBC, None): "prfaesxcbc",
    (TransformType.PRF, PrfId.AES128_CMAC, None): "prfaescmac",
    (TransformType.DH, DhGroup.MODP_768, None): "modp768",
    (TransformType.DH, DhGroup.MODP_1024, None): "modp1024",
    (TransformType.DH, DhGroup.MODP_1536, None): "modp1536",
    (TransformType.DH, DhGroup.MODP_6144, None): "modp6144",
    (TransformType.DH, DhGroup.MODP_8192, None): "modp8192",
    (TransformType.DH, DhGroup.ECP_192, None): "ecp192",
    (TransformType.DH, DhGroup.ECP_224, None): "ecp224",
    (TransformType.DH, DhGroup.BRAINPOOL_256, None): "ecp256bp",
    (TransformType.DH, DhGroup.BRAINPOOL_384, None): "ecp384bp",
}
_LEGACY_NAMES.update(
    {
        (TransformType.ENCR, EncrId.AES_CBC, bits): f"aes{bits}"
        for bits in (128, 192, 256)
        if (EncrId.AES_CBC, bits) not in ENCRYPTIONS
    }
)
for _n, _type in enumerate(ADDITIONAL_KE_TYPES, start=1):
    for _id, _word in ((DhGroup.ML_KEM_512, "mlkem512"), (DhGroup.ML_KEM_768, "mlkem768")):
        # Named in FIPS 203, missing from the installed ``cryptography``.
        if _id not in KEMS:
            _LEGACY_NAMES[(_type, _id, None)] = f"ke{_n}_{_word}"
_KNOWN_UNSUPPORTED = frozenset(_LEGACY_NAMES.values())

_NAMES: dict[tuple[int, int, int | None], str] = dict(_LEGACY_NAMES)
for _table in (_ENCR_WORDS, _INTEG_WORDS, _PRF_WORDS, _DH_WORDS, _ADDITIONAL_WORDS, _ESN_WORDS):
    for _word, _tr in reversed(list(_table.items())):  # the first spelling wins
        _NAMES[(_tr.transform_type, _tr.transform_id, _tr.key_length)] = _word


def transform_name(transform: Transform) -> str:
    """strongSwan keyword of a transform, or ``TYPE#id`` when we have no name for it."""
    name = _NAMES.get((transform.transform_type, transform.transform_id, transform.key_length))
    if name is not None:
        return name
    try:
        kind = TransformType(transform.transform_type).name.lower()
    except ValueError:
        kind = f"type{transform.transform_type}"
    suffix = f"_{transform.key_length}" if transform.key_length is not None else ""
    return f"{kind}{transform.transform_id}{suffix}"


# --- Parsing -----------------------------------------------------------------------------


def _parse(text: str, words: Sequence[dict[str, Transform]]) -> list[Transform]:
    transforms: list[Transform] = []
    tokens = text.strip().lower().split("-")
    if not text.strip() or "" in tokens:
        raise InvalidProposal(f"empty algorithm in proposal {text!r}")
    for token in tokens:
        for table in words:
            if token in table:
                if table[token] not in transforms:
                    transforms.append(table[token])
                break
        else:
            if token in _KEM_NAMES:
                raise InvalidProposal(
                    f"{token} runs as an additional key exchange: write ke1_{token} "
                    f"after a classical group in {text!r}"
                )
            raise UnknownAlgorithm(token, text, legacy=token in _KNOWN_UNSUPPORTED)
    return transforms


def _additional(
    transforms: Sequence[Transform], groups: Sequence[Transform], text: str
) -> list[Transform]:
    """The ke1_ ... ke7_ transforms in type order; they extend a classical exchange."""
    found = sorted(
        (t for t in transforms if t.transform_type in ADDITIONAL_KE_TYPES),
        key=lambda t: t.transform_type,
    )
    if found and not groups:
        raise InvalidProposal(
            f"proposal {text!r} has additional key exchanges but no key exchange group"
        )
    return found


def _of_type(transforms: Sequence[Transform], kind: TransformType) -> list[Transform]:
    return [t for t in transforms if t.transform_type == kind]


def _is_aead(transform: Transform) -> bool:
    enc = ENCRYPTIONS.get((transform.transform_id, transform.key_length))
    return enc is not None and enc.aead


def _check_aead_mix(encrs: Sequence[Transform], integs: Sequence[Transform], text: str) -> None:
    # RFC 7296 §3.3: AEAD and non-AEAD ciphers cannot share a proposal, since only
    # the latter take an integrity transform.
    aead = {_is_aead(t) for t in encrs}
    if len(aead) > 1:
        raise InvalidProposal(f"proposal {text!r} mixes AEAD and non-AEAD ciphers")
    if aead == {True} and integs:
        raise InvalidProposal(f"proposal {text!r} combines an AEAD cipher with integrity")
    if aead == {False} and not integs:
        raise InvalidProposal(f"proposal {text!r} needs an integrity algorithm")


@functools.lru_cache(maxsize=256)  # a Proposal is frozen: one parse per string
def parse_ike_proposal(text: str) -> Proposal:
    """Parse an IKE proposal string; raises :class:`UnknownAlgorithm` / :class:`InvalidProposal`."""
    transforms = _parse(text, (_ENCR_WORDS, _INTEG_WORDS, _PRF_WORDS, _DH_WORDS, _ADDITIONAL_WORDS))
    encrs = _of_type(transforms, TransformType.ENCR)
    integs = _of_type(transforms, TransformType.INTEG)
    prfs = _of_type(transforms, TransformType.PRF)
    groups = _of_type(transforms, TransformType.DH)
    if not encrs:
        raise InvalidProposal(f"IKE proposal {text!r} has no encryption algorithm")
    _check_aead_mix(encrs, integs, text)
    if not prfs:
        if not integs:
            raise InvalidProposal(f"IKE proposal {text!r} with an AEAD cipher needs a prf...")
        # strongSwan: the PRF follows the integrity algorithm's hash.
        prfs = [
            _PRF_WORDS["prf" + _NAMES[(t.transform_type, t.transform_id, None)]] for t in integs
        ]
    if not groups:
        raise InvalidProposal(f"IKE proposal {text!r} has no key exchange group")
    ordered = encrs + integs + prfs + groups + _additional(transforms, groups, text)
    return Proposal(1, ProtocolId.IKE, b"", tuple(ordered))


@functools.lru_cache(maxsize=256)  # a Proposal is frozen: one parse per string
def parse_esp_proposal(text: str) -> Proposal:
    """Parse an ESP proposal string (``aes256-sha256``, ``aes128gcm16-x25519``, ``...-esn``).

    A key exchange group makes the proposal require PFS in CREATE_CHILD_SA. Without
    ``esn``/``noesn`` only NO_ESN is offered (RFC 7296 §3.3.2 requires an ESN transform).
    """
    transforms = _parse(text, (_ENCR_WORDS, _INTEG_WORDS, _DH_WORDS, _ADDITIONAL_WORDS, _ESN_WORDS))
    encrs = _of_type(transforms, TransformType.ENCR)
    integs = _of_type(transforms, TransformType.INTEG)
    groups = _of_type(transforms, TransformType.DH)
    esns = _of_type(transforms, TransformType.ESN) or [_ESN_WORDS["noesn"]]
    if not encrs:
        raise InvalidProposal(f"ESP proposal {text!r} has no encryption algorithm")
    _check_aead_mix(encrs, integs, text)
    additional = _additional(transforms, groups, text)
    return Proposal(1, ProtocolId.ESP, b"", tuple(encrs + integs + groups + additional + esns))


def describe_proposal(proposal: Proposal) -> str:
    """A proposal in strongSwan syntax, for operators: ``aes128-sha1-modp1024``.

    The PRF is left out when it follows from the integrity algorithm (IKE), and
    ``noesn`` when it is the only ESN choice (ESP), as one would write them in a config.
    """
    names = [transform_name(t) for t in proposal.transforms]
    integ_names = {transform_name(t) for t in proposal.transforms_of(TransformType.INTEG)}
    prfs = proposal.transforms_of(TransformType.PRF)
    if (
        proposal.protocol == ProtocolId.IKE
        and len(prfs) == len(integ_names)
        and all(transform_name(p).removeprefix("prf") in integ_names for p in prfs)
    ):
        names = [n for n in names if not n.startswith("prf")]
    esns = proposal.transforms_of(TransformType.ESN)
    # Only the plain NO_ESN: one with an attribute the peer made up keeps its odd name.
    if len(esns) == 1 and transform_name(esns[0]) == "noesn":
        names.remove("noesn")
    return "-".join(names)


class LazyDescription:
    """``describe_proposal(proposal)``, computed only when a log record is formatted.

    Pass it as a logging argument: at the usual levels the debug and info lines of a
    setup are dropped, and describing a proposal on every setup costs measurable CPU.
    """

    __slots__ = ("_proposal",)

    def __init__(self, proposal: Proposal) -> None:
        self._proposal = proposal

    def __str__(self) -> str:
        return describe_proposal(self._proposal)


def sa_payload(proposals: Sequence[Proposal], spi: bytes = b"") -> SecurityAssociation:
    """An SA payload offering ``proposals`` numbered 1, 2, ... with our SPI in each."""
    return SecurityAssociation(
        # The constructor, not dataclasses.replace (several times slower): every setup
        # builds two SA payloads.
        tuple(Proposal(i, p.protocol, spi, p.transforms) for i, p in enumerate(proposals, start=1))
    )


def dh_group(proposal: Proposal) -> int:
    """The first key exchange group a proposal offers, or 0 (``DhGroup.NONE``) if it
    offers none (RFC 7296 §3.3.2, Transform Type 4)."""
    groups = proposal.transforms_of(TransformType.DH)
    return groups[0].transform_id if groups else 0


_DH = int(TransformType.DH)
_KE_TYPES = frozenset((_DH, *ADDITIONAL_KE_TYPES))


def without_key_exchange(proposal: Proposal) -> Proposal:
    """The proposal minus its key exchanges (DH and additional ones): the CHILD SA of
    IKE_AUTH has no KE (§1.2; RFC 9370 §2.2.3)."""
    transforms = tuple(t for t in proposal.transforms if t.transform_type not in _KE_TYPES)
    return Proposal(proposal.number, proposal.protocol, proposal.spi, transforms)


def additional_key_exchanges(proposal: Proposal) -> list[tuple[int, int]]:
    """(transform type, method) of each additional key exchange a selected proposal
    runs, in exchange order; rounds negotiated as NONE are skipped (RFC 9370 §2.2.1)."""
    return [
        (t.transform_type, t.transform_id)
        for t in proposal.transforms
        if t.transform_type in ADDITIONAL_KE_TYPES and t.transform_id != DhGroup.NONE
    ]


def has_additional_key_exchange(proposals: Sequence[Proposal]) -> bool:
    """Whether any of ``proposals`` asks for an additional key exchange (RFC 9370)."""
    return any(additional_key_exchanges(p) for p in proposals)


# --- Selection ---------------------------------------------------------------------------

_KNOWN_TYPES = frozenset(int(t) for t in TransformType)
# Transform types that may be absent from a proposal, and what their absence means
# (RFC 7296 §3.3.3: INTEG and DH are optional for ESP, INTEG with AEAD for IKE).
_OPTIONAL_NONE: dict[int, Transform] = {
    TransformType.INTEG: Transform(TransformType.INTEG, IntegId.NONE),
    TransformType.DH: Transform(TransformType.DH, DhGroup.NONE),
    TransformType.ESN: Transform(TransformType.ESN, EsnId.NO_ESN),
}
# RFC 9370 §2.2.1: an additional key exchange offered with NONE among its methods is
# optional, and a proposal without that transform type runs no such round. Absence
# therefore means NONE, so a proposal without type 6 matches strongSwan 6's
# `ke1_mlkem768-ke1_none` (which it also sends in every rekey), by NONE.
_ADDITIONAL_NONE: dict[int, Transform] = {
    kind: Transform(kind, DhGroup.NONE) for kind in ADDITIONAL_KE_TYPES
}
# Chosen transforms that are left out of the answer: "none" of an optional type. ESN
# is mandatory in an ESP proposal, so NO_ESN is always answered.
_OMITTED = frozenset(
    (
        _OPTIONAL_NONE[TransformType.INTEG],
        _OPTIONAL_NONE[TransformType.DH],
        *_ADDITIONAL_NONE.values(),
    )
)

# What an answer may leave out, having been offered it (for the types we offered).
_MAY_BE_ABSENT = frozenset((*_OPTIONAL_NONE.values(), *_ADDITIONAL_NONE.values()))


def _by_type(proposal: Proposal) -> dict[int, list[Transform]]:
    table: dict[int, list[Transform]] = {}
    for t in proposal.transforms:
        table.setdefault(t.transform_type, []).append(t)
    if proposal.protocol == ProtocolId.ESP:
        for kind, none in _OPTIONAL_NONE.items():
            table.setdefault(kind, [none])
    elif proposal.protocol == ProtocolId.IKE:
        table.setdefault(TransformType.INTEG, [_OPTIONAL_NONE[TransformType.INTEG]])
    for kind, none in _ADDITIONAL_NONE.items():
        table.setdefault(kind, [none])
    return table


def _match(ours: Proposal, theirs: Proposal) -> Proposal | None:
    """Our preferred transform of each type that ``theirs`` also offers, or ``None``."""
    if ours.protocol != theirs.protocol:
        return None
    mine, peer = _by_type(ours), _by_type(theirs)
    # RFC 7296 §3.3.6: a proposal with a transform type we do not know is rejected.
    if set(peer) - _KNOWN_TYPES or set(mine) != set(peer):
        return None
    chosen: list[Transform] = []
    for kind in mine:  # in the order of our proposal
        common = [t for t in mine[kind] if t in peer[kind]]
        if not common:
            return None
        if common[0] not in _OMITTED:
            chosen.append(common[0])
    return Proposal(theirs.number, theirs.protocol, theirs.spi, tuple(chosen))


def select_proposal(
    ours: Sequence[Proposal], theirs: Sequence[Proposal], *, ignore_key_exchange: bool = False
) -> Proposal:
    """Choose a proposal of the peer as responder (RFC 7296 §2.7), our order first.

    Returns one transform per type (the peer's proposal number and SPI kept; types
    that resolve to NONE are left out). ``ignore_key_exchange`` drops DH transforms
    from both sides, for the CHILD SA negotiated in IKE_AUTH (§1.2). Raises
    :class:`NoProposalChosen` with a sentence an operator can act on.
    """
    if ignore_key_exchange:
        ours = [without_key_exchange(p) for p in ours]
        theirs = [without_key_exchange(p) for p in theirs]
    for mine in ours:
        for peer in theirs:
            chosen = _match(mine, peer)
            if chosen is not None:
                log.debug("selected proposal %s", LazyDescription(chosen))
                return chosen
    raise NoProposalChosen(mismatch_description(ours, theirs))


def mismatch_description(ours: Sequence[Proposal], theirs: Sequence[Proposal]) -> str:
    """``peer proposed only aes128-sha1-modp1024; we accept aes256gcm16-prfsha384-x25519``."""
    peer = [describe_proposal(p) for p in theirs]
    mine = ", ".join(describe_proposal(p) for p in ours) or "nothing"
    if not peer:
        return f"peer proposed nothing; we accept {mine}"
    if len(peer) == 1:
        return f"peer proposed only {peer[0]}; we accept {mine}"
    return f"peer proposed {', '.join(peer)}; we accept {mine}"


def check_chosen_proposal(offered: Sequence[Proposal], chosen: SecurityAssociation) -> Proposal:
    """Validate the responder's SA payload against what we offered (initiator side).

    RFC 7296 §2.7: the response carries exactly one proposal with one transform of
    each type, taken from the offered proposal with the same number.
    """
    if len(chosen.proposals) != 1:
        raise NoProposalChosen(f"peer chose {len(chosen.proposals)} proposals instead of one")
    answer = chosen.proposals[0]
    types = [t.transform_type for t in answer.transforms]
    if len(types) != len(set(types)):
        raise NoProposalChosen("peer chose more than one transform of a type")
    numbered = {i: p for i, p in enumerate(offered, start=1)}
    candidate = numbered.get(answer.number)
    if candidate is None or candidate.protocol != answer.protocol:
        raise NoProposalChosen(f"peer chose proposal {answer.number}, which we did not offer")
    offered_types = _by_type(candidate)
    for t in answer.transforms:
        if t not in offered_types.get(t.transform_type, []):
            raise NoProposalChosen(
                f"peer chose {transform_name(t)}, which we did not offer in "
                f"{describe_proposal(candidate)}"
            )
    for kind, options in offered_types.items():
        if kind not in types and not any(o in _MAY_BE_ABSENT for o in options):
            raise NoProposalChosen(f"peer's choice lacks a {TransformType(kind).name} transform")
    return answer
