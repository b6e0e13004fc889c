"""Validation of proposal strings in strongSwan syntax ("aes256gcm16-prfsha384-x25519").

The algorithm names come from the implementations themselves (the IKE crypto
registry and the ESP engine's suites), so a name is accepted exactly when lockgate
can run it. Each function returns the reason a proposal is unusable, or None.

Rules (RFC 7296 §3.3, as strongSwan spells proposals): an IKE proposal has at least
one encryption, a key exchange group, and a PRF; with a CBC cipher an integrity
algorithm is required (a PRF may then be implied from it, as strongSwan does), with an
AEAD (GCM, ChaCha20-Poly1305) none is allowed (RFC 5282 §8). An ESP proposal names an
ESP suite, optionally followed by key exchange groups for PFS and "esn"/"noesn".
"""

from __future__ import annotations

from esp.suites import SUITES
from ikev2.crypto.algorithms import ENCRYPTIONS, INTEGRITIES, PRFS
from ikev2.crypto.dh import GROUPS

_IKE_ENCRYPTIONS = {e.name: e for e in ENCRYPTIONS.values()}
_PRFS = {p.name for p in PRFS.values()}
_INTEGRITIES = {i.name for i in INTEGRITIES.values()}
_GROUPS = {g.name for g in GROUPS.values()}
_ESN = {"esn", "noesn"}


def ike_proposal_problem(text: str) -> str | None:
    """Why `text` is not a usable IKE proposal, or None if it is."""
    tokens = _tokens(text)
    if isinstance(tokens, str):
        return tokens
    aead = cbc = 0
    prf = integ = group = 0
    for token in tokens:
        if token in _IKE_ENCRYPTIONS:
            if _IKE_ENCRYPTIONS[token].aead:
                aead += 1
            else:
                cbc += 1
        elif token in _PRFS:
            prf += 1
        elif token in _INTEGRITIES:
            integ += 1
        elif token in _GROUPS:
            group += 1
        else:
            return f"unknown algorithm {token!r}"
    if not aead and not cbc:
        return f"{text!r} has no encryption algorithm (e.g. aes256gcm16)"
    if aead and cbc:
        return f"{text!r} mixes AEAD and non-AEAD ciphers; use separate proposals"
    if aead and integ:
        return f"{text!r}: an AEAD cipher takes no integrity algorithm (RFC 5282 §8)"
    if cbc and not integ:
        return f"{text!r}: a CBC cipher needs an integrity algorithm (e.g. sha256)"
    if aead and not prf:
        return f"{text!r} has no PRF (e.g. prfsha384)"
    if not group:
        return f"{text!r} has no key exchange group (e.g. x25519)"
    return None


def esp_proposal_problem(text: str) -> str | None:
    """Why `text` is not a usable ESP proposal, or None if it is."""
    tokens = _tokens(text)
    if isinstance(tokens, str):
        return tokens
    # The suite is the longest prefix naming one ("aes256-sha256" is two tokens).
    for split in range(len(tokens), 0, -1):
        if "-".join(tokens[:split]) in SUITES:
            rest = tokens[split:]
            break
    else:
        known = _IKE_ENCRYPTIONS.keys() | _INTEGRITIES | _GROUPS | _ESN
        for token in tokens:
            if token not in known:
                return f"unknown algorithm {token!r}"
        head = tokens[0]
        if head in _IKE_ENCRYPTIONS and not _IKE_ENCRYPTIONS[head].aead:
            if len(tokens) > 1 and tokens[1] in _INTEGRITIES:
                return f"unknown algorithm combination '{head}-{tokens[1]}' for ESP"
            return f"{text!r}: a CBC cipher needs an integrity algorithm (e.g. sha256)"
        return f"unknown algorithm {head!r}"
    esn = 0
    for token in rest:
        if token in _ESN:
            esn += 1
        elif token in SUITES or token in _IKE_ENCRYPTIONS:
            return f"{text!r}: one ESP cipher per proposal; use separate proposals"
        elif token not in _GROUPS:
            return f"unknown algorithm {token!r}"
    if esn > 1:
        return f"{text!r}: 'esn' or 'noesn' at most once"
    return None


def _tokens(text: str) -> list[str] | str:
    if not isinstance(text, str) or not text.strip():
        return "a proposal must be a non-empty string"
    tokens = text.strip().lower().split("-")
    if any(not t for t in tokens):
        return f"{text!r}: empty algorithm name (doubled or trailing '-')"
    return tokens
