"""`daemon.diagnosis`: each kind of failure the core reports, classified and put in
words an operator can act on (the interop tests provoke them with strongSwan)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from conf import loads_config
from conf.ike import ike_connections
from daemon.commands import handle_request
from daemon.diagnosis import (
    AUTHENTICATION,
    CERTIFICATE,
    DEAD_PEER,
    EXPIRED,
    NO_ANSWER,
    PEER_DELETED,
    PROPOSAL_MISMATCH,
    TS_MISMATCH,
    child_deleted,
    child_failure,
    closest_pair,
    ike_deleted,
    ike_failure,
    nat_text,
)
from daemon.gateway import Gateway
from ikev2.config import ConnectionConfig as PeerConfig
from ikev2.constants import NotifyType
from ikev2.events import (
    ChildSaDeleted,
    ChildSaFailed,
    DeleteCause,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from testkit.daemon import memory_gateway
from testkit.dataplane import events

CONFIG = """
[gateway]
addresses = ["198.51.100.1"]
id = "198.51.100.1"

[peers.main]
address = "198.51.100.2"
psk = "diagnosis-test-psk-NOT-SECRET-0123"

[connections.site]
peer = "main"
local_subnets = ["192.0.2.0/24"]
remote_subnets = ["203.0.113.0/24"]
ike_proposals = ["aes256gcm16-prfsha384-x25519"]
esp_proposals = ["aes256gcm16"]
"""


@pytest.fixture
def peer() -> PeerConfig:
    [ike] = ike_connections(loads_config(CONFIG))
    return ike


def failed(reason: str, notify: int | None = None) -> IkeSaFailed:
    return IkeSaFailed("main", 1, reason, notify, remote=("198.51.100.2", 500))


def test_a_responders_proposal_mismatch_names_both_offers_and_the_closest_pair(
    peer: PeerConfig,
) -> None:
    reason = (
        "peer proposed aes128-sha256-modp2048, aes128-sha1-modp1024; "
        "we accept aes256gcm16-prfsha384-x25519"
    )
    failure = ike_failure(failed(reason, NotifyType.NO_PROPOSAL_CHOSEN), peer)
    assert failure.kind == PROPOSAL_MISMATCH
    text = "\n".join(failure.details)
    assert "we offer IKE: aes256gcm16-prfsha384-x25519" in text
    assert "the peer offers IKE: aes128-sha256-modp2048, aes128-sha1-modp1024" in text
    assert (
        "closest pair: ours aes256gcm16-prfsha384-x25519 and theirs aes128-sha256-modp2048 "
        "(ours has aes256gcm16, prfsha384, x25519; theirs has aes128, sha256, modp2048)"
    ) in text


def test_an_initiators_proposal_mismatch_says_the_peers_offer_is_not_known(
    peer: PeerConfig,
) -> None:
    reason = (
        "peer accepts none of our IKE proposals (aes256gcm16-prfsha384-x25519): NO_PROPOSAL_CHOSEN"
    )
    failure = ike_failure(failed(reason, NotifyType.NO_PROPOSAL_CHOSEN), peer)
    assert failure.kind == PROPOSAL_MISMATCH
    assert "accepts none of our IKE proposals" in failure.summary
    assert "not known here" in "\n".join(failure.details)


def test_closest_pair_prefers_the_pair_sharing_most_algorithms() -> None:
    pair = closest_pair(["aes256gcm16", "aes128-sha256"], ["aes128-sha1", "3des-md5"])
    assert pair == ("aes128-sha256", "aes128-sha1", "ours has sha256; theirs has sha1")
    assert closest_pair(["aes256gcm16"], []) is None


def test_wrong_psk_on_either_side(peer: PeerConfig) -> None:
    ours = ike_failure(
        failed("peer's AUTH does not match the pre-shared key", NotifyType.AUTHENTICATION_FAILED),
        peer,
    )
    assert ours.kind == AUTHENTICATION and "wrong pre-shared key" in ours.summary
    theirs = ike_failure(
        failed(
            "peer rejected our authentication (AUTHENTICATION_FAILED): check the PSK and "
            "identities on both sides",
            NotifyType.AUTHENTICATION_FAILED,
        ),
        peer,
    )
    assert theirs.kind == AUTHENTICATION and "wrong pre-shared key" in theirs.summary
    methods = ike_failure(
        failed(
            "peer gw-b.example.net authenticates with DIGITAL_SIGNATURE (14); we expect "
            "SHARED_KEY_MIC (2), a pre-shared key",
            NotifyType.AUTHENTICATION_FAILED,
        ),
        peer,
    )
    assert methods.kind == AUTHENTICATION and "different authentication methods" in methods.summary


def test_a_ppk_failure_on_either_side_points_at_the_ppk(peer: PeerConfig) -> None:
    for reason in (
        "peer 198.51.100.2 did not use a post-quantum preshared key (no USE_PPK), and "
        "ppk_required is set",
        "peer rejected our authentication (AUTHENTICATION_FAILED): check the PSK, the "
        "post-quantum preshared key and identities on both sides",
    ):
        found = ike_failure(failed(reason, NotifyType.AUTHENTICATION_FAILED), peer)
        assert found.kind == AUTHENTICATION
        assert "post-quantum preshared key" in found.summary
        assert any("ppk_id" in line for line in found.details)


def test_a_certificate_failure_names_the_check(peer: PeerConfig) -> None:
    reason = (
        "certificate of gw-b.example.net is signed by an unknown CA "
        "'CN=some other CA,O=lockgate test,C=XX'"
    )
    failure = ike_failure(failed(reason, NotifyType.AUTHENTICATION_FAILED), peer)
    assert failure.kind == CERTIFICATE
    assert reason in failure.summary


def test_a_ts_mismatch_shows_both_sides_subnets(peer: PeerConfig) -> None:
    [child] = peer.children
    responder = child_failure(
        ChildSaFailed(
            "main",
            "?",
            1,
            "peer proposed traffic selectors 198.51.100.128/25 === 192.0.2.0/25, which "
            "match no CHILD SA of ours (site)",
            NotifyType.TS_UNACCEPTABLE,
        ),
        child,
    )
    assert responder.kind == TS_MISMATCH
    text = "\n".join(responder.details)
    assert "ours: local 192.0.2.0/24, remote 203.0.113.0/24" in text
    assert "the peer's: its side 198.51.100.128/25, our side 192.0.2.0/25" in text
    initiator = child_failure(
        ChildSaFailed("main", "site", 1, "peer does not accept our traffic selectors", 38),
        child,
    )
    assert initiator.kind == TS_MISMATCH and "not known here" in "\n".join(initiator.details)


def test_no_answer_asks_about_the_ports(peer: PeerConfig) -> None:
    init = ike_failure(failed("peer did not answer request 0 after 5 retransmissions"), peer)
    assert init.kind == NO_ANSWER and "IKE_SA_INIT" in init.summary
    assert "is UDP 500 (and 4500) open" in "\n".join(init.details)
    auth = ike_failure(failed("peer did not answer request 1 after 5 retransmissions"), peer)
    assert auth.kind == NO_ANSWER and "not IKE_AUTH" in auth.summary
    assert "UDP 4500" in "\n".join(auth.details)


def test_ends_of_established_sas(peer: PeerConfig) -> None:
    dead = ike_deleted(
        IkeSaDeleted("main", 1, "peer is dead: no answer", False, DeleteCause.DEAD_PEER), peer
    )
    assert dead is not None and dead.kind == DEAD_PEER and "dpd_action" in "\n".join(dead.details)
    gone = ike_deleted(
        IkeSaDeleted("main", 1, "deleted by peer", True, DeleteCause.PEER_DELETED), peer
    )
    assert gone is not None and gone.kind == PEER_DELETED
    old = ike_deleted(IkeSaDeleted("main", 1, "lifetime expired", False, DeleteCause.EXPIRED), peer)
    assert old is not None and old.kind == EXPIRED
    assert ike_deleted(IkeSaDeleted("main", 1, "operator", False, DeleteCause.LOCAL), peer) is None
    child = child_deleted(
        ChildSaDeleted("main", "site", 4, 1, 1, 2, "lifetime expired", DeleteCause.EXPIRED)
    )
    assert child is not None and child.kind == EXPIRED and "#4" in child.summary
    rekeyed = ChildSaDeleted("main", "site", 4, 1, 1, 2, "rekeyed", DeleteCause.REKEYED)
    assert child_deleted(rekeyed) is None


def test_nat_is_described_when_seen() -> None:
    event = IkeSaEstablished(
        "main", 1, True, 1, 2, ("192.0.2.1", 4500), ("198.51.100.2", 4500), "a", "b", "s",
        nat_local=True, nat_remote=False, udp_encap_reason="NAT in front of us",
    )  # fmt: skip
    assert nat_text(event).startswith("NAT seen in front of us: IKE moved to UDP 4500")
    assert nat_text(dataclasses.replace(event, nat_local=False)) == ""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    path = tmp_path / "gw.toml"
    path.write_text(CONFIG)
    with memory_gateway(path) as gw:
        yield gw


def explain(gateway: Gateway, name: str = "site") -> dict[str, object]:
    answer = asyncio.run(handle_request(gateway, {"command": "explain", "name": name}))
    assert isinstance(answer, dict)
    return answer


def test_explain_answers_from_the_last_failure_and_when_up(gateway: Gateway) -> None:
    gateway._handle_event(
        IkeSaFailed("main", 3, "peer's AUTH does not match the pre-shared key", 24)
    )
    down = explain(gateway)
    assert down["up"] is False and down["kind"] == AUTHENTICATION
    assert str(down["text"]).startswith("connection site is not up: wrong pre-shared key")
    gateway._handle_event(
        IkeSaEstablished(
            "main", 7, True, 1, 2, ("198.51.100.1", 500), ("198.51.100.2", 500), "a", "b", "s",
            nat_local=False, nat_remote=False,
        )
    )  # fmt: skip
    installed = dataclasses.replace(events("aes256gcm16", udp=False)[0], connection="main")
    gateway._handle_event(installed)
    up = explain(gateway)
    assert up["up"] is True
    text = str(up["text"])
    assert text.startswith("connection site is up: CHILD SA #1 192.0.2.0/24")
    assert "earlier" in text and "wrong pre-shared key" in text


def test_explain_refuses_an_unknown_connection(gateway: Gateway) -> None:
    from daemon.control import ControlError

    with pytest.raises(ControlError, match="no connection named 'nope'"):
        explain(gateway, "nope")
