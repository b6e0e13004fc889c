"""The throughput comparison as a PNG: grouped bars per test, one bar per path and suite.

matplotlib is optional (it is not a runtime dependency of lockgate): without it,
`draw` says so and draws nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

_TESTS = (("tcp1", "TCP, 1 stream"), ("tcp4", "TCP, 4 streams"), ("udp", "UDP 1400 B, delivered"))


class Row(Protocol):
    """What the chart reads of a `bench.throughput.Row` (so this module need not
    import the benchmark that draws with it)."""

    @property
    def case(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def suite(self) -> str: ...
    @property
    def error(self) -> str: ...
    def mbps(self, test: str) -> float | None: ...


def draw(rows: Sequence[Row], path: Path) -> str:
    """Write the chart to `path`; return a line saying what happened."""
    if importlib.util.find_spec("matplotlib") is None:
        return f"matplotlib is not installed: no chart drawn ({path} not written)"
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    # The no-tunnel ceiling is 10-100 times any tunnel: it goes in the titles, so a
    # linear axis can show the tunnels side by side.
    ceiling = next((r for r in rows if r.case == "none" and not r.error), None)
    bars = [r for r in rows if not r.error and r.case != "none"]
    if not bars:
        return "no successful tunnel row to draw"
    fig, axes = plt.subplots(1, len(_TESTS), figsize=(5 * len(_TESTS), 5))
    for ax, (test, title) in zip(axes, _TESTS, strict=True):
        values = [(r.mbps(test) or 0.0) for r in bars]
        ax.barh(range(len(bars)), values, color=[_colour(r.case) for r in bars])
        ax.set_yticks(range(len(bars)), [f"{r.label}\n{r.suite}" for r in bars], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("Mbit/s delivered (median)")
        top = ceiling.mbps(test) if ceiling is not None else None
        ax.set_title(title + (f"\n(no tunnel: {top:,.0f} Mbit/s)" if top else ""), fontsize=10)
        for i, value in enumerate(values):
            ax.text(value, i, f" {value:,.0f}", va="center", fontsize=7)
        ax.set_xlim(0, max(values, default=1.0) * 1.2 or 1.0)
    fig.suptitle("lockgate vs strongSwan (userspace ESP), site-to-site in namespaces")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart written to {path}"


def _colour(case: str) -> str:
    return {
        "swan-swan": "#d62728",
        "lockgate-swan": "#ff7f0e",
        "lockgate-lockgate": "#1f77b4",
        "lockgate-lockgate-raw": "#17becf",
    }.get(case, "#2ca02c")
