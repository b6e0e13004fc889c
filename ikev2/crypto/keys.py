"""Key derivation of RFC 7296 §2.13-2.18: SKEYSEED, the SK_* keys, CHILD SA KEYMAT.

Naming: *i* and *r* are the initiator and responder of the exchange that created the
SA (IKE_SA_INIT, or the CREATE_CHILD_SA requester for a rekeyed IKE SA, §2.18).
The key objects never print their contents.
"""

from __future__ import annotations

from dataclasses import dataclass

from ikev2.crypto.algorithms import Encryption, Integrity, Prf
from ikev2.crypto.registry import ChildSuite, IkeSuite


def skeyseed(prf: Prf, ni: bytes, nr: bytes, g_ir: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14)."""
    return prf(ni + nr, g_ir)


def rekey_skeyseed(
    old_prf: Prf,
    old_sk_d: bytes,
    g_ir: bytes,
    ni: bytes,
    nr: bytes,
    additional: tuple[bytes, ...] = (),
) -> bytes:
    """SKEYSEED of a rekeyed IKE SA: prf(SK_d (old), g^ir (new) | Ni | Nr) (RFC 7296 §2.18).

    Computed with the *old* SA's PRF; Ni/Nr are the CREATE_CHILD_SA nonces. With
    additional key exchanges (IKE_FOLLOWUP_KE) their shared secrets follow the nonces:
    prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) (RFC 9370 §2.2.4).
    """
    return old_prf(old_sk_d, g_ir + ni + nr + b"".join(additional))


def additional_skeyseed(prf: Prf, sk_d: bytes, shared: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr) after additional key exchange n.

    RFC 9370 §2.2.2: the IKE SA's PRF, the IKE_SA_INIT nonces; every SK_* is then
    derived anew from it with :func:`derive_ike_keys` (same SPIs and nonces).
    """
    return prf(sk_d, shared + ni + nr)


@dataclass(frozen=True, slots=True, repr=False)
class IkeKeys:
    """SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi, SK_pr of one IKE SA (RFC 7296 §2.14).

    ``sk_ei``/``sk_ai`` protect messages sent by the SA's original initiator (I flag
    set), ``sk_er``/``sk_ar`` the other direction. For AEAD ciphers SK_ai/SK_ar are
    empty and SK_e* include the 4-octet salt at the end (RFC 5282 §7.1).
    """

    sk_d: bytes
    """Derives CHILD SA keys and the next IKE SA's SKEYSEED."""
    sk_ai: bytes
    """Integrity key, initiator to responder."""
    sk_ar: bytes
    """Integrity key, responder to initiator."""
    sk_ei: bytes
    """Encryption key (and salt), initiator to responder."""
    sk_er: bytes
    """Encryption key (and salt), responder to initiator."""
    sk_pi: bytes
    """Builds the initiator's AUTH payload (§2.15)."""
    sk_pr: bytes
    """Builds the responder's AUTH payload (§2.15)."""

    def __repr__(self) -> str:
        return "IkeKeys(<secret>)"

    def without_auth_keys(self) -> IkeKeys:
        """The same keys without SK_pi/SK_pr, which only the AUTH payloads use (§2.15):
        what an established IKE SA keeps."""
        return IkeKeys(self.sk_d, self.sk_ai, self.sk_ar, self.sk_ei, self.sk_er, b"", b"")


def derive_ike_keys(
    suite: IkeSuite, seed: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes
) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni|Nr|SPIi|SPIr).

    RFC 7296 §2.14; for a rekeyed IKE SA §2.18 uses the new SA's PRF here (strongSwan
    uses the old one; the two agree whenever the PRF is not changed by the rekey).
    """
    prf_len = suite.prf.output_len
    integ_len = suite.integrity.key_len if suite.integrity is not None else 0
    encr_len = suite.encryption.key_material_len
    sizes = (prf_len, integ_len, integ_len, encr_len, encr_len, prf_len, prf_len)
    stream = suite.prf.prf_plus(seed, ni + nr + spi_i + spi_r, sum(sizes))
    parts: list[bytes] = []
    offset = 0
    for size in sizes:
        parts.append(stream[offset : offset + size])
        offset += size
    return IkeKeys(*parts)


@dataclass(frozen=True, slots=True, repr=False)
class ChildKeys:
    """KEYMAT of a CHILD SA split per direction (RFC 7296 §2.17).

    ``*_i_to_r`` protect ESP from the CHILD SA's initiator to its responder (packets
    carrying the responder's SPI), ``*_r_to_i`` the reverse. AEAD keys include the salt
    at the end; AEAD integrity keys are empty.
    """

    encr_i_to_r: bytes
    """Encryption key (and salt), initiator to responder."""
    integ_i_to_r: bytes
    """Integrity key, initiator to responder."""
    encr_r_to_i: bytes
    """Encryption key (and salt), responder to initiator."""
    integ_r_to_i: bytes
    """Integrity key, responder to initiator."""

    def __repr__(self) -> str:
        return "ChildKeys(<secret>)"


def derive_child_keys(
    prf: Prf,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    encryption: Encryption,
    integrity: Integrity | None,
    g_ir: bytes | None = None,
    additional: tuple[bytes, ...] = (),
) -> ChildKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 §2.17).

    Taken in the order encryption i->r, integrity i->r, encryption r->i, integrity r->i.
    For the CHILD SA of IKE_AUTH, Ni/Nr are the IKE_SA_INIT nonces and there is no g^ir.
    The shared secrets of additional key exchanges (IKE_FOLLOWUP_KE) follow the nonces:
    prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n)) (RFC 9370 §2.2.4).
    """
    encr_len = encryption.key_material_len
    integ_len = integrity.key_len if integrity is not None else 0
    seed = (g_ir or b"") + ni + nr + b"".join(additional)
    stream = prf.prf_plus(sk_d, seed, 2 * (encr_len + integ_len))
    half = encr_len + integ_len
    return ChildKeys(
        encr_i_to_r=stream[:encr_len],
        integ_i_to_r=stream[encr_len:half],
        encr_r_to_i=stream[half : half + encr_len],
        integ_r_to_i=stream[half + encr_len :],
    )


def derive_child_keys_for(
    ike_suite: IkeSuite,
    sk_d: bytes,
    child: ChildSuite,
    ni: bytes,
    nr: bytes,
    g_ir: bytes | None = None,
    additional: tuple[bytes, ...] = (),
) -> ChildKeys:
    """:func:`derive_child_keys` with the PRF of the IKE SA and the CHILD SA's suite."""
    return derive_child_keys(
        ike_suite.prf, sk_d, ni, nr, child.encryption, child.integrity, g_ir, additional
    )
