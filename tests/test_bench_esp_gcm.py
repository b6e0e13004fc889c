"""bench.esp_gcm: the timing loop is fair to both sides and the rows are sound."""

from __future__ import annotations

from bench.esp_gcm import _best_rates, measure
from esp.suites import SUITES


def test_engine_and_floor_take_turns_going_first() -> None:
    calls: list[str] = []
    _best_rates(lambda: calls.append("engine"), lambda: calls.append("floor"), 1, 0.0)
    warm_up, rounds = calls[:2], calls[2:]
    assert warm_up == ["engine", "floor"]
    pairs = [tuple(rounds[i : i + 2]) for i in range(0, len(rounds), 2)]
    assert len(pairs) >= 4
    assert pairs[0::2] == [("engine", "floor")] * len(pairs[0::2])
    assert pairs[1::2] == [("floor", "engine")] * len(pairs[1::2])


def test_measure_gives_every_operation_for_an_aead_suite() -> None:
    rows = measure(SUITES["aes128gcm16"], 64, 8, 0.0)
    assert [row.op for row in rows] == ["encap", "encap-parts", "decap"]
    for row in rows:
        assert row.pps > 0 and row.floor_pps > 0 and row.median_ratio > 0
