"""Hybrid ML-KEM (RFC 9370) against the installed strongSwan.

strongSwan before 6.0 has no additional key exchanges: lockgate, offered or offering
the hybrid proposal first and a classical one second, falls back to the classical
one and says "quantum-safe: no"; a lockgate that demands ML-KEM refuses it with
NO_PROPOSAL_CHOSEN. From 6.0 on the hybrid exchange interoperates and says
"quantum-safe: yes". Each branch asserts its own outcome; none skips.
"""

from __future__ import annotations

import pytest
from interop_helpers import Case, attempt_and_fail, check_traffic, interop

from testkit.strongswan import installed_version

pytestmark = [pytest.mark.netns, pytest.mark.interop]

HYBRID = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
CLASSICAL = "aes256gcm16-prfsha384-x25519"
HAS_RFC9370 = installed_version() >= (6, 0)


def _ike_sa(world: object) -> dict[str, object]:
    [ike] = world.daemon.connection("net4")["ike_sas"]  # type: ignore[attr-defined]
    assert isinstance(ike, dict)
    return ike


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
def test_hybrid_offer_against_the_installed_strongswan(initiates: bool) -> None:
    case = Case(
        lockgate_initiates=initiates,
        ike=CLASSICAL,
        lockgate_ike=(HYBRID, CLASSICAL),
        swan_ike=HYBRID if HAS_RFC9370 else CLASSICAL,
    )
    with interop(case) as world:
        world.bring_up()
        ike = _ike_sa(world)
        log = world.daemon.log()
        if HAS_RFC9370:
            assert ike["suite"] == HYBRID and ike["quantum_safe"] is True, ike
            assert "quantum-safe: yes" in log
        else:
            # No transform type 6 in strongSwan 5.9: the classical proposal is chosen.
            assert ike["suite"] == CLASSICAL and ike["quantum_safe"] is False, ike
            assert "quantum-safe: no" in log
            assert "IKE_INTERMEDIATE" not in world.charon.logs()
        check_traffic(world, size=1 << 20)


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
def test_a_config_that_demands_ml_kem(initiates: bool) -> None:
    case = Case(
        lockgate_initiates=initiates,
        ike=CLASSICAL,
        lockgate_ike=(HYBRID,),
        swan_ike=HYBRID if HAS_RFC9370 else CLASSICAL,
    )
    with interop(case) as world:
        if HAS_RFC9370:
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
