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

import json
import os
import re
from pathlib import Path

import pytest
from interop_helpers import Case, attempt_and_fail, check_traffic, interop, rekey_child, wait_until

from testkit.strongswan import SwanSecret, installed_key_exchanges

pytestmark = [pytest.mark.netns, pytest.mark.interop]

HYBRID = "aes256gcm16-prfsha384-x25519-ke1_mlkem768"
CLASSICAL = "aes256gcm16-prfsha384-x25519"
HYBRID_ESP = "aes256gcm16-x25519-ke1_mlkem768"
CLASSICAL_ESP = "aes256gcm16-x25519"


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


@pytest.mark.parametrize("by_lockgate", [True, False], ids=["lg-rekeys", "swan-rekeys"])
def test_child_pfs_with_ml_kem_or_the_classical_esp_proposal(by_lockgate: bool) -> None:
    """ESP proposals hybrid first, classical second: a CHILD SA rekey gets ML-KEM in
    IKE_FOLLOWUP_KE (RFC 9370 §2.2.4) from strongSwan 6, and classical PFS from 5.9."""
    case = Case(
        esp=CLASSICAL_ESP,
        lockgate_esp=(HYBRID_ESP, CLASSICAL_ESP),
        swan_esp=HYBRID_ESP if _has_ml_kem() else CLASSICAL_ESP,
    )
    with interop(case) as world:
        world.bring_up()
        new = rekey_child(world, "net4", by_lockgate=by_lockgate)
        if _has_ml_kem():
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
        swan_ike=HYBRID if _has_ml_kem() else CLASSICAL,
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
        expected = HYBRID if _has_ml_kem() else CLASSICAL
        assert (after["suite"], after["quantum_safe"]) == (expected, _has_ml_kem()), after
        check_traffic(world, size=1 << 20)


# ML-KEM-1024's round (1568 octets of KE each way) is fragmented both ways (RFC 7383):
# alone, with an RSA chain in IKE_AUTH, or as the second of two rounds (RFC 9370 §2.2.1).
BIG_HYBRID = "aes256gcm16-prfsha512-ecp384-ke1_mlkem1024"
BIG_CLASSICAL = "aes256gcm16-prfsha512-ecp384"
TWO_ROUNDS = "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke2_mlkem1024"


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
@pytest.mark.parametrize(
    ("hybrid", "classical", "auth", "big_round"),
    [(BIG_HYBRID, BIG_CLASSICAL, "rsa2048", 1), (TWO_ROUNDS, CLASSICAL, "psk", 2)],
    ids=["mlkem1024-rsa-chain", "two-rounds"],
)
def test_bigger_hybrids(
    initiates: bool, hybrid: str, classical: str, auth: str, big_round: int
) -> None:
    has_ml_kem = _has_ml_kem()
    case = Case(
        lockgate_initiates=initiates,
        ike=classical,
        lockgate_ike=(hybrid, classical),
        swan_ike=hybrid if has_ml_kem else classical,
        auth=auth,
        chain=auth != "psk",
    )
    with interop(case) as world:
        world.bring_up()
        ike = _ike_sa(world)
        log = world.daemon.log()
        if has_ml_kem:
            assert ike["suite"] == hybrid and ike["quantum_safe"] is True, ike
            # The ML-KEM-1024 round (message ID = its round) went out in fragments and
            # came back in them.
            sent = rf"message ID {big_round} of \d+ octets sent as [2-9] fragments"
            assert re.search(sent, log)
            assert re.search(rf"reassembled message ID {big_round} from [2-9] fragments", log)
            if hybrid == TWO_ROUNDS:
                assert "additional key exchange 2 done" in log
        else:
            assert ike["suite"] == classical and ike["quantum_safe"] is False, ike
        check_traffic(world, size=1 << 20)


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
def test_hybrid_with_a_required_ppk(tmp_path: Path, initiates: bool) -> None:
    # RFC 8784 §3 on top of RFC 9370: the PPK goes into SK_d after the last round.
    has_ml_kem = _has_ml_kem()
    ppk = os.urandom(32).hex()
    path = tmp_path / "swan.ppk"
    path.write_text(ppk + "\n")
    path.chmod(0o600)
    case = Case(
        lockgate_initiates=initiates,
        ike=CLASSICAL,
        lockgate_ike=(HYBRID, CLASSICAL),
        swan_ike=HYBRID if has_ml_kem else CLASSICAL,
        lockgate_peer={
            "ppk_id": json.dumps("interop-ppk"),
            "ppk_file": json.dumps(str(path)),
            "ppk_required": "true",
        },
        swan_conn={"extra": {"ppk_id": "interop-ppk", "ppk_required": "yes"}},
        swan_secrets=(SwanSecret("pq", ["interop-ppk"], "0x" + ppk, kind="ppk"),),
    )
    with interop(case) as world:
        world.bring_up()
        ike = _ike_sa(world)
        assert ike["ppk_used"] is True and ike["quantum_safe"] is True, ike
        assert ike["suite"] == (HYBRID if has_ml_kem else CLASSICAL), ike
        check_traffic(world, size=1 << 20)
        assert ppk not in world.daemon.log()


# charon 6 rekeys an IKE SA with the proposal it was configured with; with `ke1_none`
# the ML-KEM round is optional in it (RFC 9370 §2.2.1), and the rekeys go through from
# either side and stay quantum-safe.
OPTIONAL_PQ = HYBRID + "-ke1_none"


@pytest.mark.parametrize("rekeyer", ["lockgate", "strongswan"])
def test_a_hybrid_ike_sa_rekeys_with_an_optional_round(rekeyer: str) -> None:
    has_ml_kem = _has_ml_kem()
    if rekeyer == "lockgate":
        case = Case(
            lockgate_initiates=True,
            ike=CLASSICAL,
            lockgate_ike=(HYBRID, CLASSICAL),
            swan_ike=OPTIONAL_PQ if has_ml_kem else CLASSICAL,
            lockgate_extra={"ike_lifetime": '"9s"', "rekey_margin": '"3s"'},
        )
    else:
        case = Case(
            lockgate_initiates=False,
            ike=CLASSICAL,
            lockgate_ike=(HYBRID, CLASSICAL),
            swan_ike=OPTIONAL_PQ if has_ml_kem else CLASSICAL,
            swan_conn={"rekey_time": "6s", "over_time": "10s", "extra": {"rand_time": "1s"}},
        )
    with interop(case) as world:
        world.bring_up()
        assert _ike_sa(world)["suite"] == (HYBRID if has_ml_kem else CLASSICAL)

        def rekeys() -> int:
            return len(re.findall(r"peer swan: IKE SA #\d+ rekeyed", world.daemon.log()))

        wait_until(lambda: rekeys() >= 2, "two IKE rekeys", timeout=60)
        log = world.daemon.log()
        started = ": rekeying the IKE SA" if rekeyer == "lockgate" else ": peer rekeys the IKE SA"
        assert log.count(started) >= 2
        assert "rekeying the IKE SA failed" not in log
        assert "refused CREATE_CHILD_SA" not in log
        wait_until(lambda: len(world.daemon.connection("net4")["ike_sas"]) == 1, "one IKE SA")
        ike = _ike_sa(world)
        assert ike["rekeyed_from"] is not None and ike["quantum_safe"] is has_ml_kem, ike
        check_traffic(world, size=1 << 20)
