"""A small classic-BPF interpreter: runs `daemon.steering`'s programs without a kernel.

Only the opcodes those programs use; any other raises `UnknownOpcode`, so a program
that grew a new one fails its fast test until the interpreter learns it. Semantics as
the kernel's (Documentation/networking/filter.rst, net/core/filter.c): A and X are
32-bit unsigned, word loads are big-endian, a load past the end of the packet ends
the program with 0, and a program must end with a return and jump only forward.
"""

from __future__ import annotations

from collections.abc import Sequence

from daemon.steering import (
    BPF_A,
    BPF_ABS,
    BPF_ADD,
    BPF_ALU,
    BPF_B,
    BPF_CLASS_MASK,
    BPF_IND,
    BPF_JEQ,
    BPF_JGE,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_MOD,
    BPF_MSH,
    BPF_RET,
    BPF_SUB,
    BPF_W,
    BPF_X,
    Instruction,
)

_U32 = 0xFFFF_FFFF
_WORD = 4
_IHL_MASK = 0x0F  # the low nibble of an IPv4 header's first octet
_IHL_UNIT = 4  # IHL counts 32-bit words


class UnknownOpcode(ValueError):
    pass


class _OutOfBounds(Exception):
    pass


def _word(packet: bytes, offset: int) -> int:
    if offset < 0 or offset + _WORD > len(packet):
        raise _OutOfBounds
    return int.from_bytes(packet[offset : offset + _WORD], "big")


def _octet(packet: bytes, offset: int) -> int:
    if offset < 0 or offset >= len(packet):
        raise _OutOfBounds
    return packet[offset]


def validate(program: Sequence[Instruction]) -> None:
    """What the kernel's checker refuses (bpf_check_classic), for the opcodes we know."""
    if not program or program[-1][0] & BPF_CLASS_MASK != BPF_RET:
        raise ValueError("a program must end with a return")
    for pc, (code, jt, jf, k) in enumerate(program):
        if code & BPF_CLASS_MASK == BPF_JMP and max(pc + 1 + jt, pc + 1 + jf) >= len(program):
            raise ValueError(f"instruction {pc} jumps past the end")
        if code == BPF_ALU | BPF_MOD | BPF_K and k == 0:
            raise ValueError(f"instruction {pc} takes a modulo by zero")


def run(program: Sequence[Instruction], packet: bytes) -> int:
    """The program's result for ``packet`` (for a reuseport program the socket index,
    for a socket filter the octets to keep)."""
    validate(program)
    a = x = 0
    pc = 0
    try:
        while True:
            code, jt, jf, k = program[pc]
            pc += 1
            if code == BPF_LD | BPF_W | BPF_LEN:
                a = len(packet)
            elif code == BPF_LD | BPF_W | BPF_ABS:
                a = _word(packet, k)
            elif code == BPF_LD | BPF_W | BPF_IND:
                a = _word(packet, x + k)
            elif code == BPF_LDX | BPF_B | BPF_MSH:
                x = (_octet(packet, k) & _IHL_MASK) * _IHL_UNIT
            elif code == BPF_ALU | BPF_ADD | BPF_K:
                a = (a + k) & _U32
            elif code == BPF_ALU | BPF_SUB | BPF_X:
                a = (a - x) & _U32
            elif code == BPF_ALU | BPF_MOD | BPF_K:
                a %= k
            elif code == BPF_JMP | BPF_JEQ | BPF_K:
                pc += jt if a == k else jf
            elif code == BPF_JMP | BPF_JGE | BPF_K:
                pc += jt if a >= k else jf
            elif code == BPF_RET | BPF_K:
                return k
            elif code == BPF_RET | BPF_A:
                return a
            else:
                raise UnknownOpcode(f"instruction {pc - 1}: opcode {code:#06x}")
    except _OutOfBounds:
        return 0
