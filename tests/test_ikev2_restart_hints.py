"""A peer that restarted is found out in seconds, and forged hints cost little.

RFC 7296 §1.5, §2.21.4: the side that lost its SAs answers a protected request for an
unknown IKE SA with an unprotected INVALID_IKE_SPI, and an ESP packet of an unknown
SPI (reported by the data plane) with an unprotected INVALID_SPI, both rate-limited.
The other side takes either as a hint, never as proof: it deletes nothing, answers
nothing, and only checks its peer's liveness at once on a short schedule, at most
once per HINT_INTERVAL per IKE SA. §2.4: INITIAL_CONTACT from a restarted initiator
replaces the old IKE SA only once the new one authenticated.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools

import pytest

from esp.udpencap import NON_ESP_MARKER
from ikev2.codec import IkeHeader, Message, Notify, decode_header, decode_message, encode_message
from ikev2.constants import ExchangeType, NotifyType, PayloadType, ProtocolId
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import HINT_INTERVAL, AnswerLimit, Endpoint, IkeDropReason
from ikev2.events import ChildSaInstalled, DeleteCause, IkeSaDeleted, IkeSaFailed
from ikev2.sa import HINT_CHECK_DELAYS
from ikev2.sa_types import IkeSaState
from testkit.ikev2_pair import A_ADDR, B_ADDR, Pair, connection, deliver, mirrored, on_wire

R = IkeDropReason
INFO = ExchangeType.INFORMATIONAL
STRANGER = "198.51.100.66"


def _up(encap: str = "auto") -> Pair:
    pair = Pair.make(connection(encap=encap))
    pair.a.initiate("conn", pair.clock)
    pair.pump()
    assert pair.of("a", ChildSaInstalled) and pair.of("b", ChildSaInstalled)
    return pair


def _ports(encap: str) -> int:
    """The port IKE and ESP use once up: two lockgates with "auto" move to 4500."""
    return 4500 if encap == "auto" else 500


def _hint(spi: int, *, in_spi_field: bool = False) -> bytes:
    """An unprotected INVALID_SPI hint as §1.5 builds it (or with the SPI in the
    Notify's SPI field, as some implementations send it)."""
    raw = spi.to_bytes(4, "big")
    notify = (
        Notify(NotifyType.INVALID_SPI, b"", ProtocolId.ESP, raw)
        if in_spi_field
        else Notify(NotifyType.INVALID_SPI, raw, ProtocolId.ESP)
    )
    return encode_message(Message(bytes(8), bytes(8), INFO, 0, True, False, (notify,)))


def _protected_request(
    spi_i: bytes, spi_r: bytes, *, initiator: bool = True, mid: int = 1
) -> bytes:
    """What a request on an IKE SA looks like to one that lost it: an SK payload."""
    body = bytes([0, 0, 0, 24]) + bytes(20)  # an SK payload header and some octets
    header = IkeHeader(spi_i, spi_r, PayloadType.SK, INFO, mid, 28 + len(body), initiator, False)
    return header.encode() + body


def _restart(pair: Pair, side: str, seed: bytes = b"rebooted") -> Endpoint:
    conn = connection(encap="auto")
    fresh = Endpoint([conn if side == "a" else mirrored(conn)], rng=DeterministicRandom(seed))
    setattr(pair, side, fresh)
    pair.events[side].clear()
    return fresh


def _a_requests_since(pair: Pair, t0: float) -> list[IkeHeader]:
    return [decode_header(s.ike) for s in pair.wire if s.sender == "a" and s.time >= t0]


# --- (i) a restarted responder is found out within seconds --------------------------


@pytest.mark.parametrize("encap", ["auto", "nat"])
def test_esp_to_a_restarted_responder_draws_invalid_spi_and_the_ike_sa_ends_fast(
    encap: str,
) -> None:
    pair = Pair.make(connection(encap=encap))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    (ia,) = pair.of("a", ChildSaInstalled)
    (sa_a,) = pair.a.ike_sas()
    port = _ports(encap)
    assert sa_a.remote == (B_ADDR, port)
    pair.advance(5.0)
    conn_b = mirrored(connection(encap=encap))
    pair.b = Endpoint([conn_b], rng=DeterministicRandom(b"side-b-rebooted"))
    t0 = pair.clock
    # a's ESP reaches the restarted b, whose data plane knows no such SPI.
    pair.b.esp_spi_unknown(ia.spi_out, (B_ADDR, port), (A_ADDR, port), t0)
    (hint,) = pair.take("b")
    assert (hint.local, hint.remote) == ((B_ADDR, port), (A_ADDR, port))
    # A bare IKE message, which the daemon sends behind the non-ESP marker on port 4500
    # only (`Pump.send_datagram`, mirrored by `on_wire`).
    message = decode_message(hint.data)
    assert hint.data == encode_message(message)
    assert on_wire(hint) == (NON_ESP_MARKER if port == 4500 else b"") + hint.data
    assert (message.spi_i, message.spi_r, message.exchange_type, message.message_id) == (
        bytes(8),
        bytes(8),
        INFO,
        0,
    )
    assert message.initiator and not message.response
    assert message.payloads == (
        Notify(NotifyType.INVALID_SPI, ia.spi_out.to_bytes(4, "big"), ProtocolId.ESP),
    )
    # a takes it as a hint: an empty INFORMATIONAL at once, nothing deleted yet.
    pair.deliver("b", hint)
    assert pair.a.drops[R.RESTART_HINT] == 1
    (check,) = pair.take("a")
    header = decode_header(check.data)
    assert header.exchange_type == INFO and not header.response
    assert sa_a.state is IkeSaState.ESTABLISHED and not pair.of("a", IkeSaDeleted)
    pair.deliver("a", check)  # within b's per-address second: not answered
    assert pair.b.datagrams_to_send(t0) == []
    # Retransmissions at 0.5 s and 1.5 s; the second draws INVALID_IKE_SPI, a hint
    # inside the interval (only counted). b can answer nothing else.
    pair.advance(sum(HINT_CHECK_DELAYS) - 0.1)
    assert sa_a.state is IkeSaState.ESTABLISHED
    pair.advance(0.2)
    (dead,) = pair.of("a", IkeSaDeleted)
    assert dead.cause is DeleteCause.DEAD_PEER and dead.reason.startswith("peer is dead")
    assert pair.clock - t0 < 4.0
    assert dict(pair.a.drops) == {R.RESTART_HINT: 1, R.HINT_RATE_LIMITED: 1}
    assert dict(pair.b.drops) == {
        R.INVALID_SPI_SENT: 1,
        R.ANSWER_RATE_LIMITED: 2,
        R.INVALID_IKE_SPI_SENT: 1,
    }
    # a never answered an unprotected message: all it sent were its own requests.
    assert all(not h.response and h.spi_i == sa_a.spi_i for h in _a_requests_since(pair, t0))
    # dpd_action restart (the daemon's) initiates again: a new IKE SA comes up.
    pair.a.initiate("conn", pair.clock)
    pair.pump()
    assert len(pair.of("a", ChildSaInstalled)) == 2 and pair.of("b", ChildSaInstalled)
    assert [sa.state for sa in pair.b.ike_sas()] == [IkeSaState.ESTABLISHED]


@pytest.mark.parametrize("restarted", ["a", "b"])
def test_a_request_to_a_restarted_peer_draws_invalid_ike_spi_and_the_ike_sa_ends_fast(
    restarted: str,
) -> None:
    pair = _up()
    pair.advance(5.0)
    live = "b" if restarted == "a" else "a"
    (sa,) = pair.side(live).ike_sas()
    _restart(pair, restarted)
    t0 = pair.clock
    # The live side's next request (here a liveness check; a rekey would do too).
    pair.side(live).check_liveness(sa.ike_sa_id, t0)
    (request,) = pair.take(live)
    pair.deliver(live, request)
    (answer,) = pair.take(restarted)
    assert (answer.local, answer.remote) == (request.remote, request.local)
    # From port 4500, where the daemon puts the non-ESP marker in front.
    assert answer.local[1] == 4500 and on_wire(answer).startswith(NON_ESP_MARKER)
    sent, got = decode_message(request.data), decode_message(answer.data)
    assert (got.spi_i, got.spi_r, got.exchange_type, got.message_id) == (
        sent.spi_i,
        sent.spi_r,
        sent.exchange_type,
        sent.message_id,
    )
    assert got.response and got.initiator != sent.initiator
    assert got.payloads == (Notify(NotifyType.INVALID_IKE_SPI),)
    pair.deliver(restarted, answer)
    side = pair.side(live)
    assert side.drops[R.RESTART_HINT] == 1 and sa.state is IkeSaState.ESTABLISHED
    assert side.datagrams_to_send(t0) == []  # the hint is not answered
    # The outstanding request moved to the short schedule: gone in 3.5 s, not ~165 s.
    assert sa.tm.outstanding is not None
    assert sa.tm.get_timer() == pytest.approx(t0 + HINT_CHECK_DELAYS[0])
    pair.advance(3.4)
    assert not pair.of(live, IkeSaDeleted)
    pair.advance(0.2)
    (dead,) = pair.of(live, IkeSaDeleted)
    assert dead.cause is DeleteCause.DEAD_PEER
    assert side.ike_sas() == []


def test_a_live_peer_answers_the_fast_check_and_nothing_changes() -> None:
    pair = _up()
    (sa_a,) = pair.a.ike_sas()
    (ia,) = pair.of("a", ChildSaInstalled)
    pair.a.receive_message(_hint(ia.spi_out), (A_ADDR, 4500), (B_ADDR, 4500), pair.clock)
    pair.pump()
    assert len(pair.requests("a", INFO)) == 1 and len(pair.responses("b", INFO)) == 1
    assert sa_a.tm.outstanding is None and sa_a.state is IkeSaState.ESTABLISHED
    pair.advance(60.0)
    assert not pair.of("a", IkeSaDeleted) and not pair.of("b", IkeSaDeleted)
    assert len(sa_a.children) == 1


# --- (ii) a forged flood deletes nothing and costs one check per interval ------------


def test_a_spoofed_hint_flood_deletes_nothing_and_checks_once_per_interval() -> None:
    pair = _up()
    (sa_a,) = pair.a.ike_sas()
    (ia,) = pair.of("a", ChildSaInstalled)
    here, peer = (A_ADDR, 4500), (B_ADDR, 4500)
    forged_ike_spi = encode_message(
        Message(
            sa_a.spi_i, sa_a.spi_r, INFO, 77, False, True, (Notify(NotifyType.INVALID_IKE_SPI),)
        )
    )
    start, sent = pair.clock, len(pair.wire)
    rounds = 300  # one of each every 0.1 s for 30 s
    for n in range(rounds):
        now = pair.clock
        pair.a.receive_message(_hint(ia.spi_out), here, peer, now)  # from the peer
        pair.a.receive_message(_hint(ia.spi_out, in_spi_field=True), here, peer, now)
        pair.a.receive_message(_hint(ia.spi_out), here, (STRANGER, 4500), now)  # elsewhere
        pair.a.receive_message(_hint(ia.spi_in), here, peer, now)  # not our outbound SPI
        pair.a.receive_message(forged_ike_spi, here, peer, now)  # no such request of ours
        pair.advance(0.1)
        assert n or len(pair.requests("a", INFO)) == 1
    checks = pair.requests("a", INFO)
    assert len(checks) == 3 == int(30 / HINT_INTERVAL)
    assert checks[0].time - start < 0.2  # the first hint acted on at once
    assert all(b.time - a.time >= HINT_INTERVAL for a, b in itertools.pairwise(checks))
    assert dict(pair.a.drops) == {
        R.RESTART_HINT: 3,
        R.HINT_RATE_LIMITED: 2 * rounds - 3,
        R.UNEXPECTED_EXCHANGE: 2 * rounds,  # from elsewhere, or not our SPI
        R.UNEXPECTED_RESPONSE: rounds,  # the unmatched INVALID_IKE_SPI, as before
    }
    # Nothing deleted, nothing answered: a only sent its three checks.
    assert not pair.of("a", IkeSaDeleted) and not pair.of("b", IkeSaDeleted)
    assert sa_a.state is IkeSaState.ESTABLISHED and len(sa_a.children) == 1
    assert [s for s in pair.wire[sent:] if s.sender == "a"] == checks


# --- (iii) what is never answered ------------------------------------------------------


def test_responses_hints_and_unprotected_requests_for_unknown_sas_are_not_answered() -> None:
    b = Endpoint([mirrored(connection())], rng=DeterministicRandom(b"b"))
    here, a500 = (B_ADDR, 500), (A_ADDR, 500)
    spi_i, spi_r = b"\x01" * 8, b"\x02" * 8
    # A response for an unknown IKE SA is never answered (§2.21.4).
    response = bytearray(_protected_request(spi_i, spi_r))
    response[19] |= 0x20  # the R flag
    deliver(b, bytes(response), here, a500, 0.0)
    # Nor is an INVALID_SPI hint, with no SA of ours or one naming any SPI.
    deliver(b, _hint(0x12345678), here, a500, 1.0)
    # Nor a request without an SK payload (§1.5 answers "an encrypted IKE request").
    bare = IkeHeader(spi_i, spi_r, 0, INFO, 1, 28, True, False)
    deliver(b, bare.encode(), here, a500, 2.0)
    # Nor a protected request from an address no connection accepts.
    deliver(b, _protected_request(spi_i, spi_r), here, (STRANGER, 500), 3.0)
    # Nor ESP from such an address.
    b.esp_spi_unknown(0x1000, here, (STRANGER, 500), 4.0)
    assert b.datagrams_to_send(5.0) == [] and b.next_event() is None
    assert dict(b.drops) == {R.UNKNOWN_SPI: 3, R.UNEXPECTED_EXCHANGE: 1}


def test_esp_for_an_unknown_spi_from_a_peer_we_have_an_ike_sa_with_is_not_answered() -> None:
    pair = _up()
    # Not a restart of ours (a stale or forged SPI): no unprotected hint.
    pair.b.esp_spi_unknown(0x1000, (B_ADDR, 4500), (A_ADDR, 4500), pair.clock)
    assert pair.b.datagrams_to_send(pair.clock) == []
    assert R.ANSWER_RATE_LIMITED not in pair.b.drops


def test_an_unknown_sa_answer_is_no_request_and_a_hint_is_no_exchange() -> None:
    # Two endpoints that both lost everything cannot ping-pong: the INVALID_IKE_SPI
    # answer is a response, the INVALID_SPI hint matches no SA; neither is answered.
    a = Endpoint([connection()], rng=DeterministicRandom(b"a"))
    b = Endpoint([mirrored(connection())], rng=DeterministicRandom(b"b"))
    deliver(b, _protected_request(b"\x01" * 8, b"\x02" * 8), (B_ADDR, 500), (A_ADDR, 500), 0.0)
    b.esp_spi_unknown(0x1000, (B_ADDR, 4500), (A_ADDR, 4500), 5.0)
    out = b.datagrams_to_send(5.0)
    assert len(out) == 2
    for d in out:
        deliver(a, on_wire(d), d.remote, d.local, 6.0)
    assert a.datagrams_to_send(6.0) == [] and a.next_event() is None


# --- (iv) the rate limits ----------------------------------------------------------


def test_unprotected_answers_are_rate_limited_per_address_and_overall() -> None:
    anyone = dataclasses.replace(mirrored(connection()), remote_address=None, remote_id=None)
    b = Endpoint([anyone], rng=DeterministicRandom(b"b"))
    here = (B_ADDR, 500)
    request = _protected_request(b"\x01" * 8, b"\x02" * 8)
    # One address: one answer a second, whichever kind.
    for n in range(10):
        deliver(b, request, here, (A_ADDR, 500), n * 0.09)
    b.esp_spi_unknown(0x1000, here, (A_ADDR, 500), 0.95)
    assert len(b.datagrams_to_send(1.0)) == 1
    b.esp_spi_unknown(0x1000, here, (A_ADDR, 500), 1.0)
    assert len(b.datagrams_to_send(1.0)) == 1
    assert dict(b.drops) == {
        R.INVALID_IKE_SPI_SENT: 1,
        R.ANSWER_RATE_LIMITED: 10,
        R.INVALID_SPI_SENT: 1,
    }
    # Many addresses (spoofed): at most 20 answers in any second.
    for n in range(50):
        deliver(b, request, here, (f"203.0.113.{n + 1}", 500), 10.0 + n * 0.01)
    assert len(b.datagrams_to_send(11.0)) == 20
    for n in range(50, 80):
        b.esp_spi_unknown(0x1000, here, (f"203.0.113.{n + 1}", 500), 11.5)
    assert len(b.datagrams_to_send(11.5)) == 20
    assert b.drops[R.ANSWER_RATE_LIMITED] == 10 + 30 + 10


def test_the_answer_limit_forgets_addresses() -> None:
    limit = AnswerLimit(per_second=20, address_interval=1.0)
    allowed = sum(
        limit.allow(ipaddress.ip_address(f"2001:db8::{n:x}"), n * 0.01) for n in range(10_000)
    )
    assert 19 * 100 <= allowed <= 20 * 100
    assert len(limit._by_address) <= 4 * 20


# --- INITIAL_CONTACT (§2.4) replaces the old IKE SA only once the new one authenticated


def test_initial_contact_of_a_restarted_initiator_waits_for_authentication() -> None:
    pair = _up()
    (old_b,) = pair.b.ike_sas()
    pair.events["b"].clear()
    # a restarts, but its IKE_AUTH never arrives: the old IKE SA stays.
    _restart(pair, "a", b"rebooted-1")
    auth = ExchangeType.IKE_AUTH
    pair.drop = lambda sent: sent.sender == "a" and decode_header(sent.ike).exchange_type == auth
    sent = len(pair.wire)
    pair.a.initiate("conn", pair.clock)
    pair.pump()
    kinds = [(s.sender, decode_header(s.ike).exchange_type, s.dropped) for s in pair.wire[sent:]]
    assert kinds == [("a", 34, False), ("b", 34, False), ("a", auth, True)]
    assert old_b.state is IkeSaState.ESTABLISHED and len(old_b.children) == 1
    assert not pair.of("b", IkeSaDeleted)
    # a restarts with the wrong key: IKE_AUTH fails, and the old IKE SA stays.
    pair.drop = None
    wrong = dataclasses.replace(connection(), psk=b"not-the-key-b-knows")
    pair.a = Endpoint([wrong], rng=DeterministicRandom(b"rebooted-2"))
    pair.a.initiate("conn", pair.clock)
    pair.pump()
    assert pair.of("a", IkeSaFailed)
    assert old_b.state is IkeSaState.ESTABLISHED and not pair.of("b", IkeSaDeleted)
    # Authenticated at last: now the old one goes, before the new CHILD SA comes.
    _restart(pair, "a", b"rebooted-3")
    pair.a.initiate("conn", pair.clock)
    pair.pump()
    (gone,) = pair.of("b", IkeSaDeleted)
    assert gone.ike_sa_id == old_b.ike_sa_id and gone.cause is DeleteCause.PEER_RESTARTED
    (new_b,) = [sa for sa in pair.b.ike_sas() if sa.state is IkeSaState.ESTABLISHED]
    assert new_b is not old_b and len(new_b.children) == 1


def test_a_hastened_request_keeps_its_packets_and_gives_up_after_the_short_schedule() -> None:
    from ikev2.task_manager import GiveUp, RetransmitPolicy, TaskManager

    tm: TaskManager[str] = TaskManager(RetransmitPolicy())
    assert not tm.hasten(HINT_CHECK_DELAYS, 0.0)  # nothing outstanding
    tm.request_sent("dpd", (b"request",), 0.0)
    assert tm.handle_timer(4.0) == (b"request",)  # the policy's first wait
    # Halfway through the next wait (7.2 s) a hint: the rest moves to the schedule.
    assert tm.hasten(HINT_CHECK_DELAYS, 6.0)
    assert tm.get_timer() == 6.5
    assert tm.handle_timer(6.5) == (b"request",)
    assert tm.get_timer() == 7.5
    assert tm.handle_timer(7.5) == (b"request",)
    assert tm.get_timer() == 9.5
    with pytest.raises(GiveUp):
        tm.handle_timer(9.5)
    assert tm.outstanding is None
    # A new request gets the policy's back-off again.
    tm.request_sent("next", (b"next",), 10.0)
    assert tm.get_timer() == 14.0
