"""Many UDP flows through a tunnel, each numbered, to see that every packet of a flow
arrives and in the order it was sent (a flow must stay in one data-plane worker).

    python -m testkit.flows serve PORT SECONDS       prints "ready", then one JSON line
    python -m testkit.flows send ADDRESS PORT FLOWS COUNT

The sender uses FLOWS source ports and sends COUNT numbered datagrams on each, in
turns, paced a little so that no queue overflows; the receiver reports, per source
port, how many arrived and how many came after a higher number of their flow.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

_NUMBER = struct.Struct("!I")
PAYLOAD = 200
"""Octets per datagram (its number, then filler)."""
PACE_EVERY = 64
"""Datagrams between two short pauses of the sender."""


def serve(port: int, seconds: float) -> dict[str, dict[str, int]]:
    """Receive until `seconds` pass or one second passes without a datagram."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("::", port))
    print("ready", flush=True)
    flows: dict[str, dict[str, int]] = {}
    highest: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    started = False
    while time.monotonic() < deadline:
        sock.settimeout(1.0 if started else max(0.1, deadline - time.monotonic()))
        try:
            data, source = sock.recvfrom(2048)
        except TimeoutError:
            if started:
                break
            continue
        started = True
        key = str(source[1])
        (number,) = _NUMBER.unpack_from(data)
        flow = flows.setdefault(key, {"received": 0, "reordered": 0})
        flow["received"] += 1
        if number < highest.get(key, -1):
            flow["reordered"] += 1
        highest[key] = max(highest.get(key, -1), number)
    sock.close()
    return flows


def send(address: str, port: int, flows: int, count: int) -> None:
    """`count` numbered datagrams on each of `flows` source ports, in turns."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(flows)]
    filler = bytes(PAYLOAD - _NUMBER.size)
    sent = 0
    for number in range(count):
        for sock in socks:
            sock.sendto(_NUMBER.pack(number) + filler, (address, port))
            sent += 1
            if sent % PACE_EVERY == 0:
                time.sleep(0.002)
    for sock in socks:
        sock.close()


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 3:
        print(json.dumps(serve(int(argv[1]), float(argv[2]))), flush=True)
        return 0
    if argv[:1] == ["send"] and len(argv) == 5:
        send(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
