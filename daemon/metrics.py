"""`[metrics]`: the Prometheus endpoint, GET /metrics in the text format.

A scrape reads the counters the daemon keeps anyway (the ESP SAs' byte and packet
counts, the drop counters, the IKE endpoint's drops, the remote-access servers'
clients) through `GatewayCollector`, when Prometheus asks: the data plane pays
nothing per packet for it. The few things no other part counts (IKE SA setups,
failures and rekeys) are counted per event in `EventCounts`.

The names, types and labels are a contract (dashboards are built on them):

    lockgate_connection_up{connection,mode}            gauge 0/1
    lockgate_ike_sas{peer}                             gauge
    lockgate_child_sas{connection}                     gauge
    lockgate_bytes_total{connection,direction}         counter (in/out)
    lockgate_packets_total{connection,direction}       counter (in/out)
    lockgate_drops_total{reason}                       counter
    lockgate_ike_drops_total{reason}                   counter
    lockgate_ike_setups_total{peer,reason}             counter (reason: who initiated)
    lockgate_ike_failures_total{peer,reason}           counter (reason: daemon.diagnosis.KINDS)
    lockgate_remote_access_clients{server,protocol}    gauge
    lockgate_rekeys_total{kind}                        counter (ike/child)

`MetricsServer` serves them from the daemon's own event loop: a minimal HTTP/1.1
responder (one request per connection), enough for Prometheus and curl. A scrape
costs about 0.5 ms of CPU at 5 connections, 13 ms at 200 and 70-80 ms at 1,000
(`python -m bench.scrape_cost`); the text is formatted off the loop (`render`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from daemon.gateway import Gateway

log = logging.getLogger(__name__)

SETUP_INITIATED = "initiated"
"""`reason` of lockgate_ike_setups_total for an IKE SA we started."""
SETUP_ANSWERED = "answered"
"""`reason` of lockgate_ike_setups_total for an IKE SA the peer started."""

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
"""What `generate_latest` writes: the text exposition format every Prometheus reads."""
REQUEST_TIMEOUT = 5.0
"""Seconds a client has to send its request line and headers."""
MAX_REQUEST = 8192
"""Bytes of request line and headers we read at most."""


@dataclass
class EventCounts:
    """What no other part of the daemon counts: IKE SA setups and failures per peer
    and reason, and rekeys per kind. One dictionary update per event."""

    setups: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(peer, SETUP_INITIATED or SETUP_ANSWERED) -> IKE SAs established."""
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(peer, failure kind) -> IKE SAs that failed before they were established."""
    rekeys: Counter[str] = field(default_factory=Counter)
    """"ike" or "child" -> rekeys completed."""


class GatewayCollector(Collector):
    """The gateway's metrics, read at scrape time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        plane = gateway.plane
        config = gateway.config
        gateway.mirror_counters()
        up = GaugeMetricFamily(
            "lockgate_connection_up",
            "1 while the connection has a CHILD SA installed, else 0",
            labels=["connection", "mode"],
        )
        child_sas = GaugeMetricFamily(
            "lockgate_child_sas", "CHILD SAs installed per connection", labels=["connection"]
        )
        for name in gateway.connections:
            conf = config.connections.get(name) if config is not None else None
            up.add_metric([name, conf.mode if conf is not None else "policy"],
                          1.0 if gateway.is_up(name) else 0.0)  # fmt: skip
            count = len(plane.entries_of_connection(name)) if plane is not None else 0
            child_sas.add_metric([name], float(count))
        yield up
        yield child_sas
        ike_sas = GaugeMetricFamily(
            "lockgate_ike_sas", "Established IKE SAs per peer", labels=["peer"]
        )
        for peer in gateway.peers:
            ike_sas.add_metric([peer], float(len(gateway.ike_sa_infos(peer))))
        yield ike_sas
        octets = CounterMetricFamily(
            "lockgate_bytes_total",
            "Bytes carried by the connection's CHILD SAs, present and past (ESP payload)",
            labels=["connection", "direction"],
        )
        packets = CounterMetricFamily(
            "lockgate_packets_total",
            "Packets carried by the connection's CHILD SAs, present and past",
            labels=["connection", "direction"],
        )
        traffic = plane.connection_traffic() if plane is not None else {}
        for name in gateway.connections:
            bytes_in, bytes_out, packets_in, packets_out = traffic.get(name, (0, 0, 0, 0))
            octets.add_metric([name, "in"], float(bytes_in))
            octets.add_metric([name, "out"], float(bytes_out))
            packets.add_metric([name, "in"], float(packets_in))
            packets.add_metric([name, "out"], float(packets_out))
        yield octets
        yield packets
        drops = CounterMetricFamily(
            "lockgate_drops_total", "Packets the data plane dropped, by reason", labels=["reason"]
        )
        for reason, count in sorted(gateway.data_plane_drops().items()):
            drops.add_metric([reason], float(count))
        yield drops
        ike_drops = CounterMetricFamily(
            "lockgate_ike_drops_total", "IKE datagrams dropped, by reason", labels=["reason"]
        )
        endpoint = gateway.endpoint
        for reason, count in sorted(
            ((str(r), c) for r, c in endpoint.drops.items()) if endpoint is not None else ()
        ):
            ike_drops.add_metric([reason], float(count))
        yield ike_drops
        counts = gateway.event_counts
        yield _pairs(
            "lockgate_ike_setups_total",
            "IKE SAs established, by peer and who initiated",
            counts.setups,
        )
        yield _pairs(
            "lockgate_ike_failures_total",
            "IKE SAs that failed before they were established, by peer and kind of failure",
            counts.failures,
        )
        clients = GaugeMetricFamily(
            "lockgate_remote_access_clients",
            "Connected remote-access clients per server",
            labels=["server", "protocol"],
        )
        servers = gateway.remote_access.status()
        if gateway.ikev2_ra is not None:
            servers.append(gateway.ikev2_ra.status())
        for server in servers:
            clients.add_metric([server["name"], server["protocol"]], float(server["clients"]))
        yield clients
        rekeys = CounterMetricFamily(
            "lockgate_rekeys_total", "Rekeys completed, IKE SAs and CHILD SAs", labels=["kind"]
        )
        for kind in ("ike", "child"):
            rekeys.add_metric([kind], float(counts.rekeys[kind]))
        yield rekeys


def _pairs(name: str, text: str, counts: Counter[tuple[str, str]]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=["peer", "reason"])
    for (peer, reason), count in sorted(counts.items()):
        family.add_metric([peer, reason], float(count))
    return family


def registry_for(gateway: Gateway) -> CollectorRegistry:
    """A registry holding only the gateway's collector (not prometheus_client's
    process-wide default one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    return registry


class MetricsServer:
    """GET /metrics over HTTP on the event loop."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=MAX_REQUEST
        )
        log.info("metrics at http://%s/metrics", _hostport(self.host, self.port))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
            return
        status, body, kind = await self.answer(head)
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + (b"" if head.startswith(b"HEAD ") else body)
        )
        try:
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def answer(self, head: bytes) -> tuple[str, bytes, str]:
        """(status line, body, content type) for a request's head."""
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        text = "text/plain; charset=utf-8"
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return "400 Bad Request", b"bad request\n", text
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != b"/metrics":
            return "404 Not Found", b"only /metrics is here\n", text
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"GET /metrics\n", text
        return "200 OK", await render(self.registry), TEXT_FORMAT


class _Snapshot(Collector):
    """Metrics already collected, for formatting away from the event loop."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


async def render(registry: CollectorRegistry) -> bytes:
    """The text format of `registry`'s metrics.

    They are read on the event loop, where the gateway's state changes, and formatted
    in a worker thread from a snapshot: formatting is most of a scrape's CPU
    (52 of 69 ms at 1,000 connections, 7,000 samples), and there the loop and the data
    plane in it keep running in between instead of stalling for all of it."""
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(_Snapshot(list(registry.collect())))
    return await asyncio.to_thread(generate_latest, snapshot)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
