"""MS-CHAPv2 (RFC 2759) and its key material (RFC 3079), for EAP-MSCHAPv2 in IKEv2.

The server keeps the NT hash (MD4 of the UTF-16LE password, §8.3), never the password.
From it and the two challenges it checks the client's NT-Response (§8.1-8.5), answers
with the Authenticator Response that proves it knew the hash too (§8.7), and derives
the MSK that signs both sides' final AUTH payloads (RFC 7296 §2.16).

Single DES (§8.6) runs as `cryptography`'s TripleDES with three equal keys, which is
DES itself: EDE with K1 = K2 = K3 reduces to one encryption.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:  # cryptography >= 43 keeps the old ciphers apart
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - cryptography 42
    from cryptography.hazmat.primitives.ciphers.algorithms import (  # type: ignore[no-redef,unused-ignore]
        TripleDES,
    )

from ikev2.crypto.md4 import md4

CHALLENGE_LEN = 16
"""Authenticator and peer challenges (RFC 2759 §4)."""
NT_RESPONSE_LEN = 24
MSK_LEN = 64

# RFC 2759 §8.7 and RFC 3079 §3.4: the magic constants, as the RFCs spell them.
_AUTH_MAGIC1 = b"Magic server to client signing constant"
_AUTH_MAGIC2 = b"Pad to make it do more than one iteration"
_KEY_MAGIC1 = b"This is the MPPE Master Key"
_KEY_MAGIC2 = (
    b"On the client side, this is the send key; on the server side, it is the receive key."
)
_KEY_MAGIC3 = (
    b"On the client side, this is the receive key; on the server side, it is the send key."
)
_SHS_PAD1 = bytes(40)
_SHS_PAD2 = b"\xf2" * 40


def _sha1(data: bytes) -> bytes:
    # SHA-1 is what RFC 2759 §8 and RFC 3079 §3.4 fix; nothing to choose.
    return hashlib.sha1(data).digest()  # noqa: S324


def nt_password_hash(password: str) -> bytes:
    """MD4 of the password in UTF-16LE (RFC 2759 §8.3): what the users file keeps."""
    return md4(password.encode("utf-16-le"))


def hash_nt_password_hash(password_hash: bytes) -> bytes:
    """MD4 of the NT hash (RFC 2759 §8.4)."""
    return md4(password_hash)


def user_name_part(name: bytes) -> bytes:
    """The user name without a leading "DOMAIN\\" (RFC 2759 §8.2: Windows sends one)."""
    return name.rpartition(b"\\")[2]


def challenge_hash(peer_challenge: bytes, authenticator_challenge: bytes, user: bytes) -> bytes:
    """The 8 octets both sides encrypt (RFC 2759 §8.2); `user` without its domain."""
    return _sha1(peer_challenge + authenticator_challenge + user_name_part(user))[:8]


def _des_key(seven: bytes) -> bytes:
    """56 key bits spread over 8 octets, the low bit of each (parity) left 0 (§8.6):
    DES ignores it."""
    bits = int.from_bytes(seven, "big")
    return bytes(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def _des_encrypt(key7: bytes, block: bytes) -> bytes:
    key = _des_key(key7)
    # One 8-octet block: ECB is exactly DES of that block (RFC 2759 §8.6).
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(block) + encryptor.finalize()


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """The 24-octet response: the challenge under three DES keys cut from the
    zero-padded NT hash (RFC 2759 §8.5)."""
    z = password_hash.ljust(21, b"\x00")
    return b"".join(_des_encrypt(z[i : i + 7], challenge) for i in (0, 7, 14))


def generate_nt_response(
    authenticator_challenge: bytes, peer_challenge: bytes, user: bytes, password_hash: bytes
) -> bytes:
    """The client's NT-Response (RFC 2759 §8.1), from the NT hash."""
    return challenge_response(
        challenge_hash(peer_challenge, authenticator_challenge, user), password_hash
    )


def check_nt_response(
    authenticator_challenge: bytes,
    peer_challenge: bytes,
    user: bytes,
    password_hash: bytes,
    nt_response: bytes,
) -> bool:
    """Whether the client's NT-Response proves it knows `password_hash`."""
    expected = generate_nt_response(authenticator_challenge, peer_challenge, user, password_hash)
    return hmac.compare_digest(expected, nt_response)


def authenticator_response(
    password_hash: bytes,
    nt_response: bytes,
    peer_challenge: bytes,
    authenticator_challenge: bytes,
    user: bytes,
) -> bytes:
    """The server's "S=" plus 40 upper-case hex digits (RFC 2759 §8.7)."""
    digest = _sha1(hash_nt_password_hash(password_hash) + nt_response + _AUTH_MAGIC1)
    challenge = challenge_hash(peer_challenge, authenticator_challenge, user)
    final = _sha1(digest + challenge + _AUTH_MAGIC2)
    return b"S=" + final.hex().upper().encode()


def master_key(password_hash_hash: bytes, nt_response: bytes) -> bytes:
    """GetMasterKey (RFC 3079 §3.4): 16 octets."""
    return _sha1(password_hash_hash + nt_response + _KEY_MAGIC1)[:16]


def asymmetric_start_key(master: bytes, *, send: bool, server: bool) -> bytes:
    """GetAsymmetricStartKey (RFC 3079 §3.4) with a 16-octet session key."""
    magic = _KEY_MAGIC3 if send == server else _KEY_MAGIC2
    return _sha1(master + _SHS_PAD1 + magic + _SHS_PAD2)[:16]


def msk(password_hash: bytes, nt_response: bytes) -> bytes:
    """The 64-octet MSK of EAP-MSCHAPv2 that IKEv2 uses as AUTH's shared secret.

    The server's MasterReceiveKey, its MasterSendKey, then 32 zero octets: the layout
    strongSwan and Windows use (the key fields of RFC 3079 §3.4 with the padding of
    draft-kamath-pppext-eap-mschapv2), the same on both sides.
    """
    master = master_key(hash_nt_password_hash(password_hash), nt_response)
    receive = asymmetric_start_key(master, send=False, server=True)
    send = asymmetric_start_key(master, send=True, server=True)
    return receive + send + bytes(32)


__all__ = [
    "CHALLENGE_LEN",
    "MSK_LEN",
    "NT_RESPONSE_LEN",
    "asymmetric_start_key",
    "authenticator_response",
    "challenge_hash",
    "challenge_response",
    "check_nt_response",
    "generate_nt_response",
    "hash_nt_password_hash",
    "master_key",
    "msk",
    "nt_password_hash",
    "user_name_part",
]
