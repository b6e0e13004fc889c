"""Interop, post-quantum preshared keys (RFC 8784) against strongSwan's charon.

The PPK required on both sides, each side initiating: the tunnel carries traffic and
lockgate says the IKE SA uses the PPK (charon's `ppk_required` refuses it otherwise).
lockgate with an optional PPK whose id charon does not know (charon's connection has
no `ppk_id`; charon 5.9 refuses a PPK_ID other than the one it has configured, even
when not required): charon authenticates lockgate by its NO_PPK_AUTH and both
continue without a PPK. A PPK required on one side and absent on the other is
refused, with the reason in lockgate's log.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from interop_helpers import Case, attempt_and_fail, check_traffic, interop

from testkit.strongswan import SwanSecret

pytestmark = [pytest.mark.netns, pytest.mark.interop]

PPK_ID = "interop-ppk-2026"


def _ppk_file(tmp_path: Path) -> tuple[Path, str]:
    ppk = os.urandom(32).hex()
    path = tmp_path / "swan.ppk"
    path.write_text(ppk + "\n")
    path.chmod(0o600)
    return path, ppk


@pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
def test_a_required_ppk_both_ways_carries_traffic(tmp_path: Path, initiates: bool) -> None:
    path, ppk = _ppk_file(tmp_path)
    case = Case(
        lockgate_initiates=initiates,
        lockgate_peer={
            "ppk_id": json.dumps(PPK_ID),
            "ppk_file": json.dumps(str(path)),
            "ppk_required": "true",
        },
        swan_conn={"extra": {"ppk_id": PPK_ID, "ppk_required": "yes"}},
        swan_secrets=(SwanSecret("pq", [PPK_ID], "0x" + ppk, kind="ppk"),),
    )
    with interop(case) as world:
        world.bring_up()
        [ike] = world.daemon.connection("net4")["ike_sas"]
        assert ike["ppk_used"] is True
        check_traffic(world, size=1 << 20)
        log = world.daemon.log()
        assert "ppk: yes" in log
        assert ppk not in log


def test_an_optional_ppk_falls_back_to_no_ppk_auth(tmp_path: Path) -> None:
    # charon supports PPKs but holds only another one: it answers USE_PPK, does not
    # know lockgate's PPK id and, not requiring one, verifies lockgate's NO_PPK_AUTH.
    path, _ = _ppk_file(tmp_path)
    other = os.urandom(32).hex()
    case = Case(
        lockgate_initiates=True,
        lockgate_peer={"ppk_id": json.dumps(PPK_ID), "ppk_file": json.dumps(str(path))},
        swan_secrets=(SwanSecret("pq", ["another-id"], "0x" + other, kind="ppk"),),
    )
    with interop(case) as world:
        world.bring_up()
        [ike] = world.daemon.connection("net4")["ike_sas"]
        assert ike["ppk_used"] is False
        assert "ppk: no" in world.daemon.log()
        swan_log = world.charon.logs()
        assert re.search(r"generating IKE_SA_INIT response 0 \[[^]]*N\(USE_PPK\)", swan_log)
        assert re.search(r"parsed IKE_AUTH request 1 \[[^]]*N\(PPK_ID\) N\(NO_PPK\)", swan_log)
        check_traffic(world, size=1 << 20)


def test_lockgate_requiring_a_ppk_refuses_charon_without_one(tmp_path: Path) -> None:
    # charon has no PPK at all and initiates: its IKE_SA_INIT has no USE_PPK, and
    # lockgate refuses it in IKE_AUTH, once the connection (and its ppk_required) is
    # known, with AUTHENTICATION_FAILED.
    path, _ = _ppk_file(tmp_path)
    case = Case(
        lockgate_initiates=False,
        lockgate_peer={
            "ppk_id": json.dumps(PPK_ID),
            "ppk_file": json.dumps(str(path)),
            "ppk_required": "true",
        },
    )
    with interop(case) as world:
        attempt_and_fail(
            world,
            "net4",
            "did not use a post-quantum preshared key (no USE_PPK), and ppk_required is set",
        )
        assert "N(AUTH_FAILED)" in world.charon.logs()
