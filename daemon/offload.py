"""Which kernel offloads the data plane uses, and opening the TUN device with them.

The TUN device is opened with IFF_VNET_HDR, so received TCP segments can be written
back as one coalesced super-packet (one trip through the kernel's stack instead of
one per segment), and port 4500 sends with UDP GSO and receives with UDP GRO. Each
saves the per-packet system call and stack traversal that dominate a Python data
plane.

Received UDP datagrams of one flow are coalesced the same way, into one UDP
segmentation offload (GSO_UDP_L4) write, when the kernel takes those (Linux 6.2 on,
`TunDevice.probe_uso_writes`): a UDP flood through the tunnel then costs the receiving
gateway one TUN write and one trip through its stack per ~45 datagrams.

TSO on the TUN device (TUNSETOFFLOAD CSUM | TSO4 | TSO6: read 64 KiB TCP super-packets
and cut them here) is not on for every peer: cutting is cheap, but every segment then
needs its TCP checksum computed in Python, which measured here costs more than the
single-packet read it saves (the kernel cuts and checksums in C). Between two lockgates
no checksum is computed: the segments keep the kernel's partial checksum, marked
inside ESP, and the receiving kernel completes them (`daemon.dataplane`). In mode
``tso-lockgate`` the pump turns TSO on for a TUN while every CHILD SA it sends into has
that agreement, and off otherwise (`Pump.tso_auto`). TSO needs CSUM, so while it is on
every packet comes with a partial checksum, and UDP datagrams have theirs completed
in Python (`tun.vnet.split_frame`). It is not the default: on the 2-core development
machine lockgate ↔ lockgate measured slower with it (TCP and above all UDP) than with
the kernel cutting and checksumming in C.

``LOCKGATE_OFFLOAD`` in the environment chooses: ``no-tso`` (the default),
``tso-lockgate`` (TSO only while every peer of the TUN is a lockgate that completes
partial checksums), ``all`` (TSO always; partial checksums towards the lockgates that
agreed) or ``off`` (plain TUN packets, one datagram per system call, and no partial
checksums). A kernel that refuses an offload gets the plain path for it.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping

from tun import Offload, TunDevice, TunError

log = logging.getLogger(__name__)

ENV_SWITCH = "LOCKGATE_OFFLOAD"
"""Environment variable naming an `OffloadMode`."""
TUN_OFFLOADS = Offload.CSUM | Offload.TSO4 | Offload.TSO6
"""What the TUN device may hand over unfinished (no UDP: USO needs both USO4 and
USO6 and newer kernels, and UDP inner traffic is not where the volume is)."""

TUN_QUEUE_LENGTH = 2000
"""Packets the kernel queues for us to read, instead of the TUN driver's 500: a burst
that arrives while the pump is busy sealing the last one (or while a busy machine
has not scheduled it) is kept, not dropped (a drop costs a TCP sender a
retransmission and half its window). Measured in the benchmark's namespaces (ESP in
UDP, 4 s iperf3 runs): 1000 still dropped 200-6000 packets per run, 2000 at most 45,
4000 none, with no higher round trip under load (BBR keeps the queue short), so 2000.
Not much more: the queue is plain FIFO, so every packet in it is delay for the next
one, about 15 ms at 1.5 Gbit/s when full."""


class OffloadMode(enum.Enum):
    """How much work the data plane leaves to (or takes from) the kernel."""

    ALL = "all"
    """TSO reads, coalesced TUN writes (TCP, and UDP where the kernel takes it), UDP
    GSO and GRO."""
    NO_TSO = "no-tso"
    """As ALL, but TUN reads are single packets the kernel cut and checksummed (the
    default)."""
    TSO_LOCKGATE = "tso-lockgate"
    """As NO_TSO, but TSO is on for a TUN while every CHILD SA it sends into is with
    a lockgate that completes partial checksums (`Pump.tso_auto`)."""
    OFF = "off"
    """Plain TUN packets and one datagram per system call."""


DEFAULT_MODE = OffloadMode.NO_TSO


def offload_mode(environ: Mapping[str, str] | None = None) -> OffloadMode:
    """The mode ``LOCKGATE_OFFLOAD`` asks for (`DEFAULT_MODE` when unset or unknown;
    "0", "no", "false" mean OFF)."""
    value = (os.environ if environ is None else environ).get(ENV_SWITCH, DEFAULT_MODE.value)
    value = value.strip().lower()
    if value in {"0", "no", "false", "off"}:
        return OffloadMode.OFF
    try:
        return OffloadMode(value)
    except ValueError:
        log.warning(
            "%s=%r is not one of all, no-tso, tso-lockgate, off: using %s",
            ENV_SWITCH,
            value,
            DEFAULT_MODE.value,
        )
        return DEFAULT_MODE


def open_tun(
    name: str, mode: OffloadMode = DEFAULT_MODE, *, multi_queue: bool = False
) -> TunDevice:
    """Open the TUN device: with virtio-net headers unless ``mode`` is OFF, and with
    TSO in mode ALL when the kernel agrees; `multi_queue` for data-plane workers
    (`TunDevice.add_queue` then gives each one its queue)."""
    if mode is OffloadMode.OFF:
        return TunDevice.open(name, multi_queue=multi_queue)
    tun = TunDevice.open(name, vnet_hdr=True, multi_queue=multi_queue)
    try:
        tun.set_queue_length(TUN_QUEUE_LENGTH)
    except TunError as exc:
        log.info("%s", exc)
    if mode is OffloadMode.ALL:
        try:
            tun.set_offload(TUN_OFFLOADS)
        except TunError as exc:
            log.info("TUN segmentation offload refused, reading single packets: %s", exc)
    try:
        if not tun.probe_uso_writes():
            log.info("the kernel takes no UDP segmentation offload writes: UDP goes alone")
    except TunError as exc:  # the offloads could not be put back: the TUN is unusable
        tun.close()
        raise TunError(f"{name}: {exc}") from exc
    return tun
