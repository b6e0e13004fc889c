"""`[metrics]`: the configuration, the collector over a gateway in memory, and the
HTTP endpoint on the event loop (no root: an in-memory TUN, a loopback socket)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conf import ConfigError, loads_config
from daemon.gateway import Gateway
from daemon.metrics import MetricsServer, registry_for
from ikev2.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from testkit.daemon import memory_gateway
from testkit.dataplane import echo_request, events, ipv4

CONFIG = """
[gateway]
addresses = ["198.51.100.1"]
id = "198.51.100.1"

[peers.main]
address = "198.51.100.2"
psk = "metrics-test-psk-NOT-SECRET-0123"

[connections.site]
peer = "main"
local_subnets = ["192.0.2.0/24", "2001:db8:a::/64"]
remote_subnets = ["203.0.113.0/24", "2001:db8:b::/64"]
start = "wait"
"""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    path = tmp_path / "gw.toml"
    path.write_text(CONFIG)
    with memory_gateway(path) as gw:
        yield gw


def established(ike_sa_id: int = 7, *, initiator: bool = True) -> IkeSaEstablished:
    return IkeSaEstablished(
        connection="main",
        ike_sa_id=ike_sa_id,
        initiator=initiator,
        spi_i=1,
        spi_r=2,
        local=("198.51.100.1", 500),
        remote=("198.51.100.2", 500),
        local_id="198.51.100.1",
        remote_id="198.51.100.2",
        suite="aes256gcm16-prfsha384-x25519",
        nat_local=False,
        nat_remote=False,
    )


def scrape(gateway: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed back: (name, sorted labels) -> value."""
    text = generate_latest(registry_for(gateway)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def install(
    gateway: Gateway, uid: int = 1, rekey_of: int | None = None
) -> tuple[ChildSaInstalled, ChildSaInstalled]:
    ours, theirs = events("aes256gcm16", udp=False, uid=uid)
    ours = dataclasses.replace(ours, connection="main", ike_sa_id=7, rekey_of=rekey_of)
    gateway._handle_event(ours)
    return ours, theirs


def test_listen_is_parsed_and_absent_means_off() -> None:
    assert loads_config(CONFIG).metrics is None
    metrics = loads_config(CONFIG + '\n[metrics]\nlisten = "127.0.0.1:9273"\n').metrics
    assert metrics is not None and (metrics.host, metrics.port) == ("127.0.0.1", 9273)
    six = loads_config(CONFIG + '\n[metrics]\nlisten = "[2001:db8::1]:9273"\n').metrics
    assert six is not None and (six.host, six.port) == ("2001:db8::1", 9273)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('listen = "127.0.0.1"', "metrics.listen"),
        ('listen = "127.0.0.1:99999"', "metrics.listen"),
        ('listen = "localhost:9273"', "metrics.listen"),
        ('listen = "2001:db8::1:9273"', "metrics.listen"),
        ("listen = 9273", "metrics.listen"),
        ("", "metrics.listen"),
        ('listen = "127.0.0.1:9273"\nport = 1', "metrics.port"),
    ],
)
def test_a_bad_metrics_table_fails_at_load_naming_the_key(body: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        loads_config(CONFIG + f"\n[metrics]\n{body}\n")
    assert key in str(caught.value)


def test_a_scrape_matches_status_and_the_counters_stay_monotonic(gateway: Gateway) -> None:
    gateway._handle_event(established())
    ours, _ = install(gateway)
    entry = gateway.plane.entries[ours.unique_id]
    for seq in range(3):
        entry.outbound.encapsulate(ipv4("192.0.2.1", "203.0.113.1", echo_request(seq), proto=1))
    samples = scrape(gateway)
    [sa] = gateway.status()["sas"]
    assert sample(samples, "lockgate_connection_up", connection="site", mode="policy") == 1
    assert sample(samples, "lockgate_child_sas", connection="site") == 1
    assert sample(samples, "lockgate_ike_sas", peer="main") == 1
    assert sa["packets_out"] == 3
    assert sample(samples, "lockgate_packets_total", connection="site", direction="out") == 3
    assert (
        sample(samples, "lockgate_bytes_total", connection="site", direction="out")
        == sa["bytes_out"]
    )
    assert (
        sample(samples, "lockgate_bytes_total", connection="site", direction="in") == sa["bytes_in"]
    )
    gateway._handle_event(ChildSaDeleted("main", "site", ours.unique_id, 7, ours.spi_in, 1, "test"))
    gateway.plane._clock = lambda: time.monotonic() + 60
    gateway.plane.expire_lingering()
    after = scrape(gateway)
    assert sample(after, "lockgate_connection_up", connection="site", mode="policy") == 0
    assert sample(after, "lockgate_child_sas", connection="site") == 0
    # The SA is gone; what it carried is still counted (a counter never goes back).
    assert sample(after, "lockgate_packets_total", connection="site", direction="out") == 3


def test_setups_failures_and_rekeys_are_counted(gateway: Gateway) -> None:
    gateway._handle_event(established(7, initiator=True))
    gateway._handle_event(IkeSaRekeyed("main", 7, 8, 3, 4, "aes256gcm16-prfsha384-x25519"))
    install(gateway, uid=1)
    install(gateway, uid=2, rekey_of=1)
    gateway._handle_event(established(9, initiator=False))
    gateway._handle_event(
        IkeSaFailed(
            "main", 10, "peer reported AUTHENTICATION_FAILED", 24, remote=("198.51.100.2", 500)
        )
    )
    samples = scrape(gateway)
    assert sample(samples, "lockgate_ike_setups_total", peer="main", reason="initiated") == 1
    assert sample(samples, "lockgate_ike_setups_total", peer="main", reason="answered") == 1
    assert sample(samples, "lockgate_ike_failures_total", peer="main", reason="authentication") == 1
    assert sample(samples, "lockgate_rekeys_total", kind="ike") == 1
    assert sample(samples, "lockgate_rekeys_total", kind="child") == 1


def test_drops_and_ike_drops_are_the_status_counters(gateway: Gateway) -> None:
    gateway.plane.drops["no_policy"] += 4
    # A datagram too short for an IKE header: the endpoint drops and counts it.
    gateway._on_ike(b"garbage", ("198.51.100.1", 500), ("198.51.100.2", 500))
    samples = scrape(gateway)
    status = gateway.status()
    assert (
        sample(samples, "lockgate_drops_total", reason="no_policy")
        == status["drops"]["no_policy"]
        == 4
    )
    [(reason, count)] = status["ike_drops"].items()
    assert sample(samples, "lockgate_ike_drops_total", reason=reason) == count == 1


def test_the_names_and_types_are_the_documented_contract(gateway: Gateway) -> None:
    gateway._handle_event(established())
    text = generate_latest(registry_for(gateway)).decode()
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types == {
        "lockgate_connection_up": "gauge",
        "lockgate_ike_sas": "gauge",
        "lockgate_child_sas": "gauge",
        "lockgate_bytes": "counter",
        "lockgate_packets": "counter",
        "lockgate_drops": "counter",
        "lockgate_ike_drops": "counter",
        "lockgate_ike_setups": "counter",
        "lockgate_ike_failures": "counter",
        "lockgate_remote_access_clients": "gauge",
        "lockgate_rekeys": "counter",
    }


async def _get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def test_the_endpoint_serves_get_metrics_and_nothing_else(gateway: Gateway) -> None:
    async def run() -> list[bytes]:
        server = MetricsServer(registry_for(gateway), "127.0.0.1", 0)
        await server.start()
        assert server._server is not None
        port = server._server.sockets[0].getsockname()[1]
        try:
            return [
                await _get(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
                await _get(port, b"GET / HTTP/1.1\r\n\r\n"),
                await _get(port, b"POST /metrics HTTP/1.1\r\n\r\n"),
                await _get(port, b"nonsense\r\n\r\n"),
            ]
        finally:
            await server.close()

    ok, elsewhere, post, bad = asyncio.run(run())
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/plain; version=0.0.4" in head
    assert b"lockgate_connection_up{" in body
    assert elsewhere.startswith(b"HTTP/1.1 404 ")
    assert post.startswith(b"HTTP/1.1 405 ")
    assert bad.startswith(b"HTTP/1.1 400 ")


def test_a_busy_metrics_port_raises_at_start(tmp_path: Path) -> None:
    with contextlib.closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(registry_for(Gateway(str(tmp_path / "x.toml"))), "127.0.0.1", port)
        with pytest.raises(OSError):
            asyncio.run(server.start())


def test_a_reload_that_changes_metrics_says_it_needs_a_restart(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    Path(gateway.config_path).write_text(CONFIG + '\n[metrics]\nlisten = "127.0.0.1:9273"\n')
    with caplog.at_level(logging.WARNING, logger="daemon.reload"):
        gateway.reload()
    assert "[metrics] changed: the endpoint stays as it is until a restart" in caplog.text
