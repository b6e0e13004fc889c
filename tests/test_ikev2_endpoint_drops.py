"""The IKE endpoint counts every dropped datagram by reason, and an unauthenticated
flood writes a bounded number of log lines, so an attacker can fill neither memory
nor the journal."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ikev2.codec import IkeHeader
from ikev2.constants import ExchangeType
from ikev2.cookies import CookiePolicy
from ikev2.crypto.rng import DeterministicRandom
from ikev2.endpoint import Endpoint, EndpointConfig, IkeDropReason, ThrottledLog
from ikev2.events import ChildSaInstalled
from testkit.ikev2_pair import A_ADDR, B_ADDR, Pair, connection, deliver, init_request, mirrored

B500, A500 = (B_ADDR, 500), (A_ADDR, 500)
R = IkeDropReason
INIT = ExchangeType.IKE_SA_INIT


def _responder(**kw: Any) -> Endpoint:
    return Endpoint(
        [mirrored(connection())],
        rng=DeterministicRandom(b"b"),
        config=EndpointConfig(**kw),
    )


def _established() -> Pair:
    # encap "nat": IKE stays on port 500, where the tests inject (two lockgates with
    # "auto" would move to 4500).
    pair = Pair.make(connection(encap="nat"))
    pair.a.initiate("conn", 0.0)
    pair.pump()
    assert pair.of("a", ChildSaInstalled) and pair.of("b", ChildSaInstalled)
    return pair


def test_unauthenticated_garbage_is_counted_per_reason() -> None:
    b = _responder()
    deliver(b, b"\x00" * 5, B500, A500, 0.0)  # shorter than a header
    header = IkeHeader(b"\x01" * 8, b"\x02" * 8, 0, ExchangeType.INFORMATIONAL, 1, 28, True, False)
    deliver(b, header.encode(), B500, A500, 0.0)  # no such SPI
    bad_version = bytearray(header.encode())
    bad_version[17] = 0x30  # major version 3 (RFC 7296 §2.5)
    deliver(b, bytes(bad_version), B500, A500, 0.0)
    zero_spi_r = IkeHeader(b"\x01" * 8, bytes(8), 0, ExchangeType.IKE_AUTH, 1, 28, True, False)
    deliver(b, zero_spi_r.encode(), B500, A500, 0.0)
    deliver(b, init_request(b"\x03" * 8), B500, ("198.51.100.77", 500), 0.0)
    # ESP and keepalives on port 4500 are the data plane's (esp.udpencap.classify): they
    # never reach the IKE endpoint, so they are no IKE drop.
    deliver(b, b"\x00\x00\x10\x01" + bytes(40), (B_ADDR, 4500), (A_ADDR, 4500), 0.0)
    deliver(b, b"\xff", (B_ADDR, 4500), (A_ADDR, 4500), 0.0)  # keepalive: no drop
    assert dict(b.drops) == {
        R.UNPARSABLE: 1,
        R.UNKNOWN_SPI: 1,
        R.BAD_VERSION: 1,
        R.UNEXPECTED_EXCHANGE: 1,
        R.NO_CONNECTION: 1,
    }
    assert b.ike_sas() == [] and b.datagrams_to_send(0.0) == []


def test_drops_is_a_read_only_live_view() -> None:
    b = _responder()
    view = b.drops
    deliver(b, b"\x00", B500, A500, 0.0)
    assert view[R.UNPARSABLE] == 1
    with pytest.raises(TypeError):
        view[R.UNPARSABLE] = 0  # type: ignore[index]


def test_half_open_cap_cookie_demand_and_retransmission_are_counted() -> None:
    b = _responder(max_half_open=2)
    request = init_request(b"\x01" * 8)
    deliver(b, request, B500, A500, 0.0)
    deliver(b, request, B500, A500, 0.5)  # retransmission: answered from cache
    for n in (2, 3, 4):
        deliver(b, init_request(bytes([n]) * 8), B500, A500, 1.0)
    assert dict(b.drops) == {R.RETRANSMIT_ANSWERED: 1, R.HALF_OPEN_CAP: 2}

    c = _responder(cookies=CookiePolicy(demand_above=0))
    deliver(c, init_request(b"\x01" * 8), B500, A500, 0.0)
    deliver(c, init_request(b"\x02" * 8), B500, A500, 0.0)
    assert dict(c.drops) == {R.COOKIE_DEMANDED: 1}
    assert len(c.ike_sas()) == 1


def test_authenticated_sa_drops_are_counted_once_each() -> None:
    pair = _established()
    (sa_a,) = pair.a.ike_sas()
    sa_a.check_liveness(1.0)
    (request,) = pair.take("a")
    data = request.data
    # ICV broken (the last octet is the SK payload's tag): dropped unanswered (§2.21.1).
    deliver(pair.b, data[:-1] + bytes([data[-1] ^ 1]), B500, A500, 1.0)
    assert pair.b.datagrams_to_send(1.0) == []
    # A Message ID far outside the window (§2.3), checked before decryption.
    far = bytearray(data)
    far[20:24] = (int.from_bytes(data[20:24], "big") + 100).to_bytes(4, "big")
    deliver(pair.b, bytes(far), B500, A500, 1.0)
    # The genuine request is answered and not counted; its retransmission is.
    deliver(pair.b, data, B500, A500, 1.0)
    deliver(pair.b, data, B500, A500, 1.1)
    first, again = pair.take("b")
    assert first.data == again.data
    assert dict(pair.b.drops) == {
        R.INTEGRITY_FAILURE: 1,
        R.OUT_OF_WINDOW: 1,
        R.RETRANSMIT_ANSWERED: 1,
    }
    # The response arrives twice at a: the second answers no outstanding request.
    deliver(pair.a, first.data, A500, B500, 1.2)
    deliver(pair.a, first.data, A500, B500, 1.2)
    assert dict(pair.a.drops) == {R.UNEXPECTED_RESPONSE: 1}
    assert sa_a.tm.outstanding is None


def _endpoint_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "ikev2.endpoint"]


def test_cookie_flood_logs_a_bounded_number_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ikev2.endpoint")
    b = _responder(cookies=CookiePolicy(demand_above=0))
    deliver(b, init_request(b"\x01" * 8), B500, A500, 0.0)  # one half open
    assert len(b.datagrams_to_send(0.0)) == 1
    requests = [init_request(n.to_bytes(8, "big"), b"s") for n in range(2, 12)]
    caplog.clear()
    # 1000 IKE_SA_INITs over 50 s: each is answered with a COOKIE demand.
    for n in range(1000):
        now = n * 0.05
        deliver(b, requests[n % len(requests)], B500, A500, now)
        if n == 0:
            (first,) = _endpoint_records(caplog)
            assert "asking 198.51.100.1:500 for a COOKIE" in first.getMessage()
    assert b.drops[R.COOKIE_DEMANDED] == 1000
    assert len(b.datagrams_to_send(50.0)) == 1000
    lines = _endpoint_records(caplog)
    # One line per 10 s window: 50 s of flood, so 5 or 6, never 1000.
    assert 5 <= len(lines) <= 6
    assert "demanded COOKIEs from 200 IKE_SA_INIT requests in the last 10 s" in [
        r.getMessage() for r in lines
    ]


def test_half_open_cap_flood_logs_a_bounded_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ikev2.endpoint")
    b = _responder(max_half_open=1, log_interval=10.0)
    deliver(b, init_request(b"\x01" * 8), B500, A500, 0.0)
    request = init_request(b"\x02" * 8)
    caplog.clear()
    for n in range(1000):
        deliver(b, request, B500, A500, n * 0.001)  # all within one second
    assert b.drops[R.HALF_OPEN_CAP] == 1000
    (line,) = _endpoint_records(caplog)
    assert line.levelno == logging.WARNING and "dropping IKE_SA_INIT" in line.getMessage()


def test_throttled_log_first_event_at_once_then_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("tests.throttle")
    caplog.set_level(logging.INFO, logger="tests.throttle")
    throttle = ThrottledLog(log, interval=10.0)

    def event(now: float) -> None:
        throttle.event(R.UNKNOWN_SPI, now, logging.INFO, "%s events in %.0f s", "one from %s", now)

    event(0.0)
    assert [r.getMessage() for r in caplog.records] == ["one from 0.0"]
    for n in range(1, 10):
        event(float(n))
    assert len(caplog.records) == 1  # counted, not logged
    event(10.0)  # the nine suppressed and this one
    event(25.0)  # quiet for an interval again: logged in detail
    throttle.event(R.NO_CONNECTION, 25.0, logging.INFO, "%s in %.0f s", "other reason")
    assert [r.getMessage() for r in caplog.records] == [
        "one from 0.0",
        "10 events in 10 s",
        "one from 25.0",
        "other reason",
    ]


def test_garbage_ike_sa_init_flood_is_counted_and_not_logged_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    b = _responder()
    body = b"\x00\x00\x00\x03\xff\xff\xff\xff"  # an SA payload that claims 3 octets
    for n in range(1, 101):
        header = IkeHeader(n.to_bytes(8, "big"), bytes(8), 33, INIT, 0, 28 + len(body), True, False)
        deliver(b, header.encode() + body, B500, A500, n * 0.01)
    assert dict(b.drops) == {R.INVALID_MESSAGE: 100}
    assert b.ike_sas() == [] and b.datagrams_to_send(1.0) == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("ikev2")] == []
