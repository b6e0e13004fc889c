"""The pump's UDP sockets: a second daemon on the same address and port is refused, and
IKE leaves port 4500 behind the non-ESP marker."""

from __future__ import annotations

import errno
import socket

import pytest

from daemon.pump import Pump, open_udp
from esp.udpencap import NON_ESP_MARKER, DatagramKind, classify, strip_marker
from ikev2.codec import IkeHeader
from ikev2.constants import ExchangeType
from tun import memory_tun_pair


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_port_held_by_another_lockgate_is_refused_with_its_name() -> None:
    port = _free_port()
    first = open_udp("127.0.0.1", port)
    try:
        with pytest.raises(OSError) as caught:
            open_udp("127.0.0.1", port)
        assert caught.value.errno == errno.EADDRINUSE
        assert f"UDP port {port} on 127.0.0.1 is in use" in str(caught.value.strerror)
        assert "another lockgate or IKE daemon" in str(caught.value.strerror)
    finally:
        first.close()
    # Once the holder is gone the port binds again at once (UDP has no TIME_WAIT).
    open_udp("127.0.0.1", port).close()


def test_a_wildcard_bind_with_reuseaddr_still_blocks_us() -> None:
    # charon binds the wildcard address with SO_REUSEADDR; our specific bind must fail.
    port = _free_port()
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.bind(("0.0.0.0", port))
    try:
        with pytest.raises(OSError, match=f"UDP port {port} on 127.0.0.1 is in use"):
            open_udp("127.0.0.1", port)
    finally:
        other.close()


def test_ike_from_the_nat_port_goes_behind_the_non_esp_marker() -> None:
    # The IKE endpoint gives bare messages; the pump frames them for the port they
    # leave from (RFC 3948 §2.2, RFC 7296 §2.23), and the receive side's `classify`
    # takes the framed one for IKE again.
    message = IkeHeader(b"\x01" * 8, b"\x02" * 8, 0, ExchangeType.INFORMATIONAL, 1, 28,
                        True, False).encode()  # fmt: skip
    tun, peer_tun = memory_tun_pair()
    pump = Pump(tun, ike_port=_free_port(), nat_port=_free_port())
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        pump.open(["127.0.0.1"], raw_esp=False)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5.0)
        to = ("127.0.0.1", int(peer.getsockname()[1]))
        assert pump.send_datagram(message, ("127.0.0.1", pump.nat_port), to)
        payload, sender = peer.recvfrom(2048)
        assert sender[1] == pump.nat_port
        assert payload == NON_ESP_MARKER + message
        assert classify(payload) is DatagramKind.IKE and strip_marker(payload) == message
        assert pump.send_datagram(message, ("127.0.0.1", pump.ike_port), to)
        payload, sender = peer.recvfrom(2048)
        assert sender[1] == pump.ike_port and payload == message
        # No socket on that address: nothing is sent, and the caller is told.
        assert not pump.send_datagram(message, ("127.0.0.2", pump.nat_port), to)
    finally:
        peer.close()
        pump.close()
        tun.close()
        peer_tun.close()
