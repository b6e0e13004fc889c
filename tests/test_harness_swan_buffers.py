"""`testkit.strongswan.grow_udp_buffers`: the benchmark's strongSwan baseline gets
lockgate's socket buffers by taking a duplicate of charon's sockets (pidfd_getfd).

A child process stands in for charon: it owns a UDP and a TCP socket and prints the
buffer sizes it sees on its own descriptors once told to, so the check reads what the
owner of the socket sees, not the duplicate.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from testkit.strongswan import grow_udp_buffers

pytestmark = pytest.mark.netns  # root: pidfd_getfd needs ptrace rights over the target

CHILD = """
import json, socket, sys
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
print(json.dumps({"udp": udp.fileno(), "tcp": tcp.fileno()}), flush=True)
sys.stdin.readline()
sizes = {
    name: [s.getsockopt(socket.SOL_SOCKET, o) for o in (socket.SO_RCVBUF, socket.SO_SNDBUF)]
    for name, s in (("udp", udp), ("tcp", tcp))
}
print(json.dumps(sizes), flush=True)
"""


def test_only_the_udp_sockets_of_the_process_grow() -> None:
    size = 3 * 1024 * 1024
    with subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        fds = json.loads(child.stdout.readline())
        grown = grow_udp_buffers(child.pid, size)
        child.stdin.write("\n")
        child.stdin.flush()
        sizes = json.loads(child.stdout.readline())
        child.wait(timeout=10)
    assert [fd for fd, _ in grown] == [fds["udp"]]
    # Linux doubles what it is given (socket(7)), for its bookkeeping.
    assert sizes["udp"] == [2 * size, 2 * size]
    assert all(value < size for value in sizes["tcp"])
