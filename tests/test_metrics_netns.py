"""`[metrics]` on a real daemon: a tunnel between two `lockgate daemon`s in
namespaces, traffic through it, then GET /metrics from inside the gateway's
namespace, parsed with prometheus_client's parser, against `lockgate status --json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from netns import ping, site_to_site
from prometheus_client.parser import text_string_to_metric_families

from testkit.daemon import Daemon, pair_configs, start_pair, wait_until

pytestmark = pytest.mark.netns

LISTEN = "127.0.0.1:9273"
FETCH = (
    "import sys, urllib.request;"
    f"answer = urllib.request.urlopen('http://{LISTEN}/metrics', timeout=10);"
    "sys.stdout.write(answer.read().decode())"
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(daemon: Daemon) -> Samples:
    text = daemon.ns.run(sys.executable, "-c", FETCH, timeout=30).stdout
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def status_json(daemon: Daemon) -> dict[str, Any]:
    """What `lockgate status --json` prints."""
    out = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "-s", daemon.socket, "status", "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def test_metrics_after_traffic_match_status_json() -> None:
    with site_to_site() as topo:
        a_text, b_text = pair_configs(topo)
        a_text += f'\n[metrics]\nlisten = "{LISTEN}"\n'
        a, _b = start_pair(topo, a_text, b_text)
        ping(topo.host_a, topo.site_b.host4, count=20, interval=0.05, deadline=20)
        # Sample when nothing moves any more: two scrapes with a status between them
        # that agree are one moment's counters.
        snapshot: list[tuple[Samples, dict[str, Any]]] = []

        def steady() -> bool:
            before = scrape(a)
            status = status_json(a)
            if scrape(a) != before:
                return False
            snapshot[:] = [(before, status)]
            return True

        wait_until(steady, "steady counters", timeout=30)
        [(samples, status)] = snapshot
        [conn] = status["connections"]
        [sa] = status["sas"]
        assert conn["state"] == "up"
        assert value(samples, "lockgate_connection_up", connection="site", mode="policy") == 1
        assert value(samples, "lockgate_child_sas", connection="site") == len(status["sas"])
        assert value(samples, "lockgate_ike_sas", peer="main") == len(conn["ike_sas"]) == 1
        for direction in ("in", "out"):
            assert sa[f"packets_{direction}"] >= 20
            got_packets = value(samples, "lockgate_packets_total", connection="site",
                                direction=direction)  # fmt: skip
            got_bytes = value(samples, "lockgate_bytes_total", connection="site",
                              direction=direction)  # fmt: skip
            assert got_packets == sa[f"packets_{direction}"]
            assert got_bytes == sa[f"bytes_{direction}"]
        for reason, count in status["drops"].items():
            assert value(samples, "lockgate_drops_total", reason=reason) == count
        for reason, count in status["ike_drops"].items():
            assert value(samples, "lockgate_ike_drops_total", reason=reason) == count
        assert value(samples, "lockgate_ike_setups_total", peer="main", reason="initiated") == 1
        assert value(samples, "lockgate_rekeys_total", kind="child") == 0
        # Rekey the CHILD SA: the counter moves, and the traffic of the old SA stays
        # counted once it is gone.
        carried = value(samples, "lockgate_packets_total", connection="site", direction="out")
        a.command("rekey", name="site")
        wait_until(
            lambda: value(scrape(a), "lockgate_rekeys_total", kind="child") == 1, "the rekey"
        )
        after = scrape(a)
        assert value(after, "lockgate_packets_total", connection="site", direction="out") >= carried
