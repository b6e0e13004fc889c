"""`RemoteAccess.reload`: which servers a reloaded `[remote_access.*]` stops, starts and
restarts, in which order, and that the others are left alone (in memory: the servers
are stand-ins; the namespace test runs the real ones with the stock client)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from conf.model import Config, GatewayConfig, RemoteAccessConfig
from daemon.ssl_vpn import RemoteAccess, interface_name
from testkit.p2c_config import config as server_config


class FakeServer:
    def __init__(self, config: RemoteAccessConfig, events: list[str]) -> None:
        self.config, self.events = config, events

    async def close(self) -> None:
        await asyncio.sleep(0)
        self.events.append(f"stop {self.config.name}")


def gateway_config(servers: dict[str, RemoteAccessConfig]) -> Config:
    gateway = GatewayConfig(addresses=(), id="gw", interface="lg0")
    return Config(gateway=gateway, peers={}, connections={}, remote_access=servers)


def test_reload_stops_removed_restarts_changed_starts_added(tmp_path: Path) -> None:
    events: list[str] = []
    a, b, c = (server_config(tmp_path, name=n, port=p) for n, p in (("a", 1), ("b", 2), ("c", 3)))
    ra = RemoteAccess()

    async def start_one(server: RemoteAccessConfig, config: Config, links: Any) -> None:
        tun = interface_name(config.gateway, ra._tun_index(server.name))
        events.append(f"start {server.name} on {tun}")
        ra.servers[server.name] = FakeServer(server, events)  # type: ignore[assignment]

    async def scenario() -> list[str]:
        ra._start_one = start_one  # type: ignore[method-assign,assignment]
        await ra.start(gateway_config({"a": a, "b": b, "c": c}), links=object())  # type: ignore[arg-type]
        assert events == ["start a on lg0p0", "start b on lg0p1", "start c on lg0p2"]
        del events[:]
        changed_b = dataclasses.replace(b, dns=())
        d = server_config(tmp_path, name="d", port=1)  # a's port, free once a stops
        answer = ra.reload(gateway_config({"b": changed_b, "c": c, "d": d}))
        assert answer == "; remote-access servers 1 added, 1 changed, 1 removed, 1 unchanged"
        await ra._reloading  # type: ignore[misc]
        assert ra.reload(gateway_config({"b": changed_b, "c": c, "d": d})).endswith(
            "0 added, 0 changed, 0 removed, 3 unchanged"
        )
        assert ra._reloading is not None and ra._reloading.done()  # nothing to do
        return events

    done = asyncio.run(scenario())
    # Stops first (a's port and TUN number are free for d), then the starts; c untouched.
    assert done == ["stop a", "stop b", "start b on lg0p1", "start d on lg0p0"]
    assert ra.servers["b"].config.dns == () and set(ra.servers) == {"b", "c", "d"}


def test_reload_without_servers_says_nothing_of_them() -> None:
    assert RemoteAccess().reload(gateway_config({})) == ""
