"""Boot a real systemd with conf/lockgate.service, exactly as shipped, and check the
features that open sockets, create TUNs or write files under its sandbox.

    python -m testkit.systemd_check [--base ROOT] [--keep]

A Debian 12 root is made with `mmdebstrap` (or copied from `--base`, a root this
script made earlier with `--keep`), lockgate is pip-installed into it from this
checkout, and `systemd-nspawn -b` boots it inside the lab's gateway namespace:

    cli ns (openvpn, charon) --wan 198.51.100.0/25-- gw ns: the container, systemd,
    site ns (lockgate) ------------/                    lockgate.service
                                                          | lan 203.0.113.0/24
                                                        cloud ns (203.0.113.10)

Checked, each a line PASS/FAIL: the unit is active; SSL servers on TCP 443 and UDP 1194
(a stock `openvpn` with a `lockgate profile` pings the cloud); the ikev2 server with
auth "any" (charon with EAP-MSCHAPv2, then with EAP-TLS, pings the cloud); a route-mode
connection to a lockgate at the site (its own TUN; the site pings the cloud);
`[metrics]` scraped with curl; `[console]` answers over HTTPS and made its certificate
in /etc/lockgate, and an admin who logs in adds a user (the users file and its lock file
written from inside the sandbox, both 0600); `lockgate user add` while the daemon runs
writes a 0600 file in /etc/lockgate (the users who log in above are added that way after
the daemon started, the EAP-TLS user just before her login, so the logins show that it
re-read the files); no traceback or restart in the journal.

Then a second phase, `[gateway] workers = 2` (which takes no route-mode connection and
no ikev2 server): /etc/lockgate/lockgate.toml becomes a policy-mode site-to-site
configuration towards the site's lockgate, itself restarted in policy mode with
`workers = 2`, and `systemctl restart lockgate`. Checked: the unit is active; `lockgate
status` shows 2 workers with their pids and a CHILD SA pair for each (RFC 9611); the
site pings the cloud; the main process and the workers are in the unit's control group
(/proc/PID/cgroup and `systemd-cgls`); after `kill -9` of a worker the daemon starts
another (a new pid), the connection carries pings again, and the unit is still active
with the same MainPID and no restart; `systemctl stop` leaves none of the pids seen,
and the stopped unit's status text is "stopped"; the journal of the phase has no
traceback and no SIGKILL from systemd.

Needs root, mmdebstrap, systemd-nspawn, openvpn, strongSwan's charon and network access
to a Debian mirror and PyPI. Cleans up by PID: the container (poweroff, then SIGKILL of
the nspawn process), the lab's processes and namespaces, and the container root unless
`--keep`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from daemon.lab.netns import Lab, Namespace, Process, ping
from testkit.daemon import PSK, config, wait_until
from testkit.pki import Pki
from testkit.ra_lab import SERVER, SERVER_NAME, missing_strongswan, road_warrior_conf
from testkit.strongswan import PLUGINS, Charon

REPO = Path(__file__).resolve().parent.parent
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,iproute2,ca-certificates"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

CLIENT, SITE = "198.51.100.1", "198.51.100.3"
CLOUD = "203.0.113.10"
SITE_LAN = "192.0.2.129"
PASSWORD = "s3cret-Pass-42"

# Each server has its certificate and [gateway] none: the console then makes a
# self-signed one in /etc/lockgate at its first start (a file the unit must let it write).
SERVER_CERT = """certificate = "/etc/lockgate/server.pem"
private_key = "/etc/lockgate/server.key"
"""

CONFIG = f"""
[gateway]
addresses = ["{SERVER}"]
id = "{SERVER_NAME}"
interface = "lgsd0"
ca = ["/etc/lockgate/ca.pem"]

[metrics]
listen = "{SERVER}:9273"

[console]
listen = "{SERVER}:8443"
admins = "/etc/lockgate/admins"

[remote_access.office]
protocol = "ssl"
transport = "tcp"
client_pool = "198.51.100.128/27"
local_subnets = ["203.0.113.0/24"]
users = "/etc/lockgate/office.users"
{SERVER_CERT}max_connections = 10

[remote_access.officeu]
protocol = "ssl"
transport = "udp"
client_pool = "198.51.100.160/27"
local_subnets = ["203.0.113.0/24"]
users = "/etc/lockgate/officeu.users"
{SERVER_CERT}max_connections = 10

[remote_access.laptops]
protocol = "ikev2"
auth = "any"
address = "{SERVER_NAME}"
client_pool = "192.0.2.0/26"
local_subnets = ["203.0.113.0/24"]
client_ca = "/etc/lockgate/ca.pem"
users = "/etc/lockgate/laptops.users"
{SERVER_CERT}max_connections = 10

[peers.site]
address = "{SITE}"
psk = "{PSK}"

[connections.site]
peer = "site"
mode = "route"
routes = ["192.0.2.128/25"]
inside_address = "198.51.100.253/30"
esp_proposals = ["aes128gcm16"]
start = "wait"
"""

SITE_CONFIG = f"""
[gateway]
addresses = ["{SITE}"]
id = "{SITE}"
interface = "lgsite0"

[peers.gw]
address = "{SERVER}"
id = "{SERVER_NAME}"
psk = "{PSK}"

[connections.gw]
peer = "gw"
mode = "route"
routes = ["203.0.113.0/24"]
inside_address = "198.51.100.254/30"
esp_proposals = ["aes128gcm16"]
"""

# The second phase: `[gateway] workers = 2` on both lockgates, so each negotiates one
# CHILD SA pair per worker (RFC 9611). Workers take only policy-mode connections (no
# route mode, no ikev2 server), so the container's file is replaced by this one.
WORKERS = 2
WORKERS_CONFIG = config(me=SERVER, peer=SITE, local=["203.0.113.0/24"],
                        remote=["192.0.2.128/25"], start="wait",
                        gateway_extra=f"workers = {WORKERS}")  # fmt: skip
SITE_WORKERS_CONFIG = config(me=SITE, peer=SERVER, local=["192.0.2.128/25"],
                             remote=["203.0.113.0/24"], start="initiate",
                             gateway_extra=f"workers = {WORKERS}")  # fmt: skip
"""Both connections are named "site" (`testkit.daemon.config`)."""

# Debian's Python in the root; lockgate and its dependencies from PyPI into a venv,
# the CLI on systemd's PATH for the unit's ExecStart=lockgate.
INSTALL = """set -e
python3 -m venv /opt/lockgate
/opt/lockgate/bin/pip uninstall --quiet --yes lockgate || true
/opt/lockgate/bin/pip install --quiet --no-cache-dir /opt/src
ln -sf /opt/lockgate/bin/lockgate /usr/local/bin/lockgate
"""


def run(args: list[str], *, timeout: float = 600, check: bool = True, **kw: object) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        what = f"{' '.join(args)} failed ({proc.returncode})"
        raise RuntimeError(f"{what}:\n{proc.stdout}{proc.stderr}")
    return str(proc.stdout)


def make_root(root: Path, base: Path | None) -> None:
    """A Debian 12 root with systemd, then lockgate from this checkout installed."""
    if base is not None:
        run(["cp", "-a", "--reflink=auto", f"{base}/.", str(root)])
    else:
        run(["mmdebstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(root)])
    src = root / "opt/src"
    if src.exists():
        shutil.rmtree(src)
    skip = (".git", ".venv", "__pycache__", "*_cache", "build", "*.egg-info")
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*skip))
    run(["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit",
         f"--bind-ro={HOST_CA}:/etc/ssl/certs/host-ca.crt",
         "--setenv=PIP_CERT=/etc/ssl/certs/host-ca.crt", "sh", "-c", INSTALL])  # fmt: skip


def install_unit(root: Path, pki: Pki) -> None:
    """The unit as shipped, enabled, and the configuration with its credentials."""
    units = root / "etc/systemd/system"
    shutil.copy(REPO / "conf/lockgate.service", units / "lockgate.service")
    wants = units / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (wants / "lockgate.service").unlink()
    (wants / "lockgate.service").symlink_to("/etc/systemd/system/lockgate.service")
    etc = root / "etc/lockgate"
    shutil.rmtree(etc, ignore_errors=True)  # a --base root's users files and certificates
    etc.mkdir(mode=0o700)
    cred = pki.issue(SERVER_NAME, "ecdsa-p256", key_usage=True)
    (etc / "server.pem").write_bytes(cred.cert_pem)
    (etc / "server.key").write_bytes(cred.key_pem)
    (etc / "server.key").chmod(0o600)
    (etc / "ca.pem").write_bytes(pki.ca.cert_pem)
    (etc / "lockgate.toml").write_text(CONFIG)


@dataclass
class Container:
    """The booted root: commands run inside it through nsenter into its PID 1."""

    nspawn: Process
    leader: int = 0

    def find_leader(self, timeout: float = 60) -> None:
        def child() -> bool:
            with contextlib.suppress(OSError):
                kids = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text()
                for pid in kids.split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        self.leader = int(pid)
                        return True
            return False

        wait_until(child, "the container's systemd", timeout=timeout)

    def sh(self, script: str, *, check: bool = True, stdin: str = "", timeout: float = 120) -> str:
        args = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C",
                "/usr/bin/env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                "sh", "-c", script]  # fmt: skip
        return run(args, check=check, input=stdin, timeout=timeout)

    def journal(self) -> str:
        return self.sh("journalctl -b -u lockgate --no-pager -o cat | tail -n 60", check=False)


@contextmanager
def booted(lab: Lab, root: Path, gw: Namespace) -> Iterator[Container]:
    log_path = lab.tmpdir / "boot.log"
    # A container in a given namespace gets no CAP_NET_ADMIN from nspawn (only with
    # --private-network), and the unit's bounding set could not then grant it.
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            ["systemd-nspawn", "-D", str(root), "-b", "--register=no", "--keep-unit",
             "--console=passive", f"--network-namespace-path=/run/netns/{gw.name}",
             "--bind=/dev/net/tun", "--capability=CAP_NET_ADMIN"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    nspawn = Process(popen.pid, popen, "systemd-nspawn", log_path)
    box = Container(nspawn)
    try:
        box.find_leader()
        wait_until(
            lambda: (
                box.sh("systemctl is-system-running", check=False).strip()
                in ("running", "degraded")
            ),
            "the boot to finish",
            timeout=180,
        )
        yield box
    finally:
        if box.leader:
            box.sh("systemctl poweroff", check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                nspawn.popen.wait(60)
        nspawn.stop()


@dataclass
class Report:
    results: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, name: str, step: Callable[[], str]) -> bool:
        try:
            detail = step()
            ok = True
        except Exception as exc:  # one failed feature must not hide the next ones
            detail, ok = f"{type(exc).__name__}: {exc}", False
        self.results.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail.strip()[-1500:]}", flush=True)
        return ok


def openvpn_pings(lab: Lab, box: Container, cli: Namespace, server: str, user: str) -> str:
    profile = lab.tmpdir / f"{server}.ovpn"
    profile.write_text(box.sh(f"lockgate profile {server} --user {user}"))
    creds = lab.tmpdir / f"{server}.creds"
    creds.write_text(f"{user}\n{PASSWORD}\n")
    creds.chmod(0o600)
    client = cli.spawn(
        ["openvpn", "--config", str(profile), "--pull-filter", "ignore", "dhcp-option",
         "--auth-user-pass", str(creds), "--auth-retry", "none", "--verb", "3"],
        name=f"openvpn-{server}", log_path=lab.tmpdir / f"openvpn-{server}.log",
    )  # fmt: skip
    try:
        wait_until(
            lambda: (
                "Initialization Sequence Completed" in client.log()
                or "AUTH_FAILED" in client.log()
                or not client.alive()
            ),
            "openvpn to connect",
            timeout=60,
        )
        if "Initialization Sequence Completed" not in client.log():
            raise RuntimeError(client.log()[-1500:] + box.journal())
        ping(cli, CLOUD, count=3)
        proto = next(ln for ln in profile.read_text().splitlines() if ln.startswith("proto"))
        return f"openvpn ({proto}) connected to {server}, ping {CLOUD} ok"
    finally:
        client.stop()


def road_warrior(lab: Lab, cli: Namespace, pki: Pki, user: str, tls: bool) -> Charon:
    """charon as a road warrior of `laptops`: EAP-MSCHAPv2, or EAP-TLS as Windows does
    it (the certificate in EAP-TLS, the EAP identity its subject DN)."""
    charon = Charon(cli, f"rw-{user}")
    text = charon.conf_path.read_text()
    text = text.replace(f"load = {PLUGINS}", f"load = {PLUGINS} eap-mschapv2 eap-tls eap-identity")
    charon.conf_path.write_text(text)
    charon.write_credential("x509ca", "ca.crt", pki.ca.cert_pem)
    secrets = ""
    if tls:
        cred = pki.issue_client(user)
        charon.write_credential("x509", "user.crt", cred.cert_pem)
        charon.write_credential("private", "user.key", cred.key_pem)
        local = f'auth = eap-tls\n certs = user.crt\n eap_id = "{cred.dn}"'
    else:
        local = f"auth = eap-mschapv2\n eap_id = {user}"
        secrets = f'eap-user {{\n id = {user}\n secret = "{PASSWORD}"\n }}\n'
    (charon.swanctl_dir / "swanctl.conf").write_text(road_warrior_conf(local, secrets))
    charon.start()
    charon.swanctl("--load-all")
    return charon


def ikev2_pings(lab: Lab, box: Container, cli: Namespace, pki: Pki, user: str, tls: bool) -> str:
    charon = road_warrior(lab, cli, pki, user, tls)
    try:
        try:
            charon.initiate("cloud", "lockgate", timeout=40)
            sa = charon.wait_for_child("cloud")
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{charon.logs()[-1500:]}\n{box.journal()}") from None
        ping(cli, CLOUD, count=3)
        clients = box.sh("lockgate clients")
        if user not in clients:
            raise RuntimeError(f"{user} not in lockgate clients:\n{clients}")
        vips = sa.raw.get("local-vips")
        return f"{'EAP-TLS' if tls else 'EAP-MSCHAPv2'} login of {user}, vip {vips}, ping ok"
    finally:
        charon.stop()


def add_user(box: Container, server: str, user: str) -> str:
    """`lockgate user add` in the running container; the file must be 0600 in
    /etc/lockgate and the daemon must see the user without a reload."""
    out = box.sh(f"lockgate user add {server} {user} --password-stdin", stdin=PASSWORD + "\n")
    mode = box.sh(f"stat -c %a /etc/lockgate/{server}.users").strip()
    if mode != "600":
        raise RuntimeError(f"/etc/lockgate/{server}.users has mode {mode}")
    return out


def site_daemon(lab: Lab, site: Namespace, name: str, text: str) -> Process:
    """The lockgate of the site, from this checkout, in the site namespace."""
    conf = lab.tmpdir / f"{name}.toml"
    conf.write_text(text)
    return site.spawn(
        [sys.executable, "-m", "daemon.cli", "-s", str(lab.tmpdir / f"{name}.sock"), "daemon",
         "-c", str(conf)],
        name=f"lockgate-{name}", log_path=lab.tmpdir / f"{name}.log",
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def site_pings(site: Namespace) -> bool:
    """One ping from the site's LAN address to the cloud, through the tunnel."""
    args = ("ping", "-n", "-c", "1", "-w", "2", "-I", SITE_LAN, CLOUD)
    return site.run(*args, check=False).returncode == 0


def checks(lab: Lab, box: Container, cli: Namespace, site: Namespace, pki: Pki) -> Report:
    report = Report()

    def active() -> str:
        state = box.sh("systemctl is-active lockgate", check=False).strip()
        if state != "active":
            raise RuntimeError(f"lockgate.service is {state}\n{box.journal()}")
        return box.sh("systemctl show -p MainPID,NRestarts lockgate").replace("\n", " ")

    if not report.check("unit active", active):
        return report
    for server in ("office", "officeu", "laptops"):
        report.check(f"user add {server} erin", partial(add_user, box, server, "erin"))
    report.check("ssl tcp 443", lambda: openvpn_pings(lab, box, cli, "office", "erin"))
    report.check("ssl udp 1194", lambda: openvpn_pings(lab, box, cli, "officeu", "erin"))
    report.check("ikev2 eap-mschapv2", lambda: ikev2_pings(lab, box, cli, pki, "erin", tls=False))
    report.check("user add tina (for EAP-TLS)", lambda: add_user(box, "laptops", "tina"))
    report.check("ikev2 eap-tls", lambda: ikev2_pings(lab, box, cli, pki, "tina", tls=True))

    def route_mode() -> str:
        daemon = site_daemon(lab, site, "site", SITE_CONFIG)
        try:
            wait_until(partial(site_pings, site), "a ping through the route-mode tunnel",
                       timeout=60)  # fmt: skip
            link = box.sh("ip -br link show dev lg-site")
            return f"{link.strip()}; ping from {SITE_LAN} to {CLOUD} ok"
        except Exception as exc:
            raise RuntimeError(f"{exc}\n{daemon.log()[-1500:]}\n{box.journal()}") from None
        finally:
            daemon.stop()

    report.check("route mode", route_mode)

    def metrics() -> str:
        text = run(["ip", "netns", "exec", cli.name, "curl", "-sS", "--max-time", "20",
                    f"http://{SERVER}:9273/metrics"])  # fmt: skip
        lines = [line for line in text.splitlines() if line.startswith("lockgate_")]
        if not any("lockgate_remote_access_clients" in line for line in lines):
            raise RuntimeError(text[-1500:])
        return f"{len(lines)} samples, e.g. {lines[0]}"

    report.check("metrics", metrics)

    def console() -> str:
        code = run(["ip", "netns", "exec", cli.name, "curl", "-ksS", "--max-time", "20", "-o",
                    "/dev/null", "-w", "%{http_code}", f"https://{SERVER}:8443/login"])  # fmt: skip
        files = box.sh("stat -c '%n %a' /etc/lockgate/console-*.pem")
        if code.strip() != "200":
            raise RuntimeError(f"HTTP {code}\n{box.journal()}")
        return f"GET /login: {code}; {files.strip()}".replace("\n", ", ")

    report.check("console", console)

    def console_user_add() -> str:
        # The console writes the users file (and its lock file beside it) from inside
        # the unit's sandbox, unlike `lockgate user` run from a shell.
        box.sh("lockgate admin add ops --password-stdin", stdin=PASSWORD + "\n")
        jar, url = lab.tmpdir / "console.cookies", f"https://{SERVER}:8443"

        def curl(*args: str) -> str:
            return run(["ip", "netns", "exec", cli.name, "curl", "-ksS", "--max-time", "20",
                        "-b", str(jar), "-c", str(jar), *args])  # fmt: skip

        def post(path: str, page: str, **fields: str) -> str:
            token = re.search(r'name="csrf" value="([^"]+)"', page)
            if token is None:
                raise RuntimeError(f"no CSRF token in {page[-1500:]}")
            data = [
                arg
                for key, value in {"csrf": token[1], **fields}.items()
                for arg in ("--data-urlencode", f"{key}={value}")
            ]
            return curl("-o", "/dev/null", "-w", "%{http_code}", *data, f"{url}{path}")

        post("/login", curl(f"{url}/login"), name="ops", password=PASSWORD)
        code = post("/remote-access/users/add", curl(f"{url}/remote-access"),
                    server="office", user="carol", password=PASSWORD)  # fmt: skip
        listed = box.sh("lockgate user list office")
        files = box.sh("stat -c '%n %a' /etc/lockgate/office.users /etc/lockgate/office.users.lock")
        if "carol" not in listed or files.count(" 600") != 2:
            raise RuntimeError(f"HTTP {code}; {listed}; {files}\n{box.journal()}")
        return f"POST add carol: HTTP {code}; {files.strip()}".replace("\n", ", ")

    report.check("console user add", console_user_add)

    def healthy() -> str:
        journal = box.sh("journalctl -b -u lockgate --no-pager -o cat")
        state = box.sh("systemctl show -p ActiveState,NRestarts lockgate").replace("\n", " ")
        for bad in ("Traceback", "PermissionError", "Operation not permitted", "Bad system call"):
            if bad in journal:
                raise RuntimeError(f"{bad!r} in the journal\n{journal[-3000:]}")
        return state

    report.check("no errors in the journal, no restarts", healthy)
    workers_phase(lab, box, site, report)
    return report


def unit_state(box: Container) -> dict[str, str]:
    text = box.sh(
        "systemctl show -p ActiveState,MainPID,NRestarts,ControlGroup,StatusText lockgate"
    )
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def gateway_status(box: Container) -> dict[str, Any]:
    status = json.loads(box.sh("lockgate status --json"))
    if not isinstance(status, dict):
        raise RuntimeError(f"lockgate status --json gave {status!r}")
    return status


def worker_pids(status: dict[str, Any]) -> list[int]:
    return [int(w.get("pid") or 0) for w in status.get("workers", [])]


def workers_line(box: Container) -> str:
    text = box.sh("lockgate status")
    return next((ln for ln in text.splitlines() if ln.startswith("Data-plane workers")), text)


def workers_phase(lab: Lab, box: Container, site: Namespace, report: Report) -> None:
    """`[gateway] workers = 2` under the unit: the file replaced and the unit restarted,
    two workers with a CHILD SA pair each towards a site lockgate with two workers, the
    workers in the unit's control group, a worker killed and restarted by the daemon
    (not by systemd), and a stop that leaves no worker behind."""
    box.sh("cat > /etc/lockgate/lockgate.toml && chmod 600 /etc/lockgate/lockgate.toml",
           stdin=WORKERS_CONFIG)  # fmt: skip
    since = box.sh("date +%s").strip()
    seen: dict[str, Any] = {"pids": set()}

    def restarted() -> str:
        box.sh("systemctl restart lockgate", check=False)
        state = unit_state(box)
        if state.get("ActiveState") != "active":
            raise RuntimeError(f"lockgate.service is {state}\n{box.journal()}")
        seen["main"] = state["MainPID"]
        seen["restarts"] = state["NRestarts"]
        seen["cgroup"] = state["ControlGroup"]
        seen["pids"].add(int(state["MainPID"]))
        return " ".join(f"{k}={v}" for k, v in state.items())

    if not report.check(f"workers = {WORKERS}: unit active after restart", restarted):
        return
    daemon = site_daemon(lab, site, "site-workers", SITE_WORKERS_CONFIG)
    try:
        workers_checks(box, site, report, seen)
    finally:
        if not daemon.alive():
            print(f"the site lockgate exited:\n{daemon.log()[-1500:]}", flush=True)
        daemon.stop()
    stopped_checks(box, report, seen, since)


def spis_by_worker(status: dict[str, Any]) -> dict[int, str]:
    """The site's CHILD SAs' inbound SPIs by the worker that owns them (SPI % N, the
    steering's rule)."""
    sas = [sa for sa in status["sas"] if sa["connection"] == "site"]
    return dict(sorted((int(sa["spi_in"], 16) % WORKERS, sa["spi_in"]) for sa in sas))


def workers_checks(box: Container, site: Namespace, report: Report, seen: dict[str, Any]) -> None:
    def pairs() -> bool:
        status = gateway_status(box)
        pids = worker_pids(status)
        sas = [sa for sa in status["sas"] if sa["connection"] == "site"]
        return len(pids) == WORKERS and all(pids) and len(sas) == WORKERS

    def status() -> str:
        try:
            wait_until(pairs, f"{WORKERS} workers and {WORKERS} CHILD SAs", timeout=60)
        except AssertionError as exc:
            raise RuntimeError(f"{exc}\n{box.sh('lockgate status')}\n{box.journal()}") from None
        current = gateway_status(box)
        seen["workers"] = worker_pids(current)
        seen["pids"].update(seen["workers"])
        owns = [w["owns"] for w in current["workers"]]
        if owns != [1] * WORKERS:
            raise RuntimeError(f"CHILD SAs per worker {owns}\n{box.sh('lockgate status')}")
        seen["spis"] = spis_by_worker(current)
        if sorted(seen["spis"]) != list(range(WORKERS)):
            raise RuntimeError(f"inbound SPIs by worker {seen['spis']}")
        return f"{workers_line(box)}; CHILD SAs of site, spi in by worker: {seen['spis']}"

    if not report.check("workers: status shows the workers and a CHILD SA pair each", status):
        return

    def pings() -> str:
        wait_until(partial(site_pings, site), "a ping through the tunnel", timeout=30)
        return f"ping from {SITE_LAN} to {CLOUD} ok"

    report.check("workers: the site pings the cloud", pings)

    def cgroup() -> str:
        # Each process's own /proc/PID/cgroup, read in the container's cgroup namespace,
        # where the unit's group is its ControlGroup=: the line systemd tracks it by
        # ("0::PATH" of cgroup v2, and "N:name=systemd:PATH" too on a hybrid host),
        # and systemd's listing of the unit's group.
        wanted = [int(seen["main"]), *seen["workers"]]
        where = {pid: box.sh(f"cat /proc/{pid}/cgroup").strip() for pid in wanted}
        tree = box.sh("systemd-cgls --no-pager -u lockgate.service", check=False)
        listed = {int(m[1]) for m in re.finditer(r"(\d+) /", tree)}

        def tracked(text: str) -> list[str]:
            fields = [line.split(":", 2) for line in text.splitlines()]
            return [f[2] for f in fields if len(f) == 3 and f[1] in ("", "name=systemd")]

        outside = [
            pid
            for pid, text in where.items()
            if not tracked(text) or set(tracked(text)) != {seen["cgroup"]}
        ]
        if outside or not set(wanted) <= listed:
            raise RuntimeError(f"{where}; not in the group: {outside}\n{tree}")
        return f"MainPID {seen['main']} and workers {seen['workers']} in {seen['cgroup']}: " + (
            " | ".join(line.strip() for line in tree.splitlines()[1:])
        )

    report.check("workers: in the unit's control group", cgroup)

    def killed() -> str:
        victim = seen["workers"][-1]
        box.sh(f"kill -9 {victim}")

        def replaced() -> bool:
            pids = worker_pids(gateway_status(box))
            return all(pids) and pids[-1] != victim and pids[:-1] == seen["workers"][:-1]

        try:
            wait_until(replaced, "a new worker in its place", timeout=60)
            # The lost worker's SA replaced by a rekey whose new SPI it owns again; the
            # other's untouched.
            before = dict(seen["spis"])

            def rekeyed() -> bool:
                now = spis_by_worker(gateway_status(box))
                last = WORKERS - 1
                kept = all(now.get(k) == before[k] for k in range(last))
                return pairs() and kept and now.get(last) not in (None, before[last])

            wait_until(rekeyed, "the lost CHILD SA rekeyed into the new worker", timeout=60)
            seen["spis"] = spis_by_worker(gateway_status(box))
            wait_until(partial(site_pings, site), "a ping after the restart", timeout=60)
        except AssertionError as exc:
            raise RuntimeError(f"{exc}\n{box.sh('lockgate status')}\n{box.journal()}") from None
        state = unit_state(box)
        same = (state["ActiveState"], state["MainPID"], state["NRestarts"])
        if same != ("active", seen["main"], seen["restarts"]):
            raise RuntimeError(f"the unit changed: {state}\n{box.journal()}")
        pids = worker_pids(gateway_status(box))
        seen["pids"].update(pids)
        return (f"killed {victim}; {workers_line(box)}; spi in {before} -> {seen['spis']}; "
                f"ping ok; still active, MainPID {state['MainPID']}, "
                f"NRestarts {state['NRestarts']}")  # fmt: skip

    report.check("workers: kill -9 of a worker", killed)


def stopped_checks(box: Container, report: Report, seen: dict[str, Any], since: str) -> None:
    def running(pids: list[int]) -> list[str]:
        # A pid still there that is no lockgate is another process that took the number.
        probe = "".join(f"grep -l lockgate /proc/{pid}/cmdline 2>/dev/null; " for pid in pids)
        return box.sh(probe + "true").split()

    def stopped() -> str:
        pids = sorted(seen["pids"])
        live = [int(seen["main"]), *worker_pids(gateway_status(box))]
        found = running(live)
        if len(found) != len(live):  # the probe must see the live ones
            raise RuntimeError(f"{live} run, the probe saw {found}")
        box.sh("systemctl stop lockgate", check=False)
        state = unit_state(box)
        left = running(pids)
        # What `systemctl status` shows of a stopped unit is its last STATUS=.
        if state["ActiveState"] != "inactive" or left or state.get("StatusText") != "stopped":
            raise RuntimeError(f"{state}; left: {left}\n{box.journal()}")
        return (
            f"ActiveState=inactive, StatusText=stopped; of {pids} ({live} running before), "
            "none left"
        )

    report.check("workers: systemctl stop leaves no worker", stopped)

    def journal() -> str:
        text = box.sh(f"journalctl -u lockgate --since @{since} --no-pager -o cat")
        # systemd's "Killing process N" means a process outlived the stop's SIGTERM.
        bad = ("Traceback", "PermissionError", "Operation not permitted", "Bad system call",
               "Killing process", "Failed with result")  # fmt: skip
        found = [b for b in bad if b in text]
        if found:
            raise RuntimeError(f"{found} in the journal\n{text[-3000:]}")
        # The phase's journal must hold the killed worker's end, as the daemon logged it
        # (the workers' own lines reach it too: they share the main process's stderr).
        died = [ln for ln in text.splitlines() if "worker" in ln and "died" in ln]
        ready = [ln for ln in text.splitlines() if "worker" in ln and "ready" in ln]
        if not died:
            raise RuntimeError(f"no worker's death in the journal\n{text[-3000:]}")
        return f"{len(text.splitlines())} lines; {died[-1]}; {len(ready)} 'ready' lines"

    report.check("workers: no traceback in the journal", journal)


def network(lab: Lab) -> tuple[Namespace, Namespace, Namespace]:
    cli, gw, cloud, site = (lab.namespace(r) for r in ("cli", "gw", "cloud", "site"))
    lab.veth(cli, "wan0", gw, "wan0")
    lab.veth(site, "wan0", gw, "wan1")
    lab.veth(gw, "lan0", cloud, "lan0")
    cli.ip("addr", "add", f"{CLIENT}/25", "dev", "wan0")
    gw.ip("addr", "add", f"{SERVER}/25", "dev", "wan0")
    site.ip("addr", "add", f"{SITE}/25", "dev", "wan0")
    gw.ip("route", "add", f"{SITE}/32", "dev", "wan1", "src", SERVER)
    site.ip("addr", "add", f"{SITE_LAN}/32", "dev", "lo")
    gw.ip("addr", "add", "203.0.113.1/24", "dev", "lan0")
    cloud.ip("addr", "add", f"{CLOUD}/24", "dev", "lan0")
    for pool in ("192.0.2.0/24", "198.51.100.128/25"):
        cloud.ip("route", "add", pool, "via", "203.0.113.1")
    gw.sysctl("net.ipv4.ip_forward", 1)
    return cli, gw, site


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="copy this root instead of running mmdebstrap")
    parser.add_argument("--keep", type=Path, help="keep the installed root at this path")
    args = parser.parse_args()
    for tool in ("mmdebstrap", "systemd-nspawn", "nsenter", "openvpn", "curl"):
        if shutil.which(tool) is None:
            print(f"needs {tool}", file=sys.stderr)
            return 2
    missing = missing_strongswan()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    workdir: Path | None = None
    if args.keep is not None:
        root = args.keep
    else:
        workdir = Path(tempfile.mkdtemp(prefix="lockgate-systemd-"))
        root = workdir / "root"
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"root {root}", flush=True)
        make_root(root, args.base)
        pki = Pki("laptops CA")
        install_unit(root, pki)
        score = run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                     "--no-pager", "lockgate.service"], check=False)  # fmt: skip
        print(score.strip().splitlines()[-1] if score.strip() else "no security score", flush=True)
        with Lab(prefix=f"lgsd{os.getpid()}") as lab:
            cli, gw, site = network(lab)
            with booted(lab, root, gw) as box:
                report = checks(lab, box, cli, site, pki)
                print(box.sh("systemctl status lockgate --no-pager", check=False)[:600])
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    failed = [name for name, ok, _ in report.results if not ok]
    print(f"{len(report.results) - len(failed)} passed, {len(failed)} failed {failed or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
