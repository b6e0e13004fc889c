"""IKEv2 cryptography through ``cryptography``: suites, key exchange, key derivation,
AUTH values and SK payload protection. Sans-I/O; randomness is injected."""

from ikev2.crypto.algorithms import ENCRYPTIONS, INTEGRITIES, PRFS, Encryption, Integrity, Prf
from ikev2.crypto.auth import (
    KEY_PAD,
    psk_auth,
    sign_signature_auth,
    signed_octets,
    verify_psk_auth,
    verify_signature_auth,
)
from ikev2.crypto.dh import GROUPS, KeGroup, KeyExchange
from ikev2.crypto.keys import (
    ChildKeys,
    IkeKeys,
    derive_child_keys,
    derive_child_keys_for,
    derive_ike_keys,
    rekey_skeyseed,
    skeyseed,
)
from ikev2.crypto.registry import ChildSuite, IkeSuite, child_suite, ike_suite
from ikev2.crypto.rng import DeterministicRandom, RandomSource, SystemRandom
from ikev2.crypto.sk import SkCipher, SkCipherPair

__all__ = [
    "ENCRYPTIONS",
    "GROUPS",
    "INTEGRITIES",
    "KEY_PAD",
    "PRFS",
    "ChildKeys",
    "ChildSuite",
    "DeterministicRandom",
    "Encryption",
    "IkeKeys",
    "IkeSuite",
    "Integrity",
    "KeGroup",
    "KeyExchange",
    "Prf",
    "RandomSource",
    "SkCipher",
    "SkCipherPair",
    "SystemRandom",
    "child_suite",
    "derive_child_keys",
    "derive_child_keys_for",
    "derive_ike_keys",
    "ike_suite",
    "psk_auth",
    "rekey_skeyseed",
    "sign_signature_auth",
    "signed_octets",
    "skeyseed",
    "verify_psk_auth",
    "verify_signature_auth",
]
