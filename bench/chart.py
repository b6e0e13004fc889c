"""The throughput comparison as a PNG: grouped bars per test, one bar per path and suite.

matplotlib is optional (it is not a runtime dependency of lockgate): without it,
`draw` says so and draws nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.throughput import Row

_TESTS = (("tcp1", "TCP, 1 stream"), ("tcp4", "TCP, 4 streams"), ("udp", "UDP 1400 B, delivered"))


def draw(rows: Sequence[Row], path: Path) -> str:
    """Write the chart to `path`; return a line saying what happened."""
    if importlib.util.find_spec("matplotlib") is None:
        return f"matplotlib is not installed: no chart drawn ({path} not written)"
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    bars = [r for r in rows if not r.error]
    if not bars:
        return "no successful row to draw"
    fig, axes = plt.subplots(1, len(_TESTS), figsize=(5 * len(_TESTS), 5), sharey=False)
    for ax, (test, title) in zip(axes, _TESTS, strict=True):
        names = [f"{r.label}\n{r.suite}" if r.case != "none" else r.label for r in bars]
        values = [(r.mbps(test) or 0.0) for r in bars]
        ax.barh(range(len(bars)), values, color=[_colour(r.case) for r in bars])
        ax.set_yticks(range(len(bars)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("Mbit/s (median, log scale)")
        ax.set_title(title)
        for i, value in enumerate(values):
            ax.text(value, i, f" {value:,.0f}", va="center", fontsize=7)
    fig.suptitle("lockgate vs strongSwan (userspace ESP), site-to-site in namespaces")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart written to {path}"


def _colour(case: str) -> str:
    return {
        "none": "#999999",
        "swan-swan": "#d62728",
        "lockgate-swan": "#ff7f0e",
        "lockgate-lockgate": "#1f77b4",
    }.get(case, "#2ca02c")
