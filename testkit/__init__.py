"""Harness shared by the test suite and the benchmarks; not shipped in the wheel.

- `testkit.pki`: a throwaway CA issuing gateway certificates, in memory.
- `testkit.strongswan`: charon in a namespace with userspace ESP, swanctl.conf
  generation and a small vici client (the lab it runs in is `daemon.lab.netns`,
  which ships because `lockgate demo` needs it).
- `testkit.ikev2_pair`: two IKE endpoints in memory, wired back to back, with a fake
  clock and seeded randomness.
- `testkit.fuzz`: the fuzz targets, strategies, wire mutations and in-memory world
  that `tests/fuzz/` samples and `bench/fuzz.py` runs at length.

Only documentation addresses are used (RFC 5737, RFC 3849). `bench/` and `tests/` import
from here; nothing here imports `tests/` or `bench/`.
"""
