"""What one scrape of /metrics costs the daemon, by number of connections.

A gateway on an in-memory TUN (`testkit.daemon.memory_gateway`, no root) with N peers
of one connection each (documentation addresses only: 2001:db8::/32, RFC 3849) is
scraped as `daemon.metrics` does it: reading the counters (`GatewayCollector.collect`,
on the event loop) and formatting the text (`generate_latest`, in a worker thread).
Each is timed in CPU time (`time.process_time`), so a busy machine's waiting does not
count; medians over `--repeats` scrapes.

    python -m bench.scrape_cost [--connections 5,200,1000] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import generate_latest

from daemon.metrics import GatewayCollector, registry_for
from testkit.daemon import memory_gateway


def configuration(count: int) -> str:
    """A gateway with `count` peers, one connection each."""
    parts = ['[gateway]\naddresses = ["2001:db8::1"]\nid = "2001:db8::1"\n']
    for i in range(count):
        parts.append(
            f'[peers.p{i}]\naddress = "2001:db8:1::{i + 1:x}"\n'
            'psk = "scrape-bench-psk-NOT-SECRET-0123"\n'
            f'[connections.c{i}]\npeer = "p{i}"\nlocal_subnets = ["2001:db8:a::/64"]\n'
            f'remote_subnets = ["2001:db8:{i + 1:x}::/48"]\nstart = "wait"\n'
        )
    return "\n".join(parts)


def cpu_ms(action: Callable[[], object], repeats: int) -> float:
    """Median CPU milliseconds of `action`."""
    samples = []
    for _ in range(repeats):
        started = time.process_time()
        action()
        samples.append((time.process_time() - started) * 1000)
    return statistics.median(samples)


def measure(count: int, repeats: int) -> tuple[float, float, int]:
    """CPU ms of reading the counters and of a whole scrape, and the text's size."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gw.toml"
        path.write_text(configuration(count))
        with memory_gateway(path) as gateway:
            collector, registry = GatewayCollector(gateway), registry_for(gateway)
            size = len(generate_latest(registry))
            read = cpu_ms(lambda: list(collector.collect()), repeats)
            total = cpu_ms(lambda: generate_latest(registry), repeats)
    return read, total, size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape_cost", description=__doc__)
    parser.add_argument("--connections", default="5,200,1000", help="comma-separated counts")
    parser.add_argument("--repeats", type=int, default=20, help="scrapes timed per count")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(f"{'connections':>11} {'read ms':>8} {'format ms':>9} {'total ms':>8} {'bytes':>8}")
    for count in (int(n) for n in args.connections.split(",") if n):
        read, total, size = measure(count, args.repeats)
        print(f"{count:>11} {read:>8.2f} {total - read:>9.2f} {total:>8.2f} {size:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
