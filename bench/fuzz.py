"""Dedicated fuzz run over every IKEv2 and ESP network entry point (issue 8).

    python -m bench.fuzz --cases 100000 --seconds 900 --seed 1

Drives the targets of ``tests/fuzz/targets.py`` (codec, SK payload, SKF reassembly,
COOKIEs, endpoint, IKE SA with authenticated garbage in every exchange, ESP for every
suite with and without ESN, batch decapsulation, data plane) with a seeded loop:
mostly structure-aware mutations of each target's valid seeds (``tests/fuzz/mutate.py``:
bit flips, boundary values, truncation, payload Length and Next Payload fields), some
splices of two seeds, some random octets. Each kind of entry point gets about an equal
share of the cases, the cheap ones somewhat more than those that set up IKE SAs per
case. Bounded in cases and in time.

Prints cases, cases/s per target and in total, the peak resident memory, and every
distinct finding (target, exception, where it was raised, the input in hex), which it
also writes to ``--findings`` so it can join ``tests/fuzz/corpus/``. Exit status 1 when
anything was found. A benchmark, not a test: it is not collected by pytest.
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.mutate import Mutation
from tests.fuzz.targets import Target, all_targets, random_bytes


@dataclass
class Finding:
    """One distinct failure: the first input that showed it, and how often it recurred."""

    target: str
    error: str
    where: str
    data: bytes
    count: int = 1


@dataclass
class Tally:
    """Cases and time spent per target."""

    cases: int = 0
    seconds: float = 0.0
    findings: set[tuple[str, str, str]] = field(default_factory=set)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    # The innermost frame inside lockgate (not the fuzz harness) says where it broke.
    for frame in reversed(frames):
        if "/tests/" not in frame.filename:
            return f"{frame.filename.split('/main/')[-1]}:{frame.lineno} in {frame.name}"
    last = frames[-1]
    return f"{last.filename.split('/main/')[-1]}:{last.lineno} in {last.name}"


def _input(rng: random.Random, seeds: list[bytes]) -> bytes:
    roll = rng.random()
    if roll < 0.75:
        return Mutation.random(rng).apply(rng.choice(seeds))
    if roll < 0.85:
        a, b = rng.choice(seeds), rng.choice(seeds)
        return a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1) :]
    return random_bytes(rng)


def run(cases: int, seconds: float, seed: int, only: str, findings_dir: Path) -> int:
    rng = random.Random(seed)
    targets = [t for t in all_targets() if only in t.name]
    seeds = {t.name: t.seeds() or [b""] for t in targets}
    weights = _weights(targets)
    tallies = {t.name: Tally() for t in targets}
    found: dict[tuple[str, str, str], Finding] = {}
    start = time.monotonic()
    deadline = start + seconds
    done = 0
    while done < cases and time.monotonic() < deadline:
        index = rng.choices(range(len(targets)), weights)[0]
        target = targets[index]
        data = _input(rng, seeds[target.name])
        began = time.perf_counter()
        try:
            target.run(data)
            target.check_bounds()
        except Exception as exc:
            key = (target.name, f"{type(exc).__name__}: {str(exc)[:160]}", _where(exc))
            if key in found:
                found[key].count += 1
            else:
                found[key] = Finding(*key, data)
                tallies[target.name].findings.add(key)
            # Its state may be half-updated: carry on with a fresh instance.
            targets[index] = type(target)(*_args(target))
        tally = tallies[target.name]
        tally.cases += 1
        tally.seconds += time.perf_counter() - began
        done += 1
    elapsed = time.monotonic() - start
    _report(tallies, found, done, elapsed)
    _save(found, findings_dir)
    return 1 if found else 0


def _weights(targets: list[Target]) -> list[float]:
    """Each kind of entry point (the name before "[") gets an equal share, split among
    its variants (suites, ciphers), tilted towards the cheap kinds by 1/sqrt(cost)."""
    groups: dict[str, int] = {}
    for t in targets:
        kind = t.name.partition("[")[0]
        groups[kind] = groups.get(kind, 0) + 1
    return [1.0 / (groups[t.name.partition("[")[0]] * t.cost**0.5) for t in targets]


def _args(target: Target) -> tuple[object, ...]:
    """Constructor arguments to rebuild a target after a finding."""
    keys = getattr(target, "keys", None)
    if keys is not None:
        return (keys,)
    cipher_name = target.name.partition("[")[2].rstrip("]")
    return (cipher_name,) if cipher_name else ()


def _report(
    tallies: dict[str, Tally], found: dict[tuple[str, str, str], Finding], done: int, elapsed: float
) -> None:
    print(f"{'target':36} {'cases':>8} {'cases/s':>9} {'findings':>8}")
    for name, tally in tallies.items():
        rate = tally.cases / tally.seconds if tally.seconds else 0.0
        print(f"{name:36} {tally.cases:8d} {rate:9.0f} {len(tally.findings):8d}")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"total: {done} cases in {elapsed:.1f} s ({done / elapsed:.0f} cases/s), "
        f"{len(found)} distinct findings, peak RSS {peak_kib / 1024:.0f} MiB"
    )
    for finding in found.values():
        print(f"\nFINDING {finding.target} x{finding.count}: {finding.error}")
        print(f"  at {finding.where}")
        print(f"  input ({len(finding.data)} octets): {finding.data.hex()}")


def _save(found: dict[tuple[str, str, str], Finding], directory: Path) -> None:
    if not found:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for n, finding in enumerate(found.values(), start=1):
        name = finding.target.replace("[", "-").replace("]", "")
        (directory / f"{n:03d}-{name}.bin").write_bytes(finding.data)
        (directory / f"{n:03d}-{name}.txt").write_text(f"{finding.error}\n{finding.where}\n")
    print(f"\nfindings written to {directory}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="stop after this many")
    parser.add_argument("--seconds", type=float, default=900.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mutation loop")
    parser.add_argument("--only", default="", help="run the targets whose name has this")
    parser.add_argument(
        "--findings", type=Path, default=Path("/tmp/lockgate-fuzz-findings"), help="output dir"
    )
    args = parser.parse_args(argv)
    # The library logs every refusal; a fuzz run would print little else.
    logging.disable(logging.CRITICAL)
    return run(args.cases, args.seconds, args.seed, args.only, args.findings)


if __name__ == "__main__":
    sys.exit(main())
