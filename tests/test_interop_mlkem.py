"""Hybrid ML-KEM (RFC 9370) against the installed strongSwan.

strongSwan before 6.0 has no additional key exchanges: lockgate, offered or offering
the hybrid proposal first and a classical one second, falls back to the classical
one and says "quantum-safe: no"; a lockgate that demands ML-KEM refuses it with
NO_PROPOSAL_CHOSEN. From 6.0 on the hybrid exchange interoperates and says
"quantum-safe: yes". Each branch asserts its own outcome; none skips.
"""

from __future__ import annotations

import pytest
from interop_helpers import Case, attempt_and_fail, check_traffic, interop, rekey_child

from testkit.daemon import wait_until
from testkit.strongswan import installed_version

pytestmark = [pytest.mark.netns, pytest.mark.interop]

HYBRID = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
CLASSICAL = "aes256gcm16-prfsha384-x25519"
HYBRID_ESP = "aes256gcm16-x25519-ke1_mlkem768"
CLASSICAL_ESP = "aes256gcm16-x25519"
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


@pytest.mark.parametrize("by_lockgate", [True, False], ids=["lg-rekeys", "swan-rekeys"])
def test_child_pfs_with_ml_kem_or_the_classical_esp_proposal(by_lockgate: bool) -> None:
    """ESP proposals hybrid first, classical second: a CHILD SA rekey gets ML-KEM in
    IKE_FOLLOWUP_KE (RFC 9370 §2.2.4) from strongSwan 6, and classical PFS from 5.9."""
    case = Case(
        esp=CLASSICAL_ESP,
        lockgate_esp=(HYBRID_ESP, CLASSICAL_ESP),
        swan_esp=HYBRID_ESP if HAS_RFC9370 else CLASSICAL_ESP,
    )
    with interop(case) as world:
        world.bring_up()
        new = rekey_child(world, "net4", by_lockgate=by_lockgate)
        if HAS_RFC9370:
            assert (new["pfs"], new["quantum_safe"]) == ("x25519+mlkem768", True), new
        else:
            assert (new["pfs"], new["quantum_safe"]) == ("x25519", False), new
            assert "additional key exchange 1 (mlkem768)" not in world.daemon.log()
        check_traffic(world, size=1 << 20)


@pytest.mark.parametrize("by_lockgate", [True, False], ids=["lg-rekeys", "swan-rekeys"])
def test_ike_rekey_with_the_hybrid_offer(by_lockgate: bool) -> None:
    """IKE proposals hybrid first, classical second: an IKE rekey from either side runs
    ML-KEM in IKE_FOLLOWUP_KE with strongSwan 6 and stays classical with 5.9."""
    case = Case(
        ike=CLASSICAL,
        lockgate_ike=(HYBRID, CLASSICAL),
        swan_ike=HYBRID if HAS_RFC9370 else CLASSICAL,
    )
    with interop(case) as world:
        world.bring_up()
        first = _ike_sa(world)
        if by_lockgate:
            world.daemon.command("rekey", name="net4", ike=True)
        else:
            world.charon.swanctl("--rekey", "--ike", "s2s")

        def replaced() -> bool:
            sas = world.daemon.connection("net4")["ike_sas"]
            return len(sas) == 1 and sas[0]["id"] != first["id"]

        wait_until(replaced, "the IKE SA to be replaced")
        after = _ike_sa(world)
        assert after["rekeyed_from"] == first["id"], after
        expected = HYBRID if HAS_RFC9370 else CLASSICAL
        assert (after["suite"], after["quantum_safe"]) == (expected, HAS_RFC9370), after
        check_traffic(world, size=1 << 20)
