"""The one registry of crypto suites: transforms of a chosen proposal -> algorithms.

An :class:`IkeSuite` or :class:`ChildSuite` is what a *selected* proposal (exactly one
transform per type, RFC 7296 §2.7) means in terms of implemented algorithms. Anything
not implemented raises :class:`ikev2.errors.UnsupportedSuite`; proposal selection
(:mod:`ikev2.proposals`) never selects such a proposal.
"""

from __future__ import annotations

from dataclasses import dataclass

from ikev2.codec.payloads import Proposal, Transform
from ikev2.constants import ADDITIONAL_KE_TYPES, DhGroup, EsnId, IntegId, ProtocolId, TransformType
from ikev2.crypto.algorithms import ENCRYPTIONS, INTEGRITIES, PRFS, Encryption, Integrity, Prf
from ikev2.crypto.dh import GROUPS, KE_METHODS, KeGroup
from ikev2.errors import UnsupportedSuite


@dataclass(frozen=True, slots=True)
class IkeSuite:
    """The algorithms of an IKE SA."""

    encryption: Encryption
    """Encryption of SK payloads."""
    prf: Prf
    """PRF for SKEYSEED, prf+ and AUTH."""
    integrity: Integrity | None
    """Integrity of SK payloads; ``None`` with an AEAD cipher (RFC 5282 §8)."""
    ke_group: KeGroup
    """Key exchange group."""
    additional: tuple[KeGroup, ...] = ()
    """Methods of the additional key exchanges (RFC 9370), in exchange order."""

    @property
    def name(self) -> str:
        """strongSwan-style name, e.g. ``aes256gcm16-prfsha384-x25519-ke1_mlkem768``."""
        parts = [self.encryption.name]
        if self.integrity is not None:
            parts.append(self.integrity.name)
        parts += [self.prf.name, self.ke_group.name]
        parts += [f"ke{n}_{g.name}" for n, g in enumerate(self.additional, start=1)]
        return "-".join(parts)

    @property
    def quantum_safe(self) -> bool:
        """Whether a post-quantum key encapsulation (ML-KEM) went into the keys."""
        return any(g.kem for g in self.additional)


@dataclass(frozen=True, slots=True)
class ChildSuite:
    """The algorithms of an ESP CHILD SA."""

    encryption: Encryption
    """ESP encryption."""
    integrity: Integrity | None
    """ESP integrity; ``None`` with an AEAD cipher."""
    esn: bool
    """Extended Sequence Numbers."""
    ke_group: KeGroup | None = None
    """PFS group of a CREATE_CHILD_SA, ``None`` without PFS."""

    @property
    def name(self) -> str:
        """strongSwan-style name, e.g. ``aes256-sha256-modp2048-esn``."""
        parts = [self.encryption.name]
        if self.integrity is not None:
            parts.append(self.integrity.name)
        if self.ke_group is not None:
            parts.append(self.ke_group.name)
        if self.esn:
            parts.append("esn")
        return "-".join(parts)


def encryption_of(transform: Transform) -> Encryption:
    """The implemented encryption for an ENCR transform."""
    enc = ENCRYPTIONS.get((transform.transform_id, transform.key_length))
    if enc is None:
        raise UnsupportedSuite(
            f"encryption transform {transform.transform_id} "
            f"with key length {transform.key_length} is not implemented"
        )
    return enc


def integrity_of(transform: Transform) -> Integrity | None:
    """The implemented integrity for an INTEG transform (``None`` for INTEG NONE)."""
    if transform.transform_id == IntegId.NONE:
        return None
    integ = INTEGRITIES.get(transform.transform_id)
    if integ is None:
        raise UnsupportedSuite(f"integrity transform {transform.transform_id} is not implemented")
    return integ


def prf_of(transform: Transform) -> Prf:
    """The implemented PRF for a PRF transform."""
    prf = PRFS.get(transform.transform_id)
    if prf is None:
        raise UnsupportedSuite(f"PRF transform {transform.transform_id} is not implemented")
    return prf


def group_of(transform: Transform) -> KeGroup | None:
    """The implemented key exchange group for a DH transform (``None`` for group NONE)."""
    if transform.transform_id == 0:
        return None
    group = GROUPS.get(transform.transform_id)
    if group is None:
        raise UnsupportedSuite(f"key exchange group {transform.transform_id} is not implemented")
    return group


def _optional(proposal: Proposal, transform_type: TransformType) -> Transform | None:
    found = proposal.transforms_of(transform_type)
    if len(found) > 1:
        raise UnsupportedSuite(f"proposal has {len(found)} {transform_type.name} transforms")
    return found[0] if found else None


def _required(proposal: Proposal, transform_type: TransformType) -> Transform:
    found = _optional(proposal, transform_type)
    if found is None:
        raise UnsupportedSuite(f"proposal has no {transform_type.name} transform")
    return found


def _integrity(proposal: Proposal, encryption: Encryption) -> Integrity | None:
    transform = _optional(proposal, TransformType.INTEG)
    integrity = integrity_of(transform) if transform is not None else None
    if encryption.aead and integrity is not None:
        raise UnsupportedSuite("an AEAD cipher must not be combined with an integrity transform")
    if not encryption.aead and integrity is None:
        raise UnsupportedSuite(f"{encryption.name} needs an integrity transform")
    return integrity


def ike_suite(proposal: Proposal) -> IkeSuite:
    """The suite of a selected IKE proposal (one transform per type)."""
    if proposal.protocol != ProtocolId.IKE:
        raise UnsupportedSuite(f"protocol {proposal.protocol} is not IKE")
    encryption = encryption_of(_required(proposal, TransformType.ENCR))
    prf = _required(proposal, TransformType.PRF)
    group = group_of(_required(proposal, TransformType.DH))
    if group is None:
        raise UnsupportedSuite("an IKE proposal needs a key exchange group")
    return IkeSuite(
        encryption,
        prf_of(prf),
        _integrity(proposal, encryption),
        group,
        _additional_methods(proposal),
    )


def _additional_methods(proposal: Proposal) -> tuple[KeGroup, ...]:
    methods: list[KeGroup] = []
    for kind in ADDITIONAL_KE_TYPES:
        transform = _optional(proposal, TransformType(kind))
        if transform is None or transform.transform_id == DhGroup.NONE:
            continue
        method = KE_METHODS.get(transform.transform_id)
        if method is None:
            raise UnsupportedSuite(
                f"key exchange method {transform.transform_id} is not implemented"
            )
        methods.append(method)
    return tuple(methods)


def child_suite(proposal: Proposal) -> ChildSuite:
    """The suite of a selected ESP proposal (one transform per type)."""
    if proposal.protocol != ProtocolId.ESP:
        raise UnsupportedSuite(f"protocol {proposal.protocol} is not ESP")
    encryption = encryption_of(_required(proposal, TransformType.ENCR))
    esn = _optional(proposal, TransformType.ESN)
    dh = _optional(proposal, TransformType.DH)
    return ChildSuite(
        encryption=encryption,
        integrity=_integrity(proposal, encryption),
        esn=esn is not None and esn.transform_id == EsnId.ESN,
        ke_group=group_of(dh) if dh is not None else None,
    )
