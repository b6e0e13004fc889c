"""`python -m bench.ikev2_ra_load`: the report's arithmetic in memory, and a smoke run
in namespaces with three clients against both servers (nothing checks a figure's
size, only that every figure was taken and that the run cleaned up)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.ikev2_ra_load import CaseResult, parse_args, report

ROOT = Path(__file__).resolve().parent.parent


def _case(server: str, seconds: float, rss_after: int) -> CaseResult:
    return CaseResult(server, 11, ramp_clients=10, up=10, seconds=seconds,
                      rss_before_kib=1000, rss_after_kib=rss_after,
                      server_clients_after=11, ping_sent=20, ping_received=19)  # fmt: skip


def test_the_report_gives_medians_ranges_and_lockgates_figures_over_charons() -> None:
    results = [
        _case("lockgate", 2.0, 2100),
        _case("charon", 1.0, 1550),
        _case("lockgate", 4.0, 3200),
        _case("charon", 1.0, 1550),
    ]
    text = report(results, ["lockgate", "charon"])
    rates = next(line for line in text.splitlines() if line.startswith("setups per second"))
    # lockgate: 10 clients in 2 s and in 4 s -> 5.0 and 2.5 a second, median 3.8.
    assert rates.split()[3:] == ["3.8", "(2.5-5.0)", "10.0", "(10.0-10.0)"], text
    ratios = text.split("lockgate / charon (medians):")[1].splitlines()
    rate_ratio = next(line for line in ratios if "setups per second" in line)
    assert rate_ratio.split()[-1] == "0.38", text
    # Memory: (2100 - 1000) / 11 = 100 and (3200 - 1000) / 11 = 200 KiB a client.
    memory = next(line for line in text.splitlines() if line.startswith("server memory"))
    assert memory.split()[5:7] == ["150", "(100-200)"], text
    assert "5.0" in next(line for line in text.splitlines() if "ping loss" in line)


def test_the_arguments_are_bounded() -> None:
    assert parse_args([]).clients == 200
    for bad in (["--clients", "251"], ["--clients", "1"], ["--who", "openvpn"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def _leftovers(pid: int) -> list[str]:
    prefix = f"lg{pid}x"
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    spaces = [line.split()[0] for line in out.stdout.splitlines() if line.startswith(prefix)]
    return spaces + [str(p) for p in Path(tempfile.gettempdir()).glob(f"{prefix}*")]


@pytest.mark.netns
@pytest.mark.interop
@pytest.mark.slow
def test_three_clients_against_both_servers(tmp_path: Path) -> None:
    if not Path("/usr/lib/ipsec/plugins/libstrongswan-eap-mschapv2.so").exists():
        pytest.skip("needs the eap-mschapv2 plugin (Debian libcharon-extauth-plugins)")
    figures = tmp_path / "load.json"
    args = [sys.executable, "-m", "bench.ikev2_ra_load", "--clients", "3", "--charons", "1",
            "--timeout", "120", "--json", str(figures)]  # fmt: skip
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    cases = {case["server"]: case for case in json.loads(figures.read_text())}
    assert set(cases) == {"lockgate", "charon"}, text
    for case in cases.values():
        assert case["error"] == "" and case["up"] == case["ramp_clients"] == 2, text
        assert case["rate"] > 0 and case["server_clients_after"] == 3, text
        assert case["ping_sent"] > 0 and case["first_ok_after"], text
    for label in ("setups per second", "server memory per client", "ping loss",
                  "lockgate / charon (medians):", "load average at the start / end"):  # fmt: skip
        assert label in text, text
    assert _leftovers(proc.pid) == []
