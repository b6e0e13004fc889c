"""Post-quantum preshared keys (RFC 8784): the key mixing and the PPK_IDENTITY data.

A PPK does not change the IKE SA's protection keys: it is mixed into SK_d, SK_pi and
SK_pr after IKE_SA_INIT (§3), so the AUTH payloads prove both sides hold it and every
CHILD SA and rekeyed IKE SA inherits it through SK_d.
"""

from __future__ import annotations

from dataclasses import replace

from ikev2.crypto.algorithms import Prf
from ikev2.crypto.keys import IkeKeys

PPK_ID_OPAQUE = 1
"""PPK_ID type: an opaque octet string whose format the peers agreed on (§3)."""
PPK_ID_FIXED = 2
"""PPK_ID type: a fixed octet string mapped to a fixed PPK by configuration (§3);
the one we send, as strongSwan and Libreswan do."""


def mix_ppk(prf: Prf, ppk: bytes, keys: IkeKeys) -> IkeKeys:
    """SK_d' = prf+(PPK, SK_d), SK_pi' = prf+(PPK, SK_pi), SK_pr' = prf+(PPK, SK_pr),
    each as long as the key it replaces (RFC 8784 §3); the other keys stay."""
    return replace(
        keys,
        sk_d=prf.prf_plus(ppk, keys.sk_d, len(keys.sk_d)),
        sk_pi=prf.prf_plus(ppk, keys.sk_pi, len(keys.sk_pi)),
        sk_pr=prf.prf_plus(ppk, keys.sk_pr, len(keys.sk_pr)),
    )


def ppk_identity_data(ppk_id: bytes) -> bytes:
    """The PPK_IDENTITY notify's data: the PPK_ID type octet, then the PPK_ID (§3)."""
    return bytes([PPK_ID_FIXED]) + ppk_id


def parse_ppk_identity(data: bytes) -> bytes | None:
    """The PPK_ID of a PPK_IDENTITY notify, or None when it is empty or of a type we
    do not know (the responder then treats the PPK as unknown, §3)."""
    if len(data) < 2 or data[0] not in (PPK_ID_OPAQUE, PPK_ID_FIXED):
        return None
    return data[1:]
