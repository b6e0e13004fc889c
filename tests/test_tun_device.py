"""`TunDevice.from_fd` checks what it is given (no root: nothing is opened)."""

from __future__ import annotations

import os

import pytest

from tun import TunDevice, TunError
from tun.device import IFF_TUN


def test_from_fd_refuses_what_is_not_a_tun_queue() -> None:
    with pytest.raises(TunError, match="not a TUN"):
        TunDevice.from_fd(0, "lgmq0", 0)
    with pytest.raises(TunError, match="interface name"):
        TunDevice.from_fd(0, "a/b", IFF_TUN)
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(TunError, match=f"fd {read_end}"):
        TunDevice.from_fd(read_end, "lgmq0", IFF_TUN)
