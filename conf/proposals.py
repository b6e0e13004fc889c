"""Validation of proposal strings in strongSwan syntax ("aes256gcm16-prfsha384-x25519").

The IKE core's own parser (`ikev2.proposals`) decides what a proposal string means,
so the configuration accepts exactly what the negotiation will offer. ESP proposals
must in addition name only cipher/integrity pairs the ESP engine implements
(`esp.suites`): the IKE parser knows AES-192-CBC, for instance, the engine does not.
Each function returns the reason a proposal is unusable, or None.
"""

from __future__ import annotations

from esp.errors import UnknownSuite
from esp.suites import suite_from_transforms
from ikev2.codec.payloads import Proposal
from ikev2.constants import TransformType
from ikev2.errors import InvalidProposal, UnknownAlgorithm
from ikev2.proposals import parse_esp_proposal, parse_ike_proposal, transform_name


def _reason(exc: UnknownAlgorithm | InvalidProposal) -> str:
    if isinstance(exc, UnknownAlgorithm) and exc.proposal:
        # The key path already names the proposal: keep only which word is wrong.
        return str(exc).replace(f" in proposal {exc.proposal!r}", "")
    return str(exc)


def ike_proposal_problem(text: str) -> str | None:
    """Why `text` is not a usable IKE proposal, or None if it is."""
    try:
        parse_ike_proposal(text)
    except (UnknownAlgorithm, InvalidProposal) as exc:
        return _reason(exc)
    return None


def esp_proposal_problem(text: str) -> str | None:
    """Why `text` is not a usable ESP proposal, or None if it is."""
    try:
        proposal = parse_esp_proposal(text)
    except (UnknownAlgorithm, InvalidProposal) as exc:
        return _reason(exc)
    return _missing_esp_suite(proposal)


def _missing_esp_suite(proposal: Proposal) -> str | None:
    integs = proposal.transforms_of(TransformType.INTEG) or (None,)
    for encr in proposal.transforms_of(TransformType.ENCR):
        for integ in integs:
            try:
                suite_from_transforms(
                    encr.transform_id,
                    encr.key_length,
                    None if integ is None else integ.transform_id,
                )
            except UnknownSuite:
                name = transform_name(encr)
                if integ is not None:
                    name += "-" + transform_name(integ)
                return f"the ESP engine does not implement {name!r}"
    return None
