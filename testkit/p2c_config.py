"""A remote-access server's configuration with the lab's defaults, for tests that
build one in memory: an SSL server "office" with a client pool in 192.0.2.0/24 and
its users file in `tmp_path`; keywords override any field."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from conf.model import RemoteAccessConfig

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network


def config(tmp_path: Path, **kw: object) -> RemoteAccessConfig:
    values: dict[str, object] = {
        "name": "office",
        "protocol": "ssl",
        "client_pool": NET("192.0.2.0/24"),
        "local_subnets": (NET("203.0.113.0/24"),),
        "users": tmp_path / "office.users",
        "address": "vpn.example.net",
        "dns": (IP("203.0.113.53"),),
    }
    values.update(kw)
    return RemoteAccessConfig(**values)  # type: ignore[arg-type]
