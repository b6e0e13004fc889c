"""Interop matrix, failures: a wrong PSK, no common IKE or ESP proposal,
unacceptable traffic selectors and a certificate from an unknown CA, both directions.

Each must end cleanly: no SA left on either side, no traceback, and lockgate's log
(and, where the failure belongs to a connection, `lockgate status`) says why in words
an operator can act on.
"""

from __future__ import annotations

import os
import re

import pytest
from interop_helpers import WRONG_PSK, Case, Pair, attempt_and_fail, interop
from netns import namespace_exists

pytestmark = [pytest.mark.netns, pytest.mark.interop]

DIRECTIONS = pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])

# charon's selectors for net4 name a subnet lockgate does not have behind it.
ELSEWHERE = Pair("net4", ("198.51.100.128/25",), ("203.0.113.0/24",))


@DIRECTIONS
def test_wrong_psk(initiates: bool) -> None:
    with interop(Case(lockgate_initiates=initiates, swan_psk=WRONG_PSK)) as world:
        if initiates:
            reason = (
                "peer rejected our authentication (AUTHENTICATION_FAILED): "
                "check the PSK and identities on both sides"
            )
        else:
            reason = "peer 198.51.100.2 failed PSK authentication: its pre-shared key differs"
        log = attempt_and_fail(world, "net4", reason)
        assert reason in world.daemon.connection("net4")["last_error"]
        assert "IKE SA #1 failed" in log
        assert WRONG_PSK not in log and "NOT-SECRET" not in log  # no PSK in the log


@DIRECTIONS
def test_no_common_ike_proposal(initiates: bool) -> None:
    case = Case(lockgate_initiates=initiates, swan_ike="aes128-sha256-modp3072")
    with interop(case) as world:
        if initiates:
            reason = (
                "peer accepts none of our IKE proposals (aes256gcm16-prfsha384-x25519): "
                "NO_PROPOSAL_CHOSEN"
            )
        else:
            reason = (
                "peer proposed only aes128-sha256-modp3072; we accept aes256gcm16-prfsha384-x25519"
            )
        attempt_and_fail(world, "net4", reason)
        assert reason in world.daemon.connection("net4")["last_error"]


@DIRECTIONS
def test_no_common_esp_proposal(initiates: bool) -> None:
    with interop(Case(lockgate_initiates=initiates, swan_esp="aes256-sha256")) as world:
        if initiates:
            reason = "peer accepts none of our ESP proposals (aes128gcm16): NO_PROPOSAL_CHOSEN"
        else:
            reason = "peer proposed only aes256-sha256; we accept aes128gcm16"
        log = attempt_and_fail(world, "net4", reason, charon_ike_may_stay=not initiates)
        assert f"connection net4: CHILD SA failed: {reason}" in log
        assert reason in world.daemon.connection("net4")["last_error"]
        if initiates:
            # Without its CHILD SA our IKE SA has no use: lockgate deletes it.
            assert "deleted: its CHILD SA could not be established" in log


@DIRECTIONS
def test_unacceptable_traffic_selectors(initiates: bool) -> None:
    with interop(Case(lockgate_initiates=initiates, swan_pairs=(ELSEWHERE,))) as world:
        if initiates:
            reason = (
                "peer does not accept our traffic selectors 192.0.2.0/24 === 203.0.113.0/24: "
                "TS_UNACCEPTABLE"
            )
        else:
            reason = (
                "peer proposed traffic selectors 203.0.113.0/24 === 198.51.100.128/25, "
                "which match no CHILD SA of ours (net4)"
            )
        log = attempt_and_fail(world, "net4", reason, charon_ike_may_stay=not initiates)
        if initiates:
            assert f"connection net4: CHILD SA failed: {reason}" in log
        else:
            # No connection of ours matched: the peer is named, and status shows why.
            assert re.search(rf"peer swan \([0-9.]+\): CHILD SA refused: {re.escape(reason)}", log)
            assert "TS_UNACCEPTABLE" in world.charon.logs()
        assert reason in world.daemon.connection("net4")["last_error"]


@DIRECTIONS
def test_certificate_from_an_unknown_ca(initiates: bool) -> None:
    # Both sides use certificates; charon's comes from a CA lockgate was not given.
    case = Case(lockgate_initiates=initiates, auth="ecdsa-p256", swan_foreign_ca=True)
    with interop(case) as world:
        reason = (
            "certificate of gw-b.example.net is signed by an unknown CA "
            "'CN=some other CA,O=lockgate test,C=XX'"
        )
        log = attempt_and_fail(world, "net4", f"IKE SA #1 failed: {reason}")
        assert reason in world.daemon.connection("net4")["last_error"]
        assert "Traceback" not in log


def test_a_failing_case_leaves_nothing_behind() -> None:
    # Whatever breaks inside a case, its daemon, charon and namespaces are gone after.
    with pytest.raises(RuntimeError, match="the case broke"), interop(Case()) as world:
        world.bring_up()
        names = [ns.name for ns in world.topo.lab.namespaces]
        pids = [world.daemon.proc.pid, world.charon.pid()]
        raise RuntimeError("the case broke")
    assert not any(namespace_exists(name) for name in names)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
