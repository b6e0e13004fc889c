"""A lockgate daemon as the tests run it: a well-formed configuration (`GOOD`), and
for the namespace tests a configuration generator and `start_daemon`, which spawns
`lockgate daemon` in a namespace and waits until its control socket answers."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conf.ike import ike_connections
from conf.load import load_config
from daemon.control import ControlClientError, request
from daemon.gateway import Gateway
from daemon.lab.netns import Namespace, Process, SiteToSite
from ikev2.endpoint import Endpoint
from tun import memory_tun_pair

PSK = "netns-test-psk-NOT-SECRET-0123456789"


def config(
    *,
    me: str,
    peer: str,
    my_id: str | None = None,
    local: list[str],
    remote: list[str],
    start: str,
    encap: str = "auto",
    esp: str = "aes128gcm16",
    extra: str = "",
    gateway_extra: str = "",
) -> str:
    return f"""
[gateway]
addresses = ["{me}"]
id = "{my_id or me}"
interface = "lgtest0"
{gateway_extra}

[peers.main]
address = "{peer}"
id = "{peer}"
psk = "{PSK}"

[connections.site]
peer = "main"
local_subnets = {json.dumps(local)}
remote_subnets = {json.dumps(remote)}
esp_proposals = ["{esp}"]
start = "{start}"
encap = "{encap}"
{extra}
"""


@dataclass
class Daemon:
    ns: Namespace
    proc: Process
    socket: str
    config: Path

    def status(self) -> dict[str, Any]:
        result = request(self.socket, {"command": "status"}, timeout=5)
        assert isinstance(result, dict)
        return result

    def command(self, command: str, **kw: str | bool) -> Any:
        return request(self.socket, {"command": command, **kw}, timeout=30)

    def sas(self, connection: str | None = None) -> list[dict[str, Any]]:
        sas = self.status()["sas"]
        return [sa for sa in sas if connection is None or sa["connection"] == connection]


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ControlClientError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_daemon(
    topo: SiteToSite, ns: Namespace, name: str, text: str, env: dict[str, str] | None = None
) -> Daemon:
    path = topo.lab.tmpdir / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o600)
    sock = str(topo.lab.tmpdir / f"{name}.sock")
    proc = ns.spawn(
        [sys.executable, "-m", "daemon.cli", "-s", sock, "daemon", "-c", str(path),
         "--log-level", "debug"],
        name=f"lockgate-{name}",
        log_path=topo.lab.tmpdir / f"{name}.log",
        env=env,
    )  # fmt: skip
    daemon = Daemon(ns, proc, sock, path)
    try:
        wait_until(lambda: bool(daemon.status()), f"{name} to listen", timeout=15)
    except AssertionError:
        raise AssertionError(f"daemon {name} did not start:\n{proc.log()}") from None
    return daemon


def pair_configs(
    topo: SiteToSite, extra_a: str = "", extra_b: str = "", esp: str = "aes128gcm16"
) -> tuple[str, str]:
    """The two gateways' files for one IPv4 connection, with the defaults otherwise: A
    initiates, B waits; `extra_a` and `extra_b` add keys to each connection, `esp` is
    both sides' ESP proposal."""
    a = config(
        me=topo.gw_a_wan4,
        peer=topo.gw_b_wan4,
        local=[topo.site_a.subnet4],
        remote=[topo.site_b.subnet4],
        start="initiate",
        esp=esp,
        extra=extra_a,
    )
    b = config(
        me=topo.gw_b_wan4,
        peer=topo.gw_a_wan4,
        local=[topo.site_b.subnet4],
        remote=[topo.site_a.subnet4],
        start="wait",
        esp=esp,
        extra=extra_b,
    )
    return a, b


def start_pair(topo: SiteToSite, a_text: str, b_text: str) -> tuple[Daemon, Daemon]:
    """Start gateway B (the responder) and then A, and wait for their CHILD SA; a
    tunnel that does not come up fails with both daemons' logs."""
    b = start_daemon(topo, topo.gw_b, "gwB", b_text)
    a = start_daemon(topo, topo.gw_a, "gwA", a_text)
    try:
        wait_until(lambda: bool(a.sas()) and bool(b.sas()), "the CHILD SA", timeout=20)
    except AssertionError:
        raise AssertionError(
            f"no tunnel:\n--- A ---\n{a.proc.log()[-3000:]}\n--- B ---\n{b.proc.log()[-3000:]}"
        ) from None
    return a, b


GOOD = """
[gateway]
addresses = ["198.51.100.1"]
id = "198.51.100.1"

[peers.cloud]
address = "198.51.100.2"
psk = "demo-only-not-a-secret-0123456789"

[connections.dc-cloud]
peer = "cloud"
local_subnets = ["192.0.2.0/24"]
remote_subnets = ["203.0.113.0/24"]
"""


@contextlib.contextmanager
def memory_gateway(path: Path) -> Iterator[Gateway]:
    """A `daemon.gateway.Gateway` on the configuration at `path`, its peers added, on
    an in-memory TUN (no sockets, no netlink, no root); the TUN pair is closed on exit."""
    gateway = Gateway(str(path), socket_path=str(path.with_suffix(".sock")))
    gateway.config = load_config(path)
    ikes = ike_connections(gateway.config)
    ours, kernel_side = memory_tun_pair()
    gateway._use_pump(ours)
    gateway._use_endpoint(Endpoint(ikes))
    try:
        for ike in ikes:
            gateway.add_peer(ike)
        yield gateway
    finally:
        ours.close()
        kernel_side.close()
