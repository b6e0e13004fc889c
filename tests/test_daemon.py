"""`lockgate daemon` refuses a bad configuration before it touches anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import main
from testkit.daemon import GOOD  # the same well-formed configuration the CLI tests start from


def run_lockgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "LOCKGATE_LOG_LEVEL": "info"},
    )


@pytest.mark.parametrize(
    ("addition", "message"),
    [
        (
            'esp_proposals = ["aes129gcm16"]\n',
            "connections.dc-cloud.esp_proposals[0]: unknown algorithm 'aes129gcm16'",
        ),
        ('start = "sometimes"\n', "connections.dc-cloud.start"),
        ('remote_subnets2 = ["203.0.113.0/24"]\n', "connections.dc-cloud.remote_subnets2"),
    ],
)
def test_daemon_with_malformed_config_names_key_and_exits_1(
    tmp_path: Path, addition: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD + addition)
    proc = run_lockgate("-s", str(tmp_path / "c.sock"), "daemon", "-c", str(path))
    assert proc.returncode == 1
    assert message in proc.stderr
    assert str(path) in proc.stderr
    # Nothing was created: no control socket.
    assert not (tmp_path / "c.sock").exists()


def test_daemon_with_unparsable_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[gateway\naddresses = ")
    proc = run_lockgate("daemon", "-c", str(path))
    assert proc.returncode == 1
    assert "invalid TOML" in proc.stderr


@pytest.mark.parametrize("name", ["dc.toml", "cloud.toml"])
def test_check_config_accepts_the_shipped_examples(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In process (the tests above run the real command): an interpreter start per
    # example cost more than the check itself.
    path = Path(__file__).resolve().parent.parent / "conf" / "examples" / name
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"{path}: OK (")
