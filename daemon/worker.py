"""A data-plane worker: one process of `[gateway] workers = N` that moves packets.

The main process keeps the IKE endpoint and starts each worker as
``python -m daemon.worker --control FD`` (`daemon.worker_pool`), passing it, at the
same numbers, its control socket, its queue of the multi-queue TUN, its UDP 4500
socket(s) (members of the SO_REUSEPORT group whose BPF program steers ESP by SPI),
its raw ESP socket(s), and its ends of the hand-off socket pairs. The first message
on the control socket (`worker_protocol.Setup`) says which is which; the worker then
runs the same `Pump` and `DataPlane` as a single-process daemon around them, on
uvloop, and installs and removes CHILD SAs as the main process says.

A CHILD SA belongs to the worker `spi_in % N`: its keys, sequence counter and replay
window exist in that process only. A peer that negotiated one SA pair has one
owner, yet the multi-queue TUN hands that connection's flows to every worker's
queue; so the other workers hold a forward entry for it (`childsa.forward_entry`,
no keys) and pass its packets, as plaintext, to the owner over their hand-off
socket (one AF_UNIX datagram: a flags octet, then the IP packet). The owner seals
them as if its own queue had read them.

A worker never outlives the main process: end of file on the control socket stops
it, as `Stop` does. It ignores SIGTERM, SIGINT and SIGHUP, which are the daemon's
(systemd sends SIGTERM to the whole control group at a stop, while the main process
still sends its Deletes over the workers' data plane).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from daemon.childsa import ChildSaEntry, entry_from_event, forward_entry
from daemon.dataplane import DataPlane
from daemon.pump import BATCH, MAX_DATAGRAM, Pump, grow_buffers
from daemon.sdnotify import setup_logging
from daemon.worker_protocol import (
    MAX_MESSAGE,
    AcquireNotice,
    Channel,
    CountersRequest,
    IkeNotice,
    Install,
    InstallFailed,
    Message,
    Move,
    ProtocolError,
    QueueAttached,
    Ready,
    Remove,
    SaCounters,
    Setup,
    Stop,
    UnknownSpiNotice,
    counters_parts,
    decode,
)
from esp.errors import EspConfigError
from ikev2.events import Address
from tun import PacketDevice, TunDevice
from tun.memory import MemoryTun

# Named, not __name__: run as `python -m daemon.worker` this module is __main__.
log = logging.getLogger("daemon.worker")

HANDOFF_PARTIAL = 0x01
"""Flags octet of a hand-off datagram: the packet is a TCP segment with a partial
checksum (`tun.vnet.split_frame_partial`)."""
ACQUIRES_PER_SECOND = 50
"""Most acquire notices a worker sends per second: each is a control message, and a
host sending to an uncovered network would otherwise send one per packet."""
UNKNOWN_SPIS_PER_SECOND = 20
"""Most unknown-SPI notices a worker sends per second, whatever their sources: the
data plane limits them per remote address, and spoofed ESP from random sources
would otherwise send one control message per packet (the IKE endpoint answers at
most 20 a second overall anyway, RFC 7296 §2.21.4)."""
SETUP_TIMEOUT = 30.0
"""Seconds a new worker waits for its `Setup` before it gives up."""
HOUSEKEEPING_INTERVAL = 1.0
"""Seconds between looks at lingering inbound SAs."""


def lifetime_counters(entry: ChildSaEntry, lingering: bool = False) -> SaCounters:
    """What the main process reads of one own CHILD SA (`ChildSaEntry.status`,
    `daemon.lifetimes`)."""
    inbound, outbound = entry.inbound, entry.outbound
    return SaCounters(
        unique_id=entry.unique_id,
        bytes_in=inbound.byte_count,
        bytes_out=outbound.byte_count,
        packets_in=inbound.packet_count,
        packets_out=outbound.packet_count,
        drops=dict(entry.all_drops()),
        lifetime_in=inbound.lifetime_state().value,
        lifetime_out=outbound.lifetime_state().value,
        lingering=lingering,
    )


def open_tun(setup: Setup) -> PacketDevice:
    """The worker's TUN queue from its passed file descriptor."""
    if setup.tun_memory:
        return MemoryTun(socket.socket(fileno=setup.tun_fd), setup.tun_name)
    tun = TunDevice.from_fd(setup.tun_fd, setup.tun_name, setup.tun_flags)
    tun.uso_writes = setup.tun_uso
    return tun


class Worker:
    """One worker's pump, data plane, control channel and hand-off sockets."""

    def __init__(
        self,
        setup: Setup,
        control: socket.socket,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.setup = setup
        self.index = setup.index
        self.loop = loop
        self.stopped = asyncio.Event()
        self._clock = clock
        self.pump = Pump(
            open_tun(setup),
            # Every UDP socket a worker gets is a NAT-T one (4500 in a daemon).
            nat_port=setup.udp[0].port if setup.udp else 4500,
            on_ike=self._on_ike,
            on_acquire=self._on_acquire,
            on_unknown_spi=self._on_unknown_spi,
            offload=setup.offload,
            # Steered sockets must not coalesce: the kernel steers a GRO batch by its
            # first datagram, whatever the SPIs of the others.
            gro=False,
        )
        self.plane: DataPlane = self.pump.plane
        self.plane.handoff = self._hand_off
        self.pump.adopt(
            {(u.address, u.port): socket.socket(fileno=u.fd) for u in setup.udp},
            {r.address: socket.socket(fileno=r.fd) for r in setup.raw},
        )
        self.handoff: dict[int, socket.socket] = {}
        """The hand-off socket to each other worker, by its index."""
        for h in setup.handoff:
            sock = socket.socket(fileno=h.fd)
            sock.setblocking(False)
            grow_buffers(sock)
            self.handoff[h.peer] = sock
        self.control = Channel(
            control, loop, self._on_message, self.stop, name=f"worker {self.index} control"
        )
        self._notice_second: dict[str, int] = {}
        self._notices: Counter[str] = Counter()
        self._housekeeping: asyncio.TimerHandle | None = None
        self.reading = False
        """Whether it reads its file descriptors (`start`, `QueueAttached`)."""

    def start(self) -> None:
        """Read every file descriptor, and tell the main process. A restarted
        worker, whose queue is still detached, only tells: it reads once the main
        process answers `QueueAttached`, since a detached queue can be neither read
        nor written (the kernel answers EBADFD)."""
        if self.setup.tun_attached:
            self._read_all()
        self.control.send(Ready(self.index, os.getpid()))

    def _read_all(self) -> None:
        if self.reading:
            return
        self.reading = True
        self.pump.start(self.loop)
        for sock in self.handoff.values():
            self.loop.add_reader(sock.fileno(), self._read_handoff, sock)
        self._housekeeping = self.loop.call_later(HOUSEKEEPING_INTERVAL, self._housekeep)

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        """Stop reading; close every socket and the TUN queue (the main process
        keeps its own copies of them for the next worker)."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for sock in self.handoff.values():
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self.handoff.clear()
        self.pump.close()
        self.pump.tun.close()
        self.control.close()

    # ---- control -------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        if isinstance(message, Install):
            self._install(message)
        elif isinstance(message, Remove):
            self.plane.remove(message.unique_id, linger=message.linger)
        elif isinstance(message, Move):
            self._move(message)
        elif isinstance(message, CountersRequest):
            self._answer_counters(message.request)
        elif isinstance(message, Stop):
            self.stop()
        elif isinstance(message, QueueAttached):
            self._read_all()
        else:
            log.warning("worker %d: unexpected %s message", self.index, type(message).TYPE)

    def _install(self, message: Install) -> None:
        event = message.event
        plane = self.plane
        if event.unique_id in plane.entries or event.unique_id in plane.forwards:
            # Installed already: nothing failed, and the main process deletes an SA
            # whose install failed (`Gateway._on_install_failed`).
            log.warning("worker %d: CHILD SA #%d sent twice; kept the first", self.index,
                        event.unique_id)  # fmt: skip
            return
        try:
            if message.owner == self.index:
                plane.install(
                    entry_from_event(event, message.path_mtu), preferred=message.preferred
                )
            else:
                plane.install_forward(
                    forward_entry(event, message.owner, message.path_mtu),
                    preferred=message.preferred,
                )
        except (EspConfigError, ValueError) as exc:
            log.error("worker %d: cannot install CHILD SA #%d: %s", self.index,
                      event.unique_id, exc)  # fmt: skip
            self.control.send(InstallFailed(event.unique_id, str(exc)))

    def _move(self, message: Move) -> None:
        entry = self.plane.entries.get(message.unique_id) or self.plane.forwards.get(
            message.unique_id
        )
        if entry is None:
            return
        entry.local, entry.remote = message.local, message.remote
        entry.udp_encap, entry.mtu = message.udp_encap, message.mtu

    def _answer_counters(self, request: int) -> None:
        plane = self.plane
        sas = [lifetime_counters(entry) for entry in plane.entries.values()]
        sas += [lifetime_counters(entry, lingering=True) for entry in plane.lingering()]
        kernel_drops = self.pump.kernel_drops()
        if self.index != 0:
            # The TUN's transmit drops are the device's, not a queue's: one worker
            # reports them, so the pool's sum counts them once.
            kernel_drops.pop("tun_queue", None)
        totals: dict[str, Any] = {
            "drops": dict(plane.total_drops()),
            "counters": dict(plane.counters),
            "kernel_drops": kernel_drops,
            "retired_traffic": {k: tuple(v) for k, v in plane.retired_traffic.items()},
        }
        for part in counters_parts(request, self.index, sas, totals):
            self.control.send(part)

    def _housekeep(self) -> None:
        self.plane.expire_lingering()
        self._housekeeping = self.loop.call_later(HOUSEKEEPING_INTERVAL, self._housekeep)

    # ---- what goes to the main process -----------------------------------------------

    def _on_ike(self, message: bytes, local: Address, remote: Address) -> None:
        self.control.send(IkeNotice(message, local, remote))

    def _on_unknown_spi(self, spi: int, local: Address, remote: Address) -> None:
        if self._limited("unknown_spi", UNKNOWN_SPIS_PER_SECOND):
            self.plane.counters["unknown_spi_reports_rate_limited"] += 1
            return
        self.control.send(UnknownSpiNotice(spi, local, remote))

    def _on_acquire(self, packet: bytes) -> None:
        if self._limited("acquire", ACQUIRES_PER_SECOND):
            self.plane.counters["acquires_rate_limited"] += 1
            return
        self.control.send(AcquireNotice(packet))

    def _limited(self, kind: str, per_second: int) -> bool:
        # True when this second's notices of `kind` are used up; else counts one.
        second = int(self._clock())
        if self._notice_second.get(kind) != second:
            self._notice_second[kind], self._notices[kind] = second, 0
        if self._notices[kind] >= per_second:
            return True
        self._notices[kind] += 1
        return False

    # ---- hand-off ------------------------------------------------------------------

    def _hand_off(self, owner: int, packets: list[bytes], partial: bool) -> int:
        sock = self.handoff.get(owner)
        if sock is None:
            return 0
        flags = bytes((HANDOFF_PARTIAL if partial else 0,))
        sendmsg = sock.sendmsg
        taken = 0
        for packet in packets:
            try:
                sendmsg((flags, packet))
            except (BlockingIOError, InterruptedError):
                continue  # a full socket loses the packet, as a full TUN queue would
            except OSError:
                break
            taken += 1
        return taken

    def _read_handoff(self, sock: socket.socket) -> None:
        # Runs of one flag go through together, in the order they came, so a flow's
        # packets keep their order.
        plane = self.plane
        run: list[bytes] = []
        marked = False
        plane.hold_sends()
        try:
            for _ in range(BATCH):
                try:
                    data = sock.recv(MAX_DATAGRAM + 1)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if len(data) < 2:
                    continue
                partial = bool(data[0] & HANDOFF_PARTIAL)
                if run and partial != marked:
                    plane.from_handoff(run, marked)
                    run = []
                marked = partial
                run.append(data[1:])
            if run:
                plane.from_handoff(run, marked)
        finally:
            plane.release_sends()


class _WorkerTag(logging.Filter):
    """Puts the worker's number in front of each line: the journal shows the
    workers' lines beside the main process's, from the same modules."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.msg.startswith(self.tag):
            record.msg = self.tag + record.msg
        return True


async def serve(control: socket.socket) -> int:
    """Run one worker until it is told to stop or the main process goes away."""
    loop = asyncio.get_running_loop()
    control.setblocking(False)
    try:
        data = await asyncio.wait_for(loop.sock_recv(control, MAX_MESSAGE), SETUP_TIMEOUT)
    except (TimeoutError, OSError) as exc:
        log.error("data-plane worker: no setup from the main process (%s)", exc)
        return 1
    try:
        setup = decode(data) if data else None
    except ProtocolError as exc:
        log.error("data-plane worker: bad setup: %s", exc)
        return 1
    if not isinstance(setup, Setup):
        log.error("data-plane worker: the first message was not a setup")
        return 1
    setup_logging(setup.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerTag(f"worker {setup.index}: "))
    worker = Worker(setup, control, loop)
    worker.start()
    log.debug("data-plane worker started (pid %d, %d workers)", os.getpid(), setup.count)
    try:
        await worker.stopped.wait()
    finally:
        worker.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.worker", description=__doc__)
    parser.add_argument("--control", type=int, required=True, help="control socket's fd")
    args = parser.parse_args(argv)
    # The main process ends its workers (`Stop`, or closing the control socket)
    # once it has sent its Deletes, and a main that dies closes the socket too. So
    # signals meant for the daemon are not a worker's business: systemd's SIGTERM
    # to the whole control group at a stop, a terminal's SIGINT or SIGHUP.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    setup_logging("info")
    control = socket.socket(fileno=args.control)
    try:
        import uvloop

        return int(uvloop.run(serve(control)))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(serve(control))


if __name__ == "__main__":
    sys.exit(main())
