"""The engine the workers benchmark drives carries every packet it generates."""

from __future__ import annotations

import pytest

from bench.workers import BareEngine, Engine


@pytest.mark.parametrize("size", [64, 1400])
def test_each_step_delivers_the_whole_batch_at_its_size(size: int) -> None:
    engine = Engine(size, batch=16)
    assert {len(p) for p in engine.packets} == {size}
    engine.step()
    engine.step()
    assert engine.tun.delivered == 32
    assert engine.wire.esp == []
    assert not engine.sender.total_drops() and not engine.receiver.total_drops()


def test_the_bare_aead_comparison_counts_its_batch() -> None:
    bare = BareEngine(64, batch=8)
    bare.step()
    assert bare.tun.delivered == 8
