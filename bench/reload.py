"""Configuration reload benchmark: what a SIGHUP costs with 10,000 peers.

A configuration of `--peers` peers, each with one connection (documentation addresses
only: peers in 2001:db8::/32, RFC 3849), is parsed as the daemon parses it: `tomllib` on
the whole text, and `conf.toml_tables.TomlTables`, which keeps the last document's
tables and parses only the ones whose text changed. Each is timed for a full load and
for a reload after one peer's address changed; `parse_config` (the validation into
typed settings that follows every parse) is timed too, since an operator waits for
both. Medians and spreads (min-max) over `--repeats` runs; ratios against `tomllib`.

    python -m bench.reload [--peers 10000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tomllib
from collections.abc import Callable
from typing import Any

from conf.load import parse_config
from conf.toml_tables import TomlTables

GATEWAY = """\
[gateway]
addresses = ["2001:db8::1"]
id = "2001:db8::1"
"""

PEER = """
[peers.p{n}]
address = "2001:db8:{hi:x}:{lo:x}::{host}"
id = "peer-{n}.example.net"
psk = "reload-bench-psk-NOT-SECRET-{n:08d}"

[connections.c{n}]
peer = "p{n}"
local_subnets = ["2001:db8:ffff::/48"]
remote_subnets = ["2001:db8:{hi:x}:{lo:x}::/64"]
esp_proposals = ["aes256gcm16"]
start = "wait"
"""


def config(peers: int, changed: int | None = None) -> str:
    """The configuration text; with `changed`, that peer has another address."""
    parts = [GATEWAY]
    for n in range(peers):
        host = 2 if n == changed else 1
        text = PEER.format(n=n, hi=1 + n // 0x10000, lo=n % 0x10000, host=host)
        parts.append(text)
    return "".join(parts)


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def figures(samples: list[float]) -> str:
    """Median and spread (min-max) in milliseconds."""
    return (
        f"{statistics.median(samples) * 1e3:9.1f} ms"
        f"  ({min(samples) * 1e3:.1f}-{max(samples) * 1e3:.1f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    base = config(args.peers)
    say(f"{args.peers} peers + {args.peers} connections: {len(base) / 1e6:.1f} MB of TOML")
    changed_texts = [config(args.peers, changed=(r * 7919) % args.peers) for r in range(2)]
    expected = tomllib.loads(base)

    full: dict[str, list[float]] = {"tomllib": [], "toml_tables": []}
    reload: dict[str, list[float]] = {"tomllib": [], "toml_tables": []}
    validate: list[float] = []
    for r in range(args.repeats):
        changed = changed_texts[r % 2]
        full["tomllib"].append(timed(lambda: tomllib.loads(base)))
        reload["tomllib"].append(timed(lambda: tomllib.loads(changed)))  # noqa: B023
        tables = TomlTables()
        full["toml_tables"].append(timed(lambda: tables.loads(base)))  # noqa: B023
        reload["toml_tables"].append(timed(lambda: tables.loads(changed)))  # noqa: B023
        validate.append(timed(lambda: parse_config(expected)))
    if TomlTables().loads(base) != expected:
        say("toml_tables disagrees with tomllib")
        return 1

    say(f"{'parse':14}{'full load (median, min-max)':>30}{'reload, one peer changed':>36}")
    base_full = statistics.median(full["tomllib"])
    base_reload = statistics.median(reload["tomllib"])
    for name in full:
        ratio_full = statistics.median(full[name]) / base_full
        ratio_reload = statistics.median(reload[name]) / base_reload
        say(
            f"{name:14}{figures(full[name]):>24} x{ratio_full:4.2f}"
            f"{figures(reload[name]):>30} x{ratio_reload:4.2f}"
        )
    say(f"{'parse_config':14}{figures(validate):>24}   (validation, after every parse)")
    saved = base_reload - statistics.median(reload["toml_tables"])
    say(f"a reload with toml_tables saves {saved * 1e3:.0f} ms of parsing against tomllib")
    return 0


if __name__ == "__main__":
    sys.exit(main())
