"""A bounded soak of lockgate against charon: no leaks over minutes of traffic
and rekeys.

For SOAK_SECONDS (240 s; the environment variable LOCKGATE_SOAK_SECONDS may change it,
at least 90): pings both ways every 0.1 s, a hashed 2 MB TCP transfer every 10 s, a
CHILD SA rekey every 10 s (from lockgate and from charon in turn) and an IKE SA rekey
every 60 s. After the first minute and at the end the test reads lockgate's SA count,
its open file descriptors (/proc/PID/fd) and its resident memory; at the end they must
be the same within the stated tolerances, and the pings lost next to nothing.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

import pytest
from hostile_helpers import open_fds, rss_kib
from interop_helpers import Case, Interop, interop, rekey_child, wait_until
from netns import tcp_transfer

pytestmark = [pytest.mark.netns, pytest.mark.interop, pytest.mark.slow]

SOAK_SECONDS = max(90, int(os.environ.get("LOCKGATE_SOAK_SECONDS", "240")))
STEP_SECONDS = 10
RSS_TOLERANCE_KIB = 8 * 1024
"""Growth allowed between minute one and the end (allocator slack, not a leak rate)."""
FD_TOLERANCE = 1
"""The status request that reads the figures may still hold its socket (22 or 23 seen)."""
MAX_PING_LOSS = 0.01


@dataclass(frozen=True)
class Figures:
    """lockgate's footprint at one moment."""

    sas: int
    ike_sas: int
    fds: int
    rss_kib: int


def _figures(world: Interop, pid: int) -> Figures:
    status = world.daemon.status()
    ike_sas = sum(len(conn["ike_sas"]) for conn in status["connections"])
    return Figures(len(status["sas"]), ike_sas, open_fds(pid), rss_kib(pid))


def _settled(world: Interop) -> None:
    """Wait until any rekey in progress is over: one CHILD SA, one IKE SA."""
    wait_until(
        lambda: (
            len(world.daemon.sas()) == 1
            and sum(len(c["ike_sas"]) for c in world.daemon.status()["connections"]) == 1
        ),
        "one CHILD SA and one IKE SA",
    )


def test_soak_traffic_and_rekeys_leave_no_leak() -> None:
    with interop(Case()) as world:
        topo = world.topo
        world.bring_up()
        pid = int(world.daemon.status()["daemon"]["pid"])
        count = int(SOAK_SECONDS / 0.1)
        pingers = [
            src.spawn(
                [
                    "ping",
                    "-n",
                    "-q",
                    "-c",
                    str(count),
                    "-i",
                    "0.1",
                    "-w",
                    str(SOAK_SECONDS + 20),
                    dst,
                ],
                name=f"soak-ping-{tag}",
                log_path=topo.lab.tmpdir / f"soak-ping-{tag}.log",
            )
            for tag, src, dst in (
                ("ab", topo.host_a, topo.site_b.host4),
                ("ba", topo.host_b, topo.site_a.host4),
            )
        ]
        start = time.monotonic()
        minute_one: Figures | None = None
        step = 0
        series: list[str] = []
        while time.monotonic() - start < SOAK_SECONDS:
            step += 1
            tcp_transfer(topo.host_a, topo.host_b, topo.site_b.host4, size=2 << 20)
            if step % 6 == 0:
                world.daemon.command("rekey", name="net4", ike=True)
            else:
                rekey_child(world, "net4", by_lockgate=step % 2 == 0)
            _settled(world)
            elapsed = time.monotonic() - start
            figures = _figures(world, pid)
            series.append(f"{elapsed:5.0f}s rss {figures.rss_kib} KiB fds {figures.fds}")
            if minute_one is None and elapsed >= 60:
                minute_one = figures
            time.sleep(max(0.0, step * STEP_SECONDS - (time.monotonic() - start)))
        _settled(world)
        end = _figures(world, pid)
        for proc in pingers:
            proc.popen.wait(SOAK_SECONDS + 30)
        losses = []
        for proc in pingers:
            log = proc.log()
            match = re.search(r"(\d+) packets transmitted, (\d+) received", log)
            assert match is not None, log
            sent, got = int(match.group(1)), int(match.group(2))
            losses.append((sent - got) / sent)
        print("\n" + "\n".join(series))
        print(f"after minute one: {minute_one}\nat the end:       {end}")
        print(f"steps {step}, ping loss {[f'{loss:.2%}' for loss in losses]}")
        assert minute_one is not None
        assert (end.sas, end.ike_sas) == (minute_one.sas, minute_one.ike_sas) == (1, 1)
        assert abs(end.fds - minute_one.fds) <= FD_TOLERANCE
        assert end.rss_kib - minute_one.rss_kib <= RSS_TOLERANCE_KIB
        assert all(loss <= MAX_PING_LOSS for loss in losses), losses
        assert "Traceback" not in world.daemon.log()
