"""The `lockgate` command line: argument handling, check-config, status output."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.control import ControlError, ControlServer
from daemon.status import format_status
from testkit.daemon import GOOD
from testkit.pki import Pki

STATUS: dict[str, Any] = {
    "daemon": {"version": "0.1.0", "pid": 42, "uptime": 75.0, "config": "/etc/lockgate.toml"},
    "connections": [
        {
            "name": "dc-cloud",
            "state": "up",
            "start": "initiate",
            "remote": "198.51.100.2",
            "remote_id": "198.51.100.2",
            "ike_sas": [
                {
                    "id": 1,
                    "suite": "AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519",
                    "local": "198.51.100.1[500]",
                    "remote": "198.51.100.2[500]",
                    "age": 70.2,
                }
            ],
        }
    ],
    "sas": [
        {
            "connection": "dc-cloud",
            "unique_id": 1,
            "suite": "aes256gcm16",
            "esn": False,
            "encap": "esp",
            "local": "198.51.100.1[500]",
            "remote": "198.51.100.2[500]",
            "local_ts": ["192.0.2.0/24"],
            "remote_ts": ["203.0.113.0/24"],
            "spi_in": "c0000001",
            "spi_out": "c0000002",
            "mtu": 1438,
            "age": 70.0,
            "bytes_in": 2048,
            "bytes_out": 3 * 1024 * 1024,
            "packets_in": 2,
            "packets_out": 2200,
            "drops": {"replay": 3},
        }
    ],
    "drops": {"no_policy": 5, "replay": 3},
}


def test_format_status_shows_connections_sas_counters_and_drops() -> None:
    text = format_status(STATUS)
    assert "dc-cloud: up, peer 198.51.100.2" in text
    assert "IKE SA #1: AES_GCM_16_256/PRF_HMAC_SHA2_384/CURVE_25519" in text
    assert "dc-cloud #1: aes256gcm16, esp 198.51.100.1[500] <-> 198.51.100.2[500], age 70s" in text
    assert "192.0.2.0/24 === 203.0.113.0/24  spi in c0000001 out c0000002" in text
    assert "in  2.0 KiB / 2 packets   out 3.0 MiB / 2200 packets" in text
    assert "drops: replay 3" in text
    assert "\nDrops (all SAs and unmatched traffic): no_policy 5, replay 3\n" in text


def test_format_status_of_an_idle_daemon() -> None:
    text = format_status({"connections": [], "sas": [], "drops": {}})
    assert "Connections (0):" in text and "CHILD SAs (0):" in text
    assert text.rstrip().endswith("none")


def test_check_config_accepts_a_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    assert main(["check-config", str(path)]) == 0
    assert "OK (1 connection(s): dc-cloud)" in capsys.readouterr().out


def test_check_config_names_the_key_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD + 'esp_proposals = ["aes129gcm16"]\n')
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "connections.dc-cloud.esp_proposals[0]: unknown algorithm 'aes129gcm16'" in err
    assert str(path) in err


def test_check_config_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "absent.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["up"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    capsys.readouterr()


def test_client_command_without_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-s", str(tmp_path / "none.sock"), "status"]) == 1
    assert "no daemon control socket" in capsys.readouterr().err


SUMMARY = {
    "daemon": {"version": "0.1.0", "pid": 42},
    "connections": 3,
    "ike_sas": 2,
    "ike_sas_in_core": 2,
    "child_sas": 5,
}


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A control server answering like the daemon, on its own thread and loop."""
    path = str(tmp_path / "d.sock")
    seen: list[dict[str, Any]] = []

    async def handler(req: dict[str, Any]) -> Any:
        seen.append(req)
        if req["command"] == "status":
            return SUMMARY if req.get("summary") else STATUS
        if req["command"] == "up" and req.get("name") == "dc-cloud":
            return "connection dc-cloud is up"
        if req["command"] == "explain" and req.get("name") == "dc-cloud":
            return EXPLAINED
        raise ControlError(f"no connection named {req.get('name')!r}")

    loop = asyncio.new_event_loop()
    server = ControlServer(path, handler)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.close())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(5)
    yield path, seen
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_status_json_and_text_through_the_socket(
    fake_daemon: tuple[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, seen = fake_daemon
    assert main(["-s", path, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS
    assert main(["-s", path, "status"]) == 0
    assert "CHILD SAs (1):" in capsys.readouterr().out
    assert main(["-s", path, "up", "dc-cloud"]) == 0
    assert capsys.readouterr().out.strip() == "connection dc-cloud is up"
    assert main(["-s", path, "down", "nope"]) == 1
    assert "no connection named 'nope'" in capsys.readouterr().err
    assert seen[-1] == {"command": "down", "name": "nope"}


EXPLAINED = {
    "connection": "dc-cloud",
    "up": False,
    "kind": "no_answer",
    "text": "connection dc-cloud is not up: no answer from peer cloud to IKE_SA_INIT\n",
}


def test_explain_prints_the_text_or_the_document(
    fake_daemon: tuple[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, seen = fake_daemon
    assert main(["-s", path, "explain", "dc-cloud"]) == 0
    assert capsys.readouterr().out == EXPLAINED["text"]
    assert seen[-1] == {"command": "explain", "name": "dc-cloud"}
    assert main(["-s", path, "explain", "--json", "dc-cloud"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPLAINED
    assert main(["-s", path, "explain", "nope"]) == 1
    assert "no connection named 'nope'" in capsys.readouterr().err


def test_rekey_sends_the_ike_flag_only_when_asked(
    fake_daemon: tuple[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, seen = fake_daemon
    main(["-s", path, "rekey", "dc-cloud"])
    assert seen[-1] == {"command": "rekey", "name": "dc-cloud"}
    main(["-s", path, "rekey", "--ike", "dc-cloud"])
    assert seen[-1] == {"command": "rekey", "name": "dc-cloud", "ike": True}


def test_format_status_says_which_ike_sa_a_rekey_replaced() -> None:
    status = json.loads(json.dumps(STATUS))
    status["connections"][0]["ike_sas"][0].update(id=4, rekeyed_from=1)
    assert "IKE SA #4: " in format_status(status)
    assert "rekeyed from #1" in format_status(status)
    assert "rekeyed from" not in format_status(STATUS)


def test_format_status_shows_a_child_sa_pfs_and_whether_it_is_quantum_safe() -> None:
    status = json.loads(json.dumps(STATUS))
    status["sas"][0].update(pfs="x25519+mlkem768", quantum_safe=True)
    assert ", PFS x25519+mlkem768, quantum-safe: yes" in format_status(status)
    status["sas"][0].update(pfs="x25519", quantum_safe=False)
    assert ", PFS x25519, quantum-safe: no" in format_status(status)
    # IKE_AUTH's CHILD SA has no PFS of its own, nor does an older daemon's status.
    assert "PFS" not in format_status(STATUS)


def test_check_config_loads_certificates_like_the_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = Pki(key_type="ecdsa-p256")
    ours = pki.issue("gw-a.example.net")
    (tmp_path / "gw.crt").write_bytes(ours.cert_pem)
    (tmp_path / "gw.key").write_bytes(ours.key_pem)
    (tmp_path / "gw.key").chmod(0o600)
    (tmp_path / "ca.crt").write_bytes(pki.ca.cert_pem)
    text = GOOD.replace(
        'id = "198.51.100.1"\n',
        f'id = "gw-a.example.net"\ncertificate = "{tmp_path / "gw.crt"}"\n'
        f'private_key = "{tmp_path / "gw.key"}"\nca = ["{tmp_path / "ca.crt"}"]\n',
    ).replace('psk = "demo-only-not-a-secret-0123456789"', 'auth = "pubkey"')
    path = tmp_path / "pubkey.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    assert "OK (1 connection(s): dc-cloud)" in capsys.readouterr().out
    # A private key that others can read is refused, naming the key.
    (tmp_path / "gw.key").chmod(0o644)
    assert main(["check-config", str(path)]) == 1
    assert "gateway.private_key: " in capsys.readouterr().err


def test_format_status_shows_the_ike_drops_line() -> None:
    status = dict(STATUS, ike_drops={"cookie_demanded": 19991, "unknown_spi": 2})
    assert "IKE drops: cookie_demanded 19991, unknown_spi 2\n" in format_status(status)
    assert "IKE drops: none\n" in format_status(STATUS)


def test_format_status_shows_where_the_kernel_dropped_packets() -> None:
    status = dict(STATUS, kernel_drops={"tun_queue": 45, "udp_receive_buffer": 7})
    assert "Kernel drops: tun_queue 45, udp_receive_buffer 7\n" in format_status(status)
    assert "Kernel drops: none\n" in format_status(STATUS)


def test_status_summary_asks_for_counts_only(
    fake_daemon: tuple[str, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, seen = fake_daemon
    assert main(["-s", path, "status", "--summary"]) == 0
    assert seen[-1] == {"command": "status", "summary": True}
    assert capsys.readouterr().out == (
        "lockgate 0.1.0 pid 42: 3 connection(s), 2 IKE SA(s), 5 CHILD SA(s)\n"
    )
    assert main(["-s", path, "status", "--summary", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == SUMMARY
    main(["-s", path, "status"])
    assert seen[-1] == {"command": "status"}


def test_format_status_says_why_esp_is_in_udp() -> None:
    status = json.loads(json.dumps(STATUS))
    status["connections"][0]["ike_sas"][0]["udp_encap"] = "the peer is a lockgate"
    assert "ESP in UDP: the peer is a lockgate" in format_status(status)
    status["connections"][0]["ike_sas"][0]["udp_encap"] = ""
    assert "ESP in UDP" not in format_status(status)


def test_check_config_prints_each_warning_and_still_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "doubtful.toml"
    path.write_text(
        GOOD
        + """
[connections.dc-cloud-half]
peer = "cloud"
local_subnets = ["192.0.2.0/25"]
remote_subnets = ["203.0.113.0/24"]
"""
    )
    from conf.load import load_config

    warnings = load_config(path).warnings
    assert warnings
    assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "OK (2 connection(s): dc-cloud, dc-cloud-half)" in out
    assert err.splitlines() == [f"warning: {p.path}: {p.reason}" for p in warnings]


def test_client_commands_find_the_socket_in_the_configuration(
    fake_daemon: tuple[str, list[dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, seen = fake_daemon
    monkeypatch.setenv("LOCKGATE_SOCKET", str(tmp_path / "elsewhere.sock"))
    conf = tmp_path / "gw.toml"
    conf.write_text(GOOD.replace("[gateway]\n", f'[gateway]\ncontrol_socket = "{path}"\n'))
    assert main(["status", "-c", str(conf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS
    assert main(["up", "-c", str(conf), "dc-cloud"]) == 0
    assert capsys.readouterr().out.strip() == "connection dc-cloud is up"
    assert main(["rekey", "--config", str(conf), "--ike", "dc-cloud"]) == 1
    assert seen[-1] == {"command": "rekey", "name": "dc-cloud", "ike": True}
    assert main(["down", "-c", str(conf), "nope"]) == 1
    assert "no connection named 'nope'" in capsys.readouterr().err
    assert main(["reload", "-c", str(conf)]) == 1
    assert seen[-1] == {"command": "reload"}
    # -s wins over -c.
    assert main(["-s", str(tmp_path / "none.sock"), "status", "-c", str(conf)]) == 1
    assert "no daemon control socket" in capsys.readouterr().err
    # A configuration that cannot be read is said so, naming it.
    assert main(["status", "-c", str(tmp_path / "absent.toml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lockgate status: ") and "cannot read" in err
