"""Steering inbound ESP to the worker that owns its SPI, inside the kernel.

With ``[gateway] workers = N`` the data plane runs in N worker processes and the IKE
endpoint stays in the main process. The one rule everything rests on:

    **the worker of an inbound ESP packet is ``spi % N``** (`worker_of_spi`)

where the SPI is the first 4 octets of the ESP header in network byte order (RFC 4303
§2.1); the IKE side chooses our inbound SPIs so that this holds. Two classic BPF
programs apply the rule where packets arrive, so no packet crosses a process:

- ESP in UDP (RFC 3948) on port 4500: the main process opens one SO_REUSEPORT group
  of 1 + N sockets (`open_steered_udp`) and attaches `reuseport_program`
  (SO_ATTACH_REUSEPORT_CBPF). It picks the socket: index 0 (the main process's) for
  IKE behind the non-ESP marker and NAT keepalives, ``1 + spi % N`` for ESP.
- ESP without NAT (raw IP protocol 50): every raw socket gets its own copy of each
  packet, so each worker's raw socket gets `raw_esp_filter` (SO_ATTACH_FILTER), which
  keeps only that worker's SPIs.

A program is a list of `Instruction`, the fields of the kernel's ``struct sock_filter``
(<linux/filter.h>); `pack_program` gives the bytes the kernel takes.

How the kernel runs them (net/core/sock_reuseport.c, net/core/filter.c, and
Documentation/networking/filter.rst):
- A reuseport program sees the UDP *payload*: UDP's lookup passes
  ``hdr_len = sizeof(struct udphdr)`` and the kernel pulls that much before running
  it, so offset 0 is the SPI or the non-ESP marker, and ``len`` is the payload length.
- Its result is an index into the group's sockets. An index >= the group size is
  ignored and the kernel falls back to picking a socket by the flow hash, which would
  put ESP on a random worker and IKE on a worker; our program never returns one.
- A load past the end of the packet ends a classic program with the result 0. The
  programs test the length first anyway, so the rule does not hang on that detail.
- A socket filter's result is how many octets of the packet to keep: 0 drops it.

The group's indexes are the order the sockets joined in, and they are not stable: when
a socket of the group closes, the kernel moves the *last* socket into its slot
(``reuseport_detach_sock``): the last worker's socket would then receive the closed
one's SPIs, and its own would fall outside the group. So the main process keeps every
socket of the group open for the daemon's whole life, and gives a worker a *copy* of
its socket's fd (``pass_fds``); a worker that dies or restarts closes only its copy,
and no index ever moves.

The program sees one skb: a coalesced batch is steered by its first segment, and every
segment of it is queued to that socket (split again if the socket has no UDP_GRO).
UDP GRO coalesces the datagrams of one address and port pair whatever their SPIs, and
between two lockgates every per-worker SA shares that pair: so steered sockets keep
UDP_GRO off (`open_steered_udp` does not turn it on; nor may rx-udp-gro-forwarding or
rx-gro-list on the interface), and a sender's UDP GSO batch carries one SA's packets
(`daemon.pump.Pump.send` sends per SA; a GSO batch crosses a veth whole). A worker
still drops and counts an SPI it does not own, as any unknown SPI.

Port 4500 taken with SO_REUSEPORT would let another process of the same user join the
group; so the daemon claims UDP 500 (no SO_REUSEPORT, `daemon.pump.open_udp`) before
it opens the group, and a second lockgate fails there. A process binding 4500
without SO_REUSEPORT is refused by the kernel.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence

from daemon.pump import open_udp

Instruction = tuple[int, int, int, int]
"""One ``struct sock_filter``: (code, jt, jf, k). ``jt``/``jf`` are how many
instructions a conditional jump skips when true/false; ``k`` is the operand."""

# Classic BPF opcodes: <linux/bpf_common.h> and <linux/filter.h>. An opcode is a class
# ORed with its size, mode, operation and source fields.
BPF_LD = 0x00  # class: load into A
BPF_LDX = 0x01  # class: load into X
BPF_ALU = 0x04  # class: arithmetic on A
BPF_JMP = 0x05  # class: conditional jump
BPF_RET = 0x06  # class: return
BPF_CLASS_MASK = 0x07
BPF_W = 0x00  # size: 32-bit word, read in network byte order
BPF_B = 0x10  # size: octet
BPF_ABS = 0x20  # mode: packet[k]
BPF_IND = 0x40  # mode: packet[X + k]
BPF_LEN = 0x80  # mode: the packet's length
BPF_MSH = 0xA0  # mode (LDX|B only): X = 4 * (packet[k] & 0xf), an IPv4 header's length
BPF_SUB = 0x10  # ALU operation
BPF_ADD = 0x00  # ALU operation
BPF_MOD = 0x90  # ALU operation (Linux 3.7)
BPF_JEQ = 0x10  # jump operation: A == operand
BPF_JGE = 0x30  # jump operation: A >= operand, unsigned
BPF_K = 0x00  # source: the constant k
BPF_X = 0x08  # source: register X
BPF_A = 0x10  # return source: register A

# <asm-generic/socket.h>
SO_ATTACH_FILTER = 26
SO_ATTACH_REUSEPORT_CBPF = 51

_SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
_SOCK_FPROG = struct.Struct("@HP")  # struct sock_fprog: unsigned short len, filter pointer
BPF_MAXINSNS = 4096  # <linux/bpf_common.h>: the longest classic program the kernel takes
_MAX_JUMP = 0xFF  # jt/jf are octets

SPI_LEN = 4  # RFC 4303 §2.1: the SPI, the first field of the ESP header
MAIN_INDEX = 0
"""The reuseport group's socket of the main process: IKE and NAT keepalives."""
FIRST_WORKER_INDEX = 1
"""Worker w's socket is index ``FIRST_WORKER_INDEX + w`` of the group."""
# RFC 3948 §2.2: IKE on port 4500 starts with four zero octets (the non-ESP marker),
# which can never be an SPI (RFC 4303 §2.1 reserves SPI 0).
NON_ESP_MARKER_WORD = 0
KEEP_PACKET = 0xFFFF_FFFF
"""A socket filter's result that keeps the whole packet (it says how many octets to
keep, and the kernel never keeps more than there are)."""
DROP_PACKET = 0


def worker_of_spi(spi: int, workers: int) -> int:
    """The worker that receives inbound ESP with this SPI (0-based)."""
    _check_workers(workers)
    return spi % workers


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")


def _check_worker(worker: int, workers: int) -> None:
    _check_workers(workers)
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is not one of 0..{workers - 1}")


class _Assembler:
    """Builds a program whose conditional jumps name labels instead of counting."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0) -> None:
        self._code.append((code, None, None, k))

    def jump(self, code: int, k: int, if_true: str | None, if_false: str | None) -> None:
        """A conditional jump; None means the next instruction."""
        self._code.append((code, if_true, if_false, k))

    def label(self, name: str) -> None:
        self._labels[name] = len(self._code)

    def program(self) -> list[Instruction]:
        out: list[Instruction] = []
        for pc, (code, if_true, if_false, k) in enumerate(self._code):
            out.append((code, self._skip(pc, if_true), self._skip(pc, if_false), k))
        if len(out) > BPF_MAXINSNS or out[-1][0] & BPF_CLASS_MASK != BPF_RET:
            raise ValueError("a classic BPF program ends with a return, within BPF_MAXINSNS")
        return out

    def _skip(self, pc: int, target: str | None) -> int:
        if target is None:
            return 0
        skip = self._labels[target] - pc - 1
        if not 0 <= skip <= _MAX_JUMP:
            raise ValueError(f"jump to {target} out of reach ({skip})")
        return skip


def reuseport_program(workers: int) -> list[Instruction]:
    """The SO_ATTACH_REUSEPORT_CBPF program of a port-4500 group of 1 + ``workers``
    sockets: the index of the socket a datagram goes to.

    0 (`MAIN_INDEX`) for a payload shorter than an SPI (a NAT keepalive is one 0xFF
    octet, RFC 3948 §2.3) or starting with the non-ESP marker (IKE, RFC 3948 §2.2);
    else ``1 + spi % workers``.
    """
    _check_workers(workers)
    asm = _Assembler()
    asm.op(BPF_LD | BPF_W | BPF_LEN)
    asm.jump(BPF_JMP | BPF_JGE | BPF_K, SPI_LEN, None, "main")
    asm.op(BPF_LD | BPF_W | BPF_ABS, 0)  # the SPI, or the non-ESP marker
    asm.jump(BPF_JMP | BPF_JEQ | BPF_K, NON_ESP_MARKER_WORD, "main", None)
    asm.op(BPF_ALU | BPF_MOD | BPF_K, workers)
    asm.op(BPF_ALU | BPF_ADD | BPF_K, FIRST_WORKER_INDEX)
    asm.op(BPF_RET | BPF_A)
    asm.label("main")
    asm.op(BPF_RET | BPF_K, MAIN_INDEX)
    return asm.program()


def raw_esp_filter(worker: int, workers: int, family: socket.AddressFamily) -> list[Instruction]:
    """The SO_ATTACH_FILTER program of worker ``worker``'s raw IP-protocol-50 socket of
    ``family``: keep ESP whose ``spi % workers == worker``, drop the rest.

    An IPv4 raw socket's filter sees the IP header first, whose length varies with its
    options (IHL, RFC 791 §3.1), so the SPI is read at X = 4 * IHL (the BPF_MSH load);
    an IPv6 raw socket's sees the ESP header at once (RFC 3542 §3: no IPv6 header on
    raw IPv6 sockets). A packet too short to hold an SPI goes to worker 0, whose data
    plane counts it as malformed, as a single process would.
    """
    _check_worker(worker, workers)
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"no raw ESP filter for address family {family!r}")
    short = "keep" if worker == 0 else "drop"
    asm = _Assembler()
    if family == socket.AF_INET:
        asm.op(BPF_LDX | BPF_B | BPF_MSH, 0)  # X = the IPv4 header's length
        asm.op(BPF_LD | BPF_W | BPF_LEN)
        asm.op(BPF_ALU | BPF_SUB | BPF_X)  # A = the octets after the IP header
        asm.jump(BPF_JMP | BPF_JGE | BPF_K, SPI_LEN, None, short)
        asm.op(BPF_LD | BPF_W | BPF_IND, 0)  # the SPI at X
    else:
        asm.op(BPF_LD | BPF_W | BPF_LEN)
        asm.jump(BPF_JMP | BPF_JGE | BPF_K, SPI_LEN, None, short)
        asm.op(BPF_LD | BPF_W | BPF_ABS, 0)
    asm.op(BPF_ALU | BPF_MOD | BPF_K, workers)
    asm.jump(BPF_JMP | BPF_JEQ | BPF_K, worker, None, "drop")
    asm.label("keep")
    asm.op(BPF_RET | BPF_K, KEEP_PACKET)
    asm.label("drop")
    asm.op(BPF_RET | BPF_K, DROP_PACKET)
    return asm.program()


def pack_program(program: Sequence[Instruction]) -> bytes:
    """The program as the kernel's array of ``struct sock_filter`` (host byte order)."""
    return b"".join(_SOCK_FILTER.pack(*insn) for insn in program)


def _attach(sock: socket.socket, option: int, program: Sequence[Instruction]) -> None:
    # struct sock_fprog points at the instructions; the buffer lives through the call
    # and the kernel copies the program.
    buffer = ctypes.create_string_buffer(pack_program(program))
    fprog = _SOCK_FPROG.pack(len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, option, fprog)


def attach_raw_esp_filter(sock: socket.socket, worker: int, workers: int) -> None:
    """Make a raw ESP socket (`daemon.pump.open_raw_esp`) deliver only worker
    ``worker``'s SPIs. Packets that arrived before this call stay queued: attach it
    before the socket is read, or drain it once after."""
    _attach(sock, SO_ATTACH_FILTER, raw_esp_filter(worker, workers, sock.family))


def open_steered_udp(address: str, port: int, workers: int) -> list[socket.socket]:
    """Bind 1 + ``workers`` UDP sockets to ``address``:``port`` as one SO_REUSEPORT
    group steered by `reuseport_program`: the socket at position i of the list is
    index i of the group (0 for the main process, 1 + w for worker w).

    Each socket has the options of `daemon.pump.open_udp`. The caller keeps every one
    open for the daemon's life and hands workers copies of the fds (see the module's
    docstring: closing one would move another's index). All or nothing: on an error
    the sockets bound so far are closed and the error is raised.
    """
    _check_workers(workers)
    group: list[socket.socket] = []
    try:
        group.append(open_udp(address, port, reuse_port=True))
        # The program belongs to the group, not the socket, and is attached while the
        # group is the main socket alone: while the others join, an index not yet
        # there falls back to the flow hash over those that are.
        _attach(group[MAIN_INDEX], SO_ATTACH_REUSEPORT_CBPF, reuseport_program(workers))
        for _ in range(workers):
            group.append(open_udp(address, port, reuse_port=True))
    except OSError:
        for sock in group:
            sock.close()
        raise
    return group
