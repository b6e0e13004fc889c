"""conf: the post-quantum preshared key of a peer (`ppk_id`, `ppk_file`, `ppk_required`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from conf import ConfigError, Secret, parse_config
from conf.ike import ike_connection
from ikev2.config import PostQuantumKey

PPK_HEX = "00112233445566778899aabbccddeeff" * 2
"""32 octets as the file holds them (`openssl rand -hex 32`); a test value."""

BASE: dict[str, Any] = {
    "gateway": {"addresses": ["198.51.100.1"], "id": "198.51.100.1"},
    "peers": {"cloud": {"address": "198.51.100.2", "psk": "test-psk-NOT-SECRET-0123456789"}},
    "connections": {
        "cloud-net": {
            "peer": "cloud",
            "local_subnets": ["192.0.2.0/24"],
            "remote_subnets": ["203.0.113.0/24"],
        }
    },
}


def _config(**peer: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["peers"]["cloud"].update(peer)
    return data


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return [str(p) for p in err.value.problems]


def _ppk_file(tmp_path: Path, text: str = PPK_HEX + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "cloud.ppk"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_ppk_is_read_as_hex_and_reaches_the_ike_connection(tmp_path: Path) -> None:
    path = _ppk_file(tmp_path, "  0011223344556677 8899aabbccddeeff\n" * 2)
    cfg = parse_config(_config(ppk_id="cloud-2026", ppk_file=str(path), ppk_required=True))
    peer = cfg.peers["cloud"]
    assert peer.ppk == Secret(bytes.fromhex(PPK_HEX))
    assert (peer.ppk_id, peer.ppk_file, peer.ppk_required) == ("cloud-2026", path, True)
    assert PPK_HEX not in repr(peer) and "0011" not in repr(peer)
    ike = ike_connection(cfg, peer)
    assert ike.ppk == PostQuantumKey(b"cloud-2026", bytes.fromhex(PPK_HEX), True)
    assert "0011" not in repr(ike)


def test_without_ppk_keys_there_is_no_ppk() -> None:
    cfg = parse_config(_config())
    assert cfg.peers["cloud"].ppk is None and not cfg.peers["cloud"].ppk_required
    assert ike_connection(cfg, cfg.peers["cloud"]).ppk is None


@pytest.mark.parametrize(("mode", "who"), [(0o644, "everyone"), (0o640, "its group")])
def test_a_ppk_file_others_can_read_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    path = _ppk_file(tmp_path, mode=mode)
    assert _problems(_config(ppk_id="cloud-2026", ppk_file=str(path))) == [
        f"peers.cloud.ppk_file: '{path}' is accessible by {who} (mode {mode:04o}); a secret "
        "file must be owner-only: chmod 600"
    ]


def test_a_missing_ppk_file_is_refused(tmp_path: Path) -> None:
    (problem,) = _problems(_config(ppk_id="cloud-2026", ppk_file=str(tmp_path / "none.ppk")))
    assert problem.startswith("peers.cloud.ppk_file: ")


def test_a_short_ppk_is_refused_with_its_size(tmp_path: Path) -> None:
    path = _ppk_file(tmp_path, "00" * 31)
    assert _problems(_config(ppk_id="cloud-2026", ppk_file=str(path))) == [
        f"peers.cloud.ppk_file: '{path}' holds a PPK of 31 octets; use at least 32 random "
        "octets written as hex (`openssl rand -hex 32`)"
    ]


@pytest.mark.parametrize("text", ["not hex at all, not hex at all, not hex at all!", "abc"])
def test_a_ppk_file_that_is_not_hex_is_refused(tmp_path: Path, text: str) -> None:
    path = _ppk_file(tmp_path, text)
    (problem,) = _problems(_config(ppk_id="cloud-2026", ppk_file=str(path)))
    assert problem == (
        f"peers.cloud.ppk_file: '{path}' is not hexadecimal text; write the PPK as hex "
        "digits, e.g. `openssl rand -hex 32`"
    )
    assert text not in problem


def test_ppk_id_and_ppk_file_come_together(tmp_path: Path) -> None:
    path = _ppk_file(tmp_path)
    assert _problems(_config(ppk_id="cloud-2026")) == [
        "peers.cloud.ppk_file: ppk_id and ppk_file must be set together"
    ]
    assert _problems(_config(ppk_file=str(path))) == [
        "peers.cloud.ppk_id: ppk_id and ppk_file must be set together"
    ]


def test_ppk_required_needs_a_ppk() -> None:
    assert _problems(_config(ppk_required=True)) == [
        "peers.cloud.ppk_required: needs ppk_id and ppk_file"
    ]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "must not be empty"),
        ("x" * 256, "must be 1 to 255 printable characters"),
        ("tab\there", "must be 1 to 255 printable characters"),
    ],
)
def test_a_bad_ppk_id_is_refused(tmp_path: Path, bad: str, reason: str) -> None:
    path = _ppk_file(tmp_path)
    (problem,) = _problems(_config(ppk_id=bad, ppk_file=str(path)))
    assert problem.startswith(f"peers.cloud.ppk_id: {reason}")
