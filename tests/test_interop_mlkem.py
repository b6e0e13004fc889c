"""Hybrid ML-KEM (RFC 9370) against the installed strongSwan.

A charon without ML-KEM (5.9 has no additional key exchanges at all; Debian 13's
6.0.1 configures them but has no plugin that computes ML-KEM) is given the classical
proposal: lockgate, offered or offering the hybrid proposal first and a classical
one second, falls back to the classical one and says "quantum-safe: no"; a lockgate
that demands ML-KEM refuses it with NO_PROPOSAL_CHOSEN. A charon that computes
ML-KEM (6.0 with the `ml` plugin, 6.0.2 and later with OpenSSL 3.5) interoperates
in the hybrid exchange and lockgate says "quantum-safe: yes". Each branch asserts
its own outcome; none skips.
"""

from __future__ import annotations

import pytest
from interop_helpers import Case, attempt_and_fail, check_traffic, interop

from testkit.strongswan import installed_key_exchanges

pytestmark = [pytest.mark.netns, pytest.mark.interop]

HYBRID = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
CLASSICAL = "aes256gcm16-prfsha384-x25519"


def _has_ml_kem() -> bool:
    """Whether the installed charon computes ML-KEM-768 (asked once, of a charon)."""
    return "ML_KEM_768" in installed_key_exchanges()


def _ike_sa(world: object) -> dict[str, object]:
    [ike] = world.daemon.connection("net4")["ike_sas"]  # type: ignore[attr-defined]
    assert isinstance(ike, dict)
    return ike


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
def test_hybrid_offer_against_the_installed_strongswan(initiates: bool) -> None:
    has_ml_kem = _has_ml_kem()
    case = Case(
        lockgate_initiates=initiates,
        ike=CLASSICAL,
        lockgate_ike=(HYBRID, CLASSICAL),
        swan_ike=HYBRID if has_ml_kem else CLASSICAL,
    )
    with interop(case) as world:
        world.bring_up()
        ike = _ike_sa(world)
        log = world.daemon.log()
        if has_ml_kem:
            assert ike["suite"] == HYBRID and ike["quantum_safe"] is True, ike
            assert "quantum-safe: yes" in log
        else:
            # charon is given only the classical proposal, and it is chosen.
            assert ike["suite"] == CLASSICAL and ike["quantum_safe"] is False, ike
            assert "quantum-safe: no" in log
            assert "IKE_INTERMEDIATE" not in world.charon.logs()
        check_traffic(world, size=1 << 20)


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
def test_a_config_that_demands_ml_kem(initiates: bool) -> None:
    has_ml_kem = _has_ml_kem()
    case = Case(
        lockgate_initiates=initiates,
        ike=CLASSICAL,
        lockgate_ike=(HYBRID,),
        swan_ike=HYBRID if has_ml_kem else CLASSICAL,
    )
    with interop(case) as world:
        if has_ml_kem:
            world.bring_up()
            assert _ike_sa(world)["quantum_safe"] is True
            check_traffic(world, size=1 << 20)
            return
        if initiates:
            reason = f"peer accepts none of our IKE proposals ({HYBRID}): NO_PROPOSAL_CHOSEN"
        else:
            reason = f"peer proposed only {CLASSICAL}; we accept {HYBRID}"
        attempt_and_fail(world, "net4", reason)
        assert reason in world.daemon.connection("net4")["last_error"]
