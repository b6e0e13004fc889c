"""How two endpoints choose between raw ESP and ESP in UDP (RFC 7296 §2.23), across
every pair of `encap` modes, and what the choice must not open: an SA that follows a
replayed message from another address. In memory, no network."""

from __future__ import annotations

import pytest

from esp.udpencap import NON_ESP_MARKER
from ikev2.codec import VendorId, decode_header, decode_message
from ikev2.constants import ExchangeType
from ikev2.events import (
    ChildSaInstalled,
    IkeSaAddressChanged,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    NatKeepaliveDue,
)
from ikev2.tasks.ike_natd import LOCKGATE_UDP_VID
from testkit.ikev2_pair import A_ADDR, B_ADDR, Pair, Sent, connection, deliver, mirrored, on_wire

INIT = ExchangeType.IKE_SA_INIT
AUTH = ExchangeType.IKE_AUTH

# (a's encap, b's encap) -> ESP in UDP? With UDP both sides end on port 4500: §2.23
# forbids UDP-encapsulated ESP on port 500.
MODES = [
    ("auto", "auto", True),
    ("auto", "nat", False),
    ("nat", "auto", False),
    ("nat", "nat", False),
    ("force", "auto", True),
    ("auto", "force", True),
    ("force", "nat", True),
    ("nat", "force", True),
    ("force", "force", True),
]


def _vendor_ids(sent: Sent) -> list[bytes]:
    """The Vendor ID payloads of one IKE_SA_INIT message on the wire."""
    return [p.data for p in decode_message(sent.ike).payloads if isinstance(p, VendorId)]


def _blocked_4500_pair(encap: str = "auto") -> Pair:
    """A pair behind a firewall that drops UDP port 4500 both ways."""
    conn = connection(encap=encap)
    return Pair.make(
        conn, mirrored(conn), drop=lambda s: 4500 in (s.datagram.local[1], s.datagram.remote[1])
    )


def _up(a_mode: str, b_mode: str) -> tuple[Pair, ChildSaInstalled, ChildSaInstalled]:
    conn = connection(encap=a_mode)
    pair = Pair.make(conn, mirrored(conn, encap=b_mode))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (ia,) = pair.of("a", ChildSaInstalled)
    (ib,) = pair.of("b", ChildSaInstalled)
    return pair, ia, ib


@pytest.mark.parametrize(("a_mode", "b_mode", "udp"), MODES)
def test_both_sides_agree_on_the_framing_and_its_port(a_mode: str, b_mode: str, udp: bool) -> None:
    pair, ia, ib = _up(a_mode, b_mode)
    # Only an "auto" side announces the preference; one side alone changes nothing.
    (init_request,) = pair.requests("a", INIT)
    (init_response,) = pair.responses("b", INIT)
    assert _vendor_ids(init_request) == ([LOCKGATE_UDP_VID] if a_mode == "auto" else [])
    assert _vendor_ids(init_response) == ([LOCKGATE_UDP_VID] if b_mode == "auto" else [])
    assert ia.udp_encap is ib.udp_encap is udp
    port = 4500 if udp else 500
    assert (ia.local, ia.remote) == ((A_ADDR, port), (B_ADDR, port))
    assert (ib.local, ib.remote) == ((B_ADDR, port), (A_ADDR, port))
    # Every IKE message after IKE_SA_INIT went between those ports.
    later = [s for s in pair.wire if s.datagram.local[1] != 500 or s.datagram.remote[1] != 500]
    assert all(s.datagram.local[1] == s.datagram.remote[1] == port for s in later)
    # Nothing moved after the IKE SA was up.
    assert not pair.of("a", IkeSaAddressChanged) and not pair.of("b", IkeSaAddressChanged)


def test_two_lockgates_agree_on_esp_in_udp_by_vendor_id() -> None:
    pair, ia, ib = _up("auto", "auto")
    (init_request,) = pair.requests("a", INIT)
    (init_response,) = pair.responses("b", INIT)
    assert _vendor_ids(init_request) == _vendor_ids(init_response) == [LOCKGATE_UDP_VID]
    # No NAT anywhere, yet both sides chose ESP in UDP (§2.23) and IKE moved to 4500.
    for side in ("a", "b"):
        (est,) = pair.of(side, IkeSaEstablished)
        assert not est.nat_local and not est.nat_remote
    assert ia.udp_encap and ib.udp_encap
    assert ia.local == (A_ADDR, 4500) and ia.remote == (B_ADDR, 4500)
    assert ib.local == (B_ADDR, 4500) and ib.remote == (A_ADDR, 4500)
    (auth,) = pair.requests("a", AUTH)
    # From port 4500: a bare IKE message, which goes behind the non-ESP marker on the wire.
    assert auth.datagram.local == (A_ADDR, 4500)
    assert decode_header(auth.datagram.data).exchange_type == AUTH
    assert auth.payload == NON_ESP_MARKER + auth.datagram.data
    # Without a NAT there is no mapping to keep alive.
    pair.advance(60.0)
    assert not pair.of("a", NatKeepaliveDue) and not pair.of("b", NatKeepaliveDue)


def test_esp_in_udp_with_a_lockgate_survives_an_ike_rekey() -> None:
    pair, _, _ = _up("auto", "auto")
    (old,) = pair.a.ike_sas()
    pair.a.rekey_ike_sa(old.ike_sa_id, pair.clock)
    pair.pump()
    assert pair.of("a", IkeSaRekeyed) and pair.of("b", IkeSaRekeyed)
    # A CHILD SA created under the new IKE SA still travels in UDP on both sides.
    (child_a,) = pair.of("a", ChildSaInstalled)
    pair.a.rekey_child(child_a.unique_id, pair.clock)
    pair.pump()
    installed = pair.of("a", ChildSaInstalled) + pair.of("b", ChildSaInstalled)
    assert len(installed) == 4
    assert all(e.udp_encap for e in installed)
    assert all(sa.udp_encap for ep in (pair.a, pair.b) for sa in ep.ike_sas())


@pytest.mark.parametrize(
    ("a_mode", "b_mode", "reason_a"),
    [
        ("auto", "auto", 'the peer is a lockgate (encap = "auto")'),
        ("force", "auto", 'forced (encap = "force")'),
        ("auto", "force", "the peer is behind a NAT (or forces UDP)"),
        ("nat", "nat", ""),
    ],
)
def test_the_established_event_says_why_esp_is_in_udp(
    a_mode: str, b_mode: str, reason_a: str
) -> None:
    pair, _, _ = _up(a_mode, b_mode)
    (ea,) = pair.of("a", IkeSaEstablished)
    assert ea.udp_encap_reason == reason_a


# Not "force": it fakes a NAT in front of the initiator, and the side facing a NAT
# follows the latest authenticated message (§2.23), as it must for a moved mapping.
@pytest.mark.parametrize("mode", ["auto", "nat"])
def test_a_replayed_message_from_elsewhere_does_not_move_the_sa(mode: str) -> None:
    """Without a NAT an authenticated message from another address is not followed: an
    on-path observer who replays a copy of a's DPD request from its own address before
    the original must not redirect b's IKE SA and ESP to itself."""
    pair, _, ib = _up(mode, mode)
    (sa_a,) = pair.a.ike_sas()
    (sa_b,) = pair.b.ike_sas()
    before = (sa_b.local, sa_b.remote)
    sa_a.check_liveness(pair.clock)
    (request,) = pair.take("a")
    attacker = ("203.0.113.66", request.local[1])
    deliver(pair.b, on_wire(request), request.remote, attacker, pair.clock)
    deliver(pair.b, on_wire(request), request.remote, request.local, pair.clock)
    pair.pump()
    assert (sa_b.local, sa_b.remote) == before
    assert not pair.of("b", IkeSaAddressChanged)
    assert ib.remote == before[1]


def test_an_unanswered_ike_auth_on_4500_names_the_port_and_the_way_back() -> None:
    """Two lockgates move to port 4500; a firewall that drops it stops IKE_AUTH, and the
    failure says where and what to set."""
    pair = _blocked_4500_pair()
    pair.a.initiate("conn", 0.0)
    pair.pump()
    pair.advance(300.0)
    (failed,) = pair.of("a", IkeSaFailed)
    assert "UDP port 4500" in failed.reason and 'encap = "nat"' in failed.reason
    assert not pair.of("a", ChildSaInstalled)


def test_after_an_unanswered_4500_the_next_attempt_uses_raw_esp_until_a_reload() -> None:
    """Upgrading two lockgates behind a firewall that passes only port 500 and raw ESP:
    the first IKE SA fails on 4500, the next one comes up without the Vendor ID, on
    port 500 with raw ESP; a reload offers UDP again."""
    pair = _blocked_4500_pair()
    pair.a.initiate("conn", 0.0)
    pair.pump()
    pair.advance(300.0)
    assert pair.of("a", IkeSaFailed) and not pair.of("a", ChildSaInstalled)
    pair.wire.clear()
    pair.a.initiate("conn", pair.clock)
    pair.pump()
    (ia,) = pair.of("a", ChildSaInstalled)
    (ib,) = pair.of("b", ChildSaInstalled)
    assert not ia.udp_encap and not ib.udp_encap
    assert ia.local == (A_ADDR, 500) and ib.local == (B_ADDR, 500)
    assert _vendor_ids(pair.wire[0]) == []
    # A reload (perhaps the firewall was opened) offers the Vendor ID again.
    pair.a.set_connections([connection()])
    pair.wire.clear()
    pair.a.initiate("conn", pair.clock)
    pair.pump()
    assert _vendor_ids(pair.wire[0]) == [LOCKGATE_UDP_VID]


def test_nat_mode_with_the_same_firewall_comes_up_on_port_500() -> None:
    pair = _blocked_4500_pair("nat")
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (ia,) = pair.of("a", ChildSaInstalled)
    assert not ia.udp_encap and ia.local == (A_ADDR, 500)


def test_a_responder_keeps_the_framing_its_ike_sa_init_agreed_when_auth_picks_another() -> None:
    """A responder answers IKE_SA_INIT with its first candidate connection (here one
    with encap "force", so it fakes NAT-D) and IKE_AUTH may then pick another (here
    "nat"): the framing stays what the IKE_SA_INIT messages agreed, on both sides."""
    from dataclasses import replace

    from ikev2.config import Identity
    from ikev2.crypto.rng import DeterministicRandom
    from ikev2.endpoint import Endpoint

    conn = connection(encap="nat")
    chosen = mirrored(conn, encap="nat")
    first = replace(chosen, name="other", remote_id=Identity.parse("other.example"), encap="force")
    a = Endpoint([conn], rng=DeterministicRandom(b"side-a"))
    b = Endpoint([first, chosen], rng=DeterministicRandom(b"side-b"))
    pair = Pair(a, b)
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (ia,) = pair.of("a", ChildSaInstalled)
    (ib,) = pair.of("b", ChildSaInstalled)
    assert ib.connection == "conn"
    assert ia.udp_encap and ib.udp_encap
    assert ia.local == (A_ADDR, 4500) and ib.local == (B_ADDR, 4500)
