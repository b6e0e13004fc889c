"""`lockgate explain` against strongSwan: each way a tunnel fails, provoked for real,
must be named in the answer (the classification itself is unit-tested in
`test_daemon_diagnosis.py`).

Proposal, PSK, certificate and selector mismatches are provoked as in
`test_interop_failures.py`; here also a peer that deletes the SA (and a CHILD SA
that a start = "initiate" connection asks for again), a peer that does not answer, a
dead peer, and an answer for a tunnel that is up behind a NAT.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
from interop_helpers import WRONG_PSK, Case, Interop, Pair, attempt_and_fail, interop, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.interop]

DIRECTIONS = pytest.mark.parametrize("initiates", [True, False], ids=["lg-init", "swan-init"])
ELSEWHERE = Pair("net4", ("198.51.100.128/25",), ("203.0.113.0/24",))


def explain(world: Interop, name: str = "net4") -> dict[str, Any]:
    answer = world.daemon.command("explain", name=name)
    assert isinstance(answer, dict), answer
    return answer


def explained(world: Interop, kind: str) -> str:
    """Wait until explain names `kind`; its text."""
    wait_until(lambda: explain(world)["kind"] == kind, f"explain to say {kind}")
    answer = explain(world)
    assert answer["up"] is False
    text = str(answer["text"])
    assert text.startswith("connection net4 is not up: "), text
    return text


@DIRECTIONS
def test_explain_a_proposal_mismatch(initiates: bool) -> None:
    case = Case(lockgate_initiates=initiates, swan_ike="aes128-sha256-modp3072")
    with interop(case) as world:
        attempt_and_fail(world, "net4", "IKE SA #1 failed")
        text = explained(world, "proposal_mismatch")
        assert "we offer IKE: aes256gcm16-prfsha384-x25519" in text
        if initiates:
            assert "accepts none of our IKE proposals" in text
        else:
            assert "the peer offers IKE: aes128-sha256-modp3072" in text
            assert "closest pair: ours aes256gcm16-prfsha384-x25519 and theirs " in text


@DIRECTIONS
def test_explain_a_wrong_psk(initiates: bool) -> None:
    with interop(Case(lockgate_initiates=initiates, swan_psk=WRONG_PSK)) as world:
        attempt_and_fail(world, "net4", "IKE SA #1 failed")
        text = explained(world, "authentication")
        assert "wrong pre-shared key" in text
        assert WRONG_PSK not in text and "NOT-SECRET" not in text


@DIRECTIONS
def test_explain_a_certificate_from_an_unknown_ca(initiates: bool) -> None:
    case = Case(lockgate_initiates=initiates, auth="ecdsa-p256", swan_foreign_ca=True)
    with interop(case) as world:
        attempt_and_fail(world, "net4", "IKE SA #1 failed")
        text = explained(world, "certificate")
        assert "signed by an unknown CA" in text


@DIRECTIONS
def test_explain_a_traffic_selector_mismatch(initiates: bool) -> None:
    with interop(Case(lockgate_initiates=initiates, swan_pairs=(ELSEWHERE,))) as world:
        attempt_and_fail(world, "net4", "CHILD SA", charon_ike_may_stay=not initiates)
        text = explained(world, "ts_mismatch")
        assert "ours: local 192.0.2.0/24, remote 203.0.113.0/24" in text
        if not initiates:
            assert "the peer's: its side 203.0.113.0/24, our side 198.51.100.128/25" in text


def test_explain_a_peer_that_deleted_the_sa() -> None:
    with interop(Case()) as world:
        world.bring_up()
        assert explain(world)["up"] is True
        assert world.charon.terminate(ike="s2s")
        text = explained(world, "peer_deleted")
        assert "deleted the IKE SA" in text


def test_explain_a_peer_that_deleted_the_child_sa() -> None:
    # start = "wait": the connection stays down until the peer brings it up again.
    with interop(Case(lockgate_initiates=False)) as world:
        world.bring_up()
        assert world.charon.terminate(child="net4")
        text = explained(world, "peer_deleted")
        assert "peer swan deleted CHILD SA #" in text


def test_an_initiate_connection_asks_again_for_the_child_sa_the_peer_deleted() -> None:
    with interop(Case()) as world:
        before = world.bring_up()
        (first,) = [c for c in before.children if c.name == "net4"]
        assert world.charon.terminate(child="net4")
        # Under the same IKE SA, a new CHILD SA (new SPIs) that lockgate asked for.
        wait_until(
            lambda: any(
                c.name == "net4" and c.state == "INSTALLED" and c.spi_in != first.spi_in
                for ike in world.charon.list_sas()
                if ike.raw.get("uniqueid") == before.raw.get("uniqueid")
                for c in ike.children
            ),
            "lockgate to ask for a new CHILD SA",
        )
        assert 'start = "initiate": requesting a new one in 2 s' in world.daemon.log()
        answer = explain(world)
        assert answer["up"] is True and answer["kind"] == "peer_deleted", answer
        # explain still says what happened before.
        assert "earlier (" in answer["text"] and "peer swan deleted CHILD SA #" in answer["text"]


def test_explain_no_answer() -> None:
    case = Case(lockgate_gateway={"retransmit_timeout": '"1s"', "retransmit_tries": "1"})
    with interop(case) as world:
        world.charon.stop()
        world.start_lockgate()
        text = explained(world, "no_answer")
        assert "no answer from peer swan" in text and "IKE_SA_INIT" in text
        assert "is UDP 500 (and 4500) open between the gateways?" in text


def test_explain_a_dead_peer() -> None:
    case = Case(
        lockgate_extra={"dpd_interval": '"2s"'},
        lockgate_gateway={"retransmit_timeout": '"1s"', "retransmit_tries": "1"},
    )
    with interop(case) as world:
        world.bring_up()
        assert world.charon.process is not None
        world.charon.process.signal(signal.SIGKILL)  # no Delete: it just stops answering
        world.charon.process.popen.wait(5)
        text = explained(world, "dead_peer")
        assert "stopped answering" in text and "dpd_action" in text


def test_explain_a_tunnel_that_is_up_behind_a_nat() -> None:
    with interop(Case(nat=True)) as world:
        world.bring_up()
        answer = explain(world)
        assert answer["up"] is True and answer["kind"] is None
        text = str(answer["text"])
        assert text.startswith("connection net4 is up: CHILD SA #")
        assert "NAT seen in front of us" in text
