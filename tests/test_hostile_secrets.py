"""lockgate gives nothing away: secrets never logged, the control socket is
root's only, and the daemon works with exactly the capabilities its systemd unit grants.

- Logs: lockgate runs at debug level against charon, which logs every key it derives
  (filelog `ike = 4, chd = 4`: SK_d, SK_ai/ar, SK_ei/er, SK_pi/pr, the DH secret and the
  CHILD SAs' ESP keys). After traffic and CHILD and IKE rekeys from both sides, none of
  those keys (hex either case, base64, or any 16-hex-digit piece of one), no PSK and no
  private key appears in lockgate's log (nor in its status).
- Control socket: a process of uid 65534 cannot connect (mode 0600); one that bypasses
  the file mode (CAP_DAC_OVERRIDE kept as an ambient capability) is refused by the
  daemon's SO_PEERCRED check and gets no status.
- Capabilities: `conf/lockgate.service` grants CAP_NET_ADMIN, CAP_NET_BIND_SERVICE and
  CAP_NET_RAW only; lockgate started under `setpriv` with just those (root's
  privileges off, as `SecureBits=noroot-locked` does) establishes and carries traffic,
  and serves its `[metrics]` endpoint.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hostile_helpers import charon_dumps, make_charon_log_keys
from interop_helpers import PSK, Case, LockgateDaemon, interop, rekey_child, wait_until
from netns import ping

pytestmark = [pytest.mark.netns, pytest.mark.interop]

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "conf" / "lockgate.service"
GRANTED = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
CAP_BITS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
NOBODY = 65534
METRICS = "127.0.0.1:9273"
SYSTEM_PYTHON = "/usr/bin/python3"
"""The client runs as uid 65534, which may not read the project's virtualenv; it needs
only the standard library."""


def leaks(log: str, secret: bytes) -> list[str]:
    """The forms of `secret` that occur in `log`."""
    lowered = log.lower()
    hexed = secret.hex()
    out = [form for form in (hexed,) if form in lowered]
    out += [f"piece {hexed[i : i + 16]}" for i in range(0, len(hexed) - 15, 8)
            if hexed[i : i + 16] in lowered]  # fmt: skip
    if base64.b64encode(secret).decode() in log:
        out.append("base64")
    if len(secret) >= 8 and secret.decode("latin-1") in log:
        out.append("raw")
    return out


@pytest.mark.parametrize("auth", ["psk", "ecdsa-p256"])
def test_no_key_psk_or_private_key_in_debug_logs(auth: str) -> None:
    with interop(Case(auth=auth, esp="aes128gcm16")) as world:
        topo = world.topo
        make_charon_log_keys(world)
        world.bring_up()
        daemon = world.daemon
        wait_until(lambda: ping(topo.host_a, topo.site_b.host4, count=1).returncode == 0, "ping")
        rekey_child(world, "net4", by_lockgate=True)
        rekey_child(world, "net4", by_lockgate=False)
        daemon.command("rekey", name="net4", ike=True)
        ping(topo.host_a, topo.site_b.host4, count=3)
        secrets = charon_dumps(world.charon.log_path.read_text())
        names = " ".join(secrets)
        # What charon derived (IKE SA, its rekey, three CHILD SAs): if these are
        # missing the scan below would prove nothing.
        for expected in ("Sk_d", "Sk_ei", "Sk_pi", "encryption initiator key"):
            assert expected in names, f"charon logged no {expected}: {names}"
        log = daemon.log()
        print(f"\n{len(secrets)} secrets from charon's log checked against "
              f"{len(log.splitlines())} lines of lockgate's debug log")  # fmt: skip
        assert "DEBUG" in log, "lockgate did not log at debug level"
        found = {name: forms for name, data in secrets.items() if (forms := leaks(log, data))}
        assert found == {}, f"lockgate's log holds charon's keys: {found}"
        # Nor does what `lockgate status --json` shows an operator.
        shown = json.dumps(daemon.status())
        found = {name: forms for name, data in secrets.items() if (forms := leaks(shown, data))}
        assert found == {}, f"lockgate's status holds charon's keys: {found}"
        assert PSK not in shown
        if auth == "psk":
            assert PSK not in log
            assert leaks(log, PSK.encode()) == []
        else:
            key_pem = (topo.lab.tmpdir / "gw-a.key").read_bytes()
            key = load_pem_private_key(key_pem, password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            scalar = key.private_numbers().private_value.to_bytes(32, "big")
            assert leaks(log, scalar) == []
            body = [ln for ln in key_pem.decode().splitlines() if "-----" not in ln]
            assert not [ln for ln in body if ln in log], "PEM lines of the private key logged"
            assert "PRIVATE KEY" not in log


_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": type(exc).__name__}))
    raise SystemExit(0)
# A refused client is told so at once; an accepted one hears nothing until it asks.
# (Asking first could race the refusal's close and end in a reset.)
s.settimeout(1)
try:
    data = s.recv(65536)
except TimeoutError:
    s.settimeout(5)
    s.sendall(b'{"command": "status"}\\n')
    data = s.recv(65536)
print(json.dumps({"connect": "ok", "answer": data.decode(errors="replace")}))
"""


def test_control_socket_refuses_non_root() -> None:
    with interop(Case()) as world:
        daemon = world.start_lockgate()
        # Let uid 65534 reach the socket file itself, so its own mode and the daemon's
        # check are what is tested, not the lab's private directory.
        world.topo.lab.tmpdir.chmod(0o711)
        plain = subprocess.run(
            [SYSTEM_PYTHON, "-c", _CLIENT, daemon.socket],
            user=NOBODY, group=NOBODY, extra_groups=[],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
        assert json.loads(plain.stdout) == {"connect": "PermissionError"}
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) is needed"
        bypass = subprocess.run(
            [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "--inh-caps=+dac_override", "--ambient-caps=+dac_override",
             SYSTEM_PYTHON, "-c", _CLIENT, daemon.socket],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert bypass.returncode == 0, bypass.stderr
        result = json.loads(bypass.stdout)
        assert result["connect"] == "ok", result
        answer = json.loads(result["answer"])
        assert answer == {"ok": False, "error": "permission denied: root only"}
        wait_until(
            lambda: f"refused a client with uid {NOBODY}" in daemon.log(), "the refusal logged"
        )
        # The same client as root gets the status: the refusals above are the uid's.
        as_root = subprocess.run(
            [SYSTEM_PYTHON, "-c", _CLIENT, daemon.socket],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
        answer = json.loads(json.loads(as_root.stdout)["answer"])
        assert answer["ok"] is True
        assert answer["result"]["daemon"]["pid"] == daemon.proc.pid


def unit_capabilities() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in {"CapabilityBoundingSet", "AmbientCapabilities"}:
            out.setdefault(key.strip(), set()).update(value.split())
    return out


def test_unit_grants_only_three_capabilities_and_the_daemon_works_with_them() -> None:
    caps = unit_capabilities()
    assert caps == {"CapabilityBoundingSet": GRANTED, "AmbientCapabilities": GRANTED}
    assert "SecureBits=noroot-locked" in UNIT.read_text().splitlines()
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed"
    names = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(GRANTED))
    with interop(Case()) as world:
        topo = world.topo
        path = topo.lab.tmpdir / "capped.toml"
        # With the Prometheus endpoint on: a TCP listener needs no more than the unit gives.
        path.write_text(world.lockgate_text + f'\n[metrics]\nlisten = "{METRICS}"\n')
        path.chmod(0o600)
        sock = str(topo.lab.tmpdir / "capped.sock")
        proc = topo.gw_a.spawn(
            [setpriv, "--securebits=+noroot,+noroot_locked,+no_setuid_fixup",
             f"--bounding-set=-all,{names}", f"--inh-caps=-all,{names}",
             f"--ambient-caps=-all,{names}", "--no-new-privs",
             sys.executable, "-m", "daemon.cli", "-s", sock, "daemon", "-c", str(path),
             "--log-level", "debug"],
            name="lockgate-capped",
            log_path=topo.lab.tmpdir / "capped.log",
        )  # fmt: skip
        daemon = LockgateDaemon(topo.gw_a, proc, sock, path)
        world.lockgate = daemon
        try:
            wait_until(lambda: bool(daemon.status()), "the capped daemon's control socket")
        except AssertionError:
            raise AssertionError(f"capped lockgate did not start:\n{proc.log()}") from None
        status = Path(f"/proc/{proc.pid}/status").read_text()
        effective = int(re.search(r"^CapEff:\s+([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
        bounding = int(re.search(r"^CapBnd:\s+([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
        wanted = sum(1 << CAP_BITS[c] for c in GRANTED)
        assert effective == wanted, f"CapEff {effective:x}, wanted {wanted:x}"
        assert bounding == wanted, f"CapBnd {bounding:x}, wanted {wanted:x}"
        world.charon.wait_for_child("net4", timeout=20)
        wait_until(lambda: bool(daemon.sas("net4")), "lockgate's CHILD SA")
        ping(topo.host_a, topo.site_b.host4, count=3)
        ping(topo.host_b, topo.site_a.host4, count=3)
        fetch = (
            "import urllib.request; "
            f"print(urllib.request.urlopen('http://{METRICS}/metrics', timeout=10).read().decode())"
        )
        scraped = topo.gw_a.run(sys.executable, "-c", fetch).stdout
        assert 'lockgate_connection_up{connection="net4",mode="policy"} 1.0' in scraped, scraped
