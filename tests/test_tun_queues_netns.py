"""A multi-queue TUN as the workers use it: the kernel sends every packet of a flow out
of one queue, a detached queue gets nothing until it is attached again, and a queue's
fd works in another process (`TunDevice.from_fd`)."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_helpers import ipv4_udp
from netns import Lab, in_namespace

from tun import LinkManager, TunDevice, TunError

pytestmark = pytest.mark.netns

LOCAL = "192.0.2.1"
REMOTE_NET = "203.0.113.0/24"
REMOTE = "203.0.113.9"
DPORT = 9999
PER_FLOW = 6
WAIT = 20.0  # seconds for packets to come out (a loaded machine; never a measure)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def queues() -> Iterator[tuple[TunDevice, TunDevice]]:
    """Two queues of one TUN in a fresh namespace, with a route into it."""
    with Lab() as lab:
        ns = lab.namespace("mq")
        with in_namespace(ns.name):
            first = TunDevice.open("lgmq%d", multi_queue=True)
            second = first.add_queue()
            try:
                with LinkManager() as links:
                    links.quiet_ipv6(first.name)
                    links.add_address(first.name, f"{LOCAL}/24")
                    links.set_up(first.name)
                    links.add_route(REMOTE_NET, first.name)
                yield first, second
            finally:
                second.close()
                first.close()


def _send_flows(sports: range, tag: bytes) -> None:
    """PER_FLOW datagrams of each flow (source port) towards the TUN's route."""
    for sport in sports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOCAL, sport))
            for seq in range(PER_FLOW):
                sock.sendto(tag + bytes([seq]), (REMOTE, DPORT))


def _flows_by_queue(queues: list[TunDevice], expected: int, tag: bytes) -> list[dict[int, int]]:
    """For each queue, {source port: packets} of the flows tagged ``tag`` it gave."""
    seen: list[dict[int, int]] = [{} for _ in queues]
    deadline = time.monotonic() + WAIT
    while sum(sum(s.values()) for s in seen) < expected and time.monotonic() < deadline:
        readable, _, _ = select.select([q.fileno() for q in queues], [], [], 0.5)
        for i, queue in enumerate(queues):
            if queue.fileno() not in readable:
                continue
            for packet in queue.read_batch():
                udp = (packet[0] & 0x0F) * 4
                if packet[9] != socket.IPPROTO_UDP or tag not in packet[udp + 8 :]:
                    continue
                sport = struct.unpack_from("!H", packet, udp)[0]
                seen[i][sport] = seen[i].get(sport, 0) + 1
    return seen


def _assert_flows_stay_on_one_queue(seen: list[dict[int, int]], sports: range) -> None:
    for sport in sports:
        holders = [i for i, flows in enumerate(seen) if sport in flows]
        assert len(holders) == 1, f"flow from port {sport} came out of queues {holders}"
        assert seen[holders[0]][sport] == PER_FLOW


def test_flows_stay_on_one_queue_and_a_detached_queue_gets_none(
    queues: tuple[TunDevice, TunDevice],
) -> None:
    first, second = queues
    both = [first, second]
    flows = range(41000, 41032)  # 32 flows: all on one queue by chance is 2**-31
    _send_flows(flows, b"both")
    seen = _flows_by_queue(both, len(flows) * PER_FLOW, b"both")
    _assert_flows_stay_on_one_queue(seen, flows)
    assert all(seen), "the kernel spreads flows over both queues"

    # The first queue (index 0) goes: the kernel moves the other into its place.
    first.detach_queue()
    assert not first.attached
    assert first.read() is None
    with pytest.raises(TunError, match="cannot detach"):
        first.detach_queue()
    flows = range(42000, 42032)
    _send_flows(flows, b"alone")
    (seen_second,) = _flows_by_queue([second], len(flows) * PER_FLOW, b"alone")
    assert sorted(seen_second) == list(flows)
    assert set(seen_second.values()) == {PER_FLOW}

    first.attach_queue()
    assert first.attached
    # Nothing was left waiting in it: the kernel purges a queue it detaches.
    assert not [p for p in first.read_batch() if b"alone" in p]
    flows = range(43000, 43032)
    _send_flows(flows, b"again")
    seen = _flows_by_queue(both, len(flows) * PER_FLOW, b"again")
    _assert_flows_stay_on_one_queue(seen, flows)
    assert all(seen), "the re-attached queue gets flows again"


def test_a_worker_process_uses_its_queue_from_an_inherited_fd(
    queues: tuple[TunDevice, TunDevice],
) -> None:
    _, second = queues
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind((LOCAL, DPORT))
        listener.settimeout(WAIT)
        packet = ipv4_udp(REMOTE, LOCAL, 40000, DPORT, b"from the worker")
        fd = second.fileno()
        worker = (
            "import sys; from tun import TunDevice\n"
            "fd, name, flags, packet = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), "
            "bytes.fromhex(sys.argv[4])\n"
            "queue = TunDevice.from_fd(fd, name, flags)\n"
            "assert queue.write(packet), 'the queue refused the packet'\n"
            "queue.close()\n"
        )
        args = [sys.executable, "-c", worker, str(fd), second.name, str(second.flags), packet.hex()]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(args, pass_fds=(fd,), env=env, capture_output=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr.decode()
        assert listener.recvfrom(100) == (b"from the worker", (REMOTE, 40000))
    # The worker closed its copy only: the supervisor's queue still works.
    assert not second.closed
    second.detach_queue()
    second.attach_queue()
