"""Coverage-guided fuzzing of the IKEv2 codec, the SK payload and ESP decapsulation
with atheris (libFuzzer for Python).

    .venv/bin/pip install atheris        # not a project dependency
    python -m bench.fuzz_atheris -max_total_time=300 /tmp/lockgate-atheris-corpus

The first input octet picks the target (codec, payload decoders, SK open, authenticated
SK contents, SKF reassembly, ESP of each suite, data plane), the rest is its input, as
in ``testkit/fuzz/targets.py``. ``ikev2``, ``esp`` and ``daemon`` are instrumented, so
libFuzzer keeps inputs that reach new code. The corpus directory starts from every
target's seeds.

A finding does not stop the run: it is written once per (target, exception, place) to
``$LOCKGATE_ATHERIS_FINDINGS`` (default ``/tmp/lockgate-atheris-findings``) and printed,
and the run goes on until libFuzzer's own limit. So one bounded run lists everything.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import atheris  # type: ignore[import-untyped]  # optional, not in pyproject

with atheris.instrument_imports(include=["ikev2", "esp", "daemon"]):
    from testkit.fuzz.targets import Target, all_targets

FINDINGS = Path(os.environ.get("LOCKGATE_ATHERIS_FINDINGS", "/tmp/lockgate-atheris-findings"))
TARGETS: list[Target] = all_targets(heavy=False)
_seen: set[tuple[str, str, str]] = set()


def _where(exc: BaseException) -> str:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if "/tests/" not in frame.filename:
            return f"{frame.filename.split('/main/')[-1]}:{frame.lineno}"
    return "harness"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    index = data[0] % len(TARGETS)
    target = TARGETS[index]
    try:
        target.run(data[1:])
        target.check_bounds()
    except Exception as exc:
        key = (target.name, type(exc).__name__, _where(exc))
        if key in _seen:
            return
        _seen.add(key)
        FINDINGS.mkdir(parents=True, exist_ok=True)
        stem = f"{len(_seen):03d}-{target.name.replace('[', '-').rstrip(']')}"
        (FINDINGS / f"{stem}.bin").write_bytes(data)
        (FINDINGS / f"{stem}.txt").write_text("".join(traceback.format_exception(exc)))
        print(f"FINDING {key}: {exc}", file=sys.stderr)


def _seed_corpus(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    for index, target in enumerate(TARGETS):
        for n, seed in enumerate(target.seeds()):
            (directory / f"seed-{index:03d}-{n:02d}").write_bytes(bytes([index]) + seed)


def main() -> None:
    logging.disable(logging.CRITICAL)
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    for directory in corpus:
        _seed_corpus(Path(directory))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
