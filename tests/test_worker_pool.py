"""A pool of two real data-plane worker processes: each reads a TUN queue (an
in-memory one here) and its own UDP socket on the loopback; the test plays the peer
gateway with the other halves of the CHILD SAs. No root needed."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from daemon.childsa import ChildSaEntry
from daemon.pump import open_udp
from daemon.worker_pool import WorkerPool, owner_of
from daemon.worker_protocol import (
    MAX_MESSAGE,
    CountersReply,
    Install,
    InstallFailed,
    Ready,
    SaCounters,
    Setup,
    Stop,
    UdpSocket,
    decode,
    encode,
)
from esp.drops import DropReason
from ikev2.events import ChildSaInstalled
from testkit.dataplane import echo_request, events, ipv4
from testkit.workers import WAIT, recv_datagram, sa_pair, until
from tun.memory import MemoryTun, memory_tun_pair

LOOPBACK = "127.0.0.1"


@dataclass
class Lab:
    pool: WorkerPool
    tuns: list[MemoryTun]
    """The test's ends of the workers' TUN queues."""
    ports: list[int]
    peer: socket.socket
    lost: list[tuple[int, list[int]]] = field(default_factory=list)


def _sa(
    uid: int, remote_net: str, port: int, peer_port: int
) -> tuple[ChildSaInstalled, ChildSaEntry]:
    return sa_pair(uid, remote_net, (LOOPBACK, port), (LOOPBACK, peer_port))


def _run(body: Callable[[Lab], Awaitable[None]]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pairs = [memory_tun_pair(f"wq{k}", f"tq{k}") for k in range(2)]
        udp = [open_udp(LOOPBACK, 0) for _ in range(2)]
        ports = [s.getsockname()[1] for s in udp]
        peer = open_udp(LOOPBACK, 0)
        lab_lost: list[tuple[int, list[int]]] = []
        pool = WorkerPool(
            2,
            tuns=[a for a, _ in pairs],
            udp=[{(LOOPBACK, ports[k]): udp[k]} for k in range(2)],
            loop=loop,
            on_worker_lost=lambda k, uids: lab_lost.append((k, uids)),
            poll_interval=None,
            log_level="debug",
        )
        pool.start()
        lab = Lab(pool, [b for _, b in pairs], ports, peer, lab_lost)
        try:
            await until(pool.ready, "both workers ready")
            await body(lab)
        finally:
            pids = [p for p in pool.pids() if p]
            pool.close()
            for pid in pids:
                # Waited for by PID: gone, not a zombie.
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    continue
                raise AssertionError(f"worker {pid} outlived close()")
            for sock in (*udp, peer):
                sock.close()
            for a, b in pairs:
                a.close()
                b.close()

    asyncio.run(main())


async def _expect_esp(lab: Lab, peer_sa: ChildSaEntry, packet: bytes, port: int) -> None:
    data, sender = await recv_datagram(lab.peer)
    assert sender == (LOOPBACK, port)
    opened = peer_sa.inbound.decapsulate(data)
    assert not isinstance(opened, DropReason), opened
    assert opened[0] == packet


def test_two_workers_forward_hand_off_count_and_survive_a_killed_worker() -> None:
    async def body(lab: Lab) -> None:
        pool = lab.pool
        peer_port = lab.peer.getsockname()[1]
        # uid 2: our SPI is even (worker 0 owns it); uid 1: odd (worker 1).
        ev0, peer0 = _sa(2, "203.0.113.0/25", lab.ports[0], peer_port)
        ev1, peer1 = _sa(1, "203.0.113.128/25", lab.ports[1], peer_port)
        assert (owner_of(ev0.spi_in, 2), owner_of(ev1.spi_in, 2)) == (0, 1)
        assert pool.install(ev0) == 0
        assert pool.install(ev1) == 1
        assert await pool.refresh_counters()  # the installs are in: they came first
        assert set(pool.counters) == {2, 1}

        to0 = ipv4("192.0.2.10", "203.0.113.10", echo_request(1), proto=1)
        to1 = ipv4("192.0.2.10", "203.0.113.200", echo_request(2), proto=1)
        # Worker 1's queue read a packet of worker 0's SA: handed over, sealed by 0.
        lab.tuns[1].write(to0)
        await _expect_esp(lab, peer0, to0, lab.ports[0])
        # And the other way round.
        lab.tuns[0].write(to1)
        await _expect_esp(lab, peer1, to1, lab.ports[1])
        # ESP from the peer: opened by its owner, out of its TUN queue.
        back = ipv4("203.0.113.10", "192.0.2.10", echo_request(3), proto=1)
        esp = peer0.outbound.encapsulate(back)
        assert isinstance(esp, bytes)
        lab.peer.sendto(esp, (LOOPBACK, lab.ports[0]))
        await until(lambda: lab.tuns[0].read() == back, "the opened packet on worker 0's queue")

        assert await pool.refresh_counters()
        c0, c1 = pool.counters[2], pool.counters[1]
        assert (c0.packets_out, c0.packets_in, c1.packets_out, c1.packets_in) == (1, 1, 1, 0)
        assert pool.totals().counters["handed_off"] == 2
        assert [t.counters["handed_off"] for t in pool.worker_totals()] == [1, 1]

        # kill -9 worker 1: its SA is reported lost, it comes back, 0 goes on.
        old = pool.pids()[1]
        os.kill(old, 9)
        await until(lambda: bool(lab.lost), "on_worker_lost")
        assert lab.lost == [(1, [1])]
        lab.tuns[0].write(to0)
        await _expect_esp(lab, peer0, to0, lab.ports[0])
        await until(lambda: pool.ready() and pool.pids()[1] not in (0, old), "the restart")
        assert await pool.refresh_counters()
        # Its SA was not installed again (its sequence counter would restart with
        # the same keys): the new worker has none of its own...
        assert set(pool.counters) == {2}
        # ...but the forward entry of worker 0's SA, so its queue's packets still go.
        lab.tuns[1].write(to1)  # no SA any more for this one: dropped
        lab.tuns[1].write(to0)
        await _expect_esp(lab, peer0, to0, lab.ports[0])
        assert await pool.refresh_counters()
        assert pool.counters[2].packets_out == 3
        assert pool.worker_totals()[1].drops["no_policy"] == 1
        # Removing the lost SA reaches the forward entry worker 0 still has.
        assert pool.remove(1)
        lab.tuns[0].write(to1)

        async def dropped() -> bool:
            await pool.refresh_counters()
            return pool.worker_totals()[0].drops["no_policy"] == 1

        deadline = asyncio.get_running_loop().time() + WAIT
        while not await dropped():
            assert asyncio.get_running_loop().time() < deadline, "no drop on worker 0"
            await asyncio.sleep(0.02)
        assert pool.worker_totals()[0].counters["handed_off"] == 1  # no more than before

    _run(body)


def _bare_worker() -> tuple[
    subprocess.Popen[bytes], socket.socket, list[MemoryTun | socket.socket]
]:
    """A worker started by hand, its setup sent: (process, our control end, fds)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tun, tun_peer = memory_tun_pair()
    udp = open_udp(LOOPBACK, 0)
    port = udp.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon.worker", "--control", str(theirs.fileno())],
        pass_fds=[theirs.fileno(), tun.fileno(), udp.fileno()],
    )
    theirs.close()
    udp_socket = UdpSocket(udp.fileno(), LOOPBACK, port)
    setup = Setup(0, 1, tun.fileno(), "wq0", 0, True, False, (udp_socket,), (), ())
    ours.send(encode(setup))
    ours.settimeout(WAIT)
    ready = decode(ours.recv(MAX_MESSAGE))
    assert isinstance(ready, Ready) and ready.pid == process.pid
    return process, ours, [tun, tun_peer, udp]


def test_a_worker_exits_when_the_main_process_goes_away() -> None:
    # Never forward without a main process: its control socket's end of file
    # (what a killed main leaves) stops it.
    process, control, keep = _bare_worker()
    try:
        control.close()
        assert process.wait(WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for item in keep:
            item.close()


def test_a_worker_keeps_an_sa_sent_twice_reports_one_it_refused_and_stops_when_told() -> None:
    process, control, keep = _bare_worker()
    try:
        ours, _ = events(uid=4)
        control.send(encode(Install(ours, owner=0)))
        # Sent twice: installed, so nothing failed (the main process deletes an SA
        # whose install failed).
        control.send(encode(Install(ours, owner=0)))
        bad, _ = events(uid=5)
        bad = dataclasses.replace(bad, encr_key_in=b"short")
        control.send(encode(Install(bad, owner=0)))
        failed = decode(control.recv(MAX_MESSAGE))
        assert isinstance(failed, InstallFailed) and failed.unique_id == 5, failed
        assert "key" in failed.reason, failed.reason
        control.send(encode(Stop()))
        assert process.wait(WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        control.close()
        for item in keep:
            item.close()


def _idle_pool(lost: list[tuple[int, list[int]]]) -> WorkerPool:
    """A pool whose workers were never started (no process, no channel)."""
    tuns = [memory_tun_pair(f"iq{k}", f"it{k}")[0] for k in range(2)]
    return WorkerPool(
        2,
        tuns=tuns,
        udp=[{}, {}],
        loop=asyncio.get_running_loop(),
        on_worker_lost=lambda k, uids: lost.append((k, uids)),
        poll_interval=None,
    )


def test_an_sa_for_a_worker_that_is_down_waits_for_its_successor_and_is_never_installed_twice() -> (
    None
):
    async def main() -> None:
        lost: list[tuple[int, list[int]]] = []
        pool = _idle_pool(lost)
        ours, _ = events(uid=3)
        assert pool.install(ours) == 1
        await asyncio.sleep(0)
        # Not lost (a rekey would land in the same down worker): kept, keys and all,
        # for the successor's first and only copy.
        assert lost == []
        assert list(pool._workers[1].waiting) == [3]
        assert pool._workers[1].waiting[3].event.encr_key_in == ours.encr_key_in
        with pytest.raises(ValueError, match="installed already"):
            pool.install(ours)
        assert pool.remove(3)
        assert pool._workers[1].waiting == {}
        assert not pool.remove(3)
        pool.close()

    asyncio.run(main())


def test_an_answer_to_an_older_counters_request_still_counts() -> None:
    async def main() -> None:
        pool = _idle_pool([])
        first = pool.poll_counters()
        pool.poll_counters()  # a worker slower than the poll interval
        worker = pool._workers[0]
        sa = SaCounters(9, 1, 2, 3, 4, {}, "ok", "ok")
        pool._on_counters(worker, CountersReply(first, 0, (sa,), True, counters={"x": 1}))
        assert pool.counters == {9: sa}
        assert pool.totals().counters["x"] == 1
        # An answer older than one already taken is not.
        pool._on_counters(worker, CountersReply(first, 0, (), True))
        assert pool.counters == {9: sa}
        pool.close()

    asyncio.run(main())


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_an_sa_sent_to_a_worker_that_just_died_is_reported_lost_once() -> None:
    async def body(lab: Lab) -> None:
        pool = lab.pool
        victim = pool.pids()[1]
        os.kill(victim, 9)
        # Dead, and its end of file not read by the pool: the loop does not run
        # until the install below.
        deadline = time.monotonic() + WAIT
        while not _is_zombie(victim):
            assert time.monotonic() < deadline, "the worker did not die"
            time.sleep(0.01)
        ours, _ = events(uid=5)  # odd SPI: worker 1's
        assert pool.install(ours) == 1
        await until(lambda: len(lab.lost) >= 2, "both reports")
        await until(pool.ready, "the restart")
        assert sorted(lab.lost) == [(1, []), (1, [5])]

    _run(body)


def test_an_sa_installed_while_its_worker_restarts_goes_to_the_successor_once() -> None:
    async def body(lab: Lab) -> None:
        pool = lab.pool
        victim = pool.pids()[1]
        os.kill(victim, 9)
        await until(lambda: pool._workers[1].channel is None and bool(lab.lost), "the loss")
        assert lab.lost == [(1, [])]
        peer_port = lab.peer.getsockname()[1]
        event, _ = _sa(1, "203.0.113.128/25", lab.ports[1], peer_port)  # odd SPI: worker 1
        assert pool.install(event) == 1
        await until(lambda: pool.ready() and pool.pids()[1] not in (0, victim), "the restart")
        assert await pool.refresh_counters()
        assert 1 in pool._workers[1].counters  # the successor holds it as its own
        assert lab.lost == [(1, [])]  # and it was never reported lost

    _run(body)
