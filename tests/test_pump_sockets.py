"""The pump's UDP sockets: a second daemon on the same address and port is refused."""

from __future__ import annotations

import errno
import socket

import pytest

from daemon.pump import open_udp


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
