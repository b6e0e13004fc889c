"""IKEv2 remote-access load: many concurrent EAP-MSCHAPv2 clients against one server,
lockgate's and charon's in the same run.

    python -m bench.ikev2_ra_load [--clients 200] [--charons 2] [--repeat 1]
                                  [--timeout 300] [--who lockgate,charon] [--json FILE]

The namespaces are `bench.p2c_lab`'s: client namespaces on an IPv6 WAN bridge, the
gateway, and the cloud host 203.0.113.10. The server hands out 192.0.2.0/24 (250
clients at most, the largest IPv4 documentation block) and narrows clients to the
cloud subnet. Every client is strongSwan's charon configured as a road warrior would
be: EAP-MSCHAPv2 with its own user, the server's certificate checked against the CA,
a virtual IP asked for, aes256gcm16-prfsha384-ecp384. The servers:
- lockgate: `[remote_access.load] protocol = "ikev2"`, `auth = "password"`; the first
  user is added with `lockgate user add` (which stores the NT hash), the others go
  straight into the users file with the same hashes, computed once;
- charon (the baseline): kernel-libipsec, eap-mschapv2 with `eap_id = %any` (an
  EAP-Identity round first, as lockgate does), a vici pool over the same /24, the
  same proposals, logging at level 0, a hashed IKE SA table and no DoS protection.
  lockgate's COOKIE threshold is raised to match: neither server asks for COOKIEs.

A case: the server starts; the first client (a charon of its own, in its own
namespace) connects and pings the cloud host 10 times a second; then `--charons`
charon instances, each in a namespace of its own, load their share of the other
clients, one swanctl connection per user with `start_action = start`, so loading
initiates them all at once. The clock runs from the first load to the last CHILD SA
that came up (vici `child-updown` events, which cost charon nothing to send). The
report per server: setups per second, the server's resident memory growth per client
(VmRSS after minus before the ramp), its CPU time, the first client's ping loss and
round-trip times during the ramp, and whether it still reaches the cloud after it;
then lockgate's figures over charon's, and the load average at the start and end.
With `--repeat N` each server runs N times, alternating, and the medians and ranges
are shown.

Bounded in count (`--clients` <= 250) and time (`--timeout` per ramp); every process
is stopped by PID and the namespaces are removed at the end, also on Ctrl-C or
SIGTERM. Not a test: nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.measure import cpu_seconds, ping_summary, resident_kib
from bench.p2c_lab import (
    CLOUD,
    CLOUD_NET,
    PASSWORD,
    SERVER_NAME,
    Ikev2Server,
    LockgateGateway,
    P2cTopology,
    build,
    run_in_lab,
    write_pki,
)
from bench.throughput import say
from bench.tunnels import TunnelError
from conf.users import User, load_users, save_users
from daemon.lab.netns import HarnessError, Lab, ping
from testkit.strongswan import Charon, Vici

POOL = "192.0.2.0/24"
MAX_CLIENTS = 250
SERVER = Ikev2Server("load", POOL, max_connections=MAX_CLIENTS)
IKE_PROPOSAL = "aes256gcm16-prfsha384-ecp384"
ESP_PROPOSAL = "aes256gcm16"
EAP_PLUGINS = ("eap-mschapv2", "eap-identity")
RAMP_PING_INTERVAL = 0.1
_QUIET = {"default": 0}
# strongSwan's own retransmission defaults (testkit's lab values give up after about
# 4 s, which a loaded server may take to answer when 200 handshakes arrive at once).
_CLIENT_TIMERS = ("retransmit_timeout = 4.0", "retransmit_base = 1.8", "retransmit_tries = 5")
# The baseline server at its best here: no COOKIEs, no per-address half-open block
# (every client of a charon shares one address), and a hashed IKE SA table (the
# default is one bucket, a list searched on every message).
_CHARON_SERVER = (
    "dos_protection = no",
    "block_threshold = 1000000",
    "cookie_threshold = 1000000",
    "init_limit_half_open = 0",
    "ikesa_table_size = 256",
    "ikesa_table_segments = 16",
    "threads = 16",
    *_CLIENT_TIMERS,
)
# lockgate's equivalent of the above: COOKIEs only beyond the largest ramp.
_LOCKGATE_GATEWAY = ("cookie_threshold = 1000", "max_half_open = 2000")


def user_name(i: int) -> str:
    return f"u{i:04d}"


@dataclass
class CaseResult:
    """One server with N clients."""

    server: str
    clients: int
    ramp_clients: int = 0
    """Clients started in the ramp (all but the first)."""
    up: int = 0
    """CHILD SAs the ramp's clients saw come up before the timeout."""
    seconds: float | None = None
    """From the first load to the last CHILD SA up (None if not all came up)."""
    first_to_half: float | None = None
    """From the first load to half of the ramp's CHILD SAs up."""
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    server_clients_after: int = 0
    """Clients the server itself counts after the ramp (its status or IKE SAs)."""
    cpu_seconds: float = 0.0
    """The server's CPU time (user + system) from the first load to the last CHILD SA."""
    loaded_seconds: float | None = None
    """From the first load until every client charon's `swanctl --load-all` returned."""
    ping_sent: int = 0
    ping_received: int = 0
    idle_rtt_avg_ms: float | None = None
    """The first client's ping before the ramp, for comparison."""
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None
    first_ok_after: bool = False
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    error: str = ""

    @property
    def rate(self) -> float | None:
        """Setups (IKE SA with EAP + CHILD SA) per second over the ramp."""
        return self.ramp_clients / self.seconds if self.seconds else None

    @property
    def kib_per_client(self) -> float | None:
        if not self.server_clients_after:
            return None
        return (self.rss_after_kib - self.rss_before_kib) / self.server_clients_after

    @property
    def cpu_ms_per_setup(self) -> float | None:
        """The server's CPU per client of the ramp: unlike the rate, it does not depend
        on what else the machine runs."""
        return 1000.0 * self.cpu_seconds / self.up if self.up else None

    @property
    def loss_percent(self) -> float | None:
        if not self.ping_sent:
            return None
        return 100.0 * (self.ping_sent - self.ping_received) / self.ping_sent


# --- the clients -------------------------------------------------------------------------


def client_swanctl(users: Sequence[str], server_address: str, *, start: bool) -> str:
    """One road-warrior connection per user (`start_action = start`: initiated at load)."""
    out = ["connections {"]
    for user in users:
        out += [
            f"    {user} {{",
            "        version = 2",
            f"        remote_addrs = {server_address}",
            "        vips = 0.0.0.0",
            f"        proposals = {IKE_PROPOSAL}",
            "        rekey_time = 0",
            "        mobike = no",
            "        local {",
            "            auth = eap-mschapv2",
            f"            eap_id = {user}",
            "        }",
            "        remote {",
            "            auth = pubkey",
            f"            id = {SERVER_NAME}",
            "        }",
            "        children {",
            f"            {user} {{",
            f"                remote_ts = {CLOUD_NET}",
            f"                esp_proposals = {ESP_PROPOSAL}",
            "                rekey_time = 0",
            f"                start_action = {'start' if start else 'none'}",
            "            }",
            "        }",
            "    }",
        ]
    return "\n".join([*out, "}", eap_secrets(users)]) + "\n"


def eap_secrets(users: Sequence[str]) -> str:
    """swanctl's `secrets` section: every user's EAP password."""
    out = ["secrets {"]
    for user in users:
        out += [
            f"    eap-{user} {{",
            f"        id = {user}",
            f'        secret = "{PASSWORD}"',
            "    }",
        ]
    return "\n".join([*out, "}"])


def start_client_charon(
    topo: P2cTopology, ns_index: int, name: str, users: Sequence[str], *, first: bool
) -> Charon:
    """A client charon in `topo.clients[ns_index]`, started, its connections written but
    not loaded. Only the first client installs routes: it is the one whose traffic is
    measured, and on one TUN every further route to the same cloud subnet would
    clash."""
    charon = Charon(
        topo.clients[ns_index],
        name,
        log_levels=_QUIET,
        extra_charon=_CLIENT_TIMERS,
        install_routes=first,
        extra_plugins=EAP_PLUGINS,
    )
    charon.write_credential("x509ca", "ca.crt", (topo.tmp / "ca.pem").read_bytes())
    (charon.swanctl_dir / "swanctl.conf").write_text(
        client_swanctl(users, topo.server_address, start=not first)
    )
    charon.start(timeout=30)
    return charon


class UpCounter:
    """Counts `child-updown` events (up) from one charon, with their arrival times."""

    def __init__(self, charon: Charon) -> None:
        self.vici = Vici(charon.vici_path, timeout=0.5)
        self.vici.register("child-updown")
        self.times: list[float] = []
        self.downs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                _, msg = self.vici.next_event()
            except (TimeoutError, OSError):
                continue
            except HarnessError:
                return
            if msg.get("up") == "yes":
                self.times.append(time.monotonic())
            else:
                self.downs += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.vici.close()


def _load_all(charon: Charon) -> float:
    """`swanctl --load-all` (which initiates every connection); when it returned."""
    charon.swanctl("--load-all", timeout=120)
    return time.monotonic()


# --- the servers ---------------------------------------------------------------------------


class Server:
    """What a case needs of a server: start, pid, its own count of clients, stop."""

    name = ""

    def start(self) -> None:
        raise NotImplementedError

    def pid(self) -> int:
        raise NotImplementedError

    def clients(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class LockgateServer(Server):
    name = "lockgate"

    def __init__(self, topo: P2cTopology, count: int, tag: str) -> None:
        self.gateway = LockgateGateway(topo, [SERVER], f"lockgate-{tag}", _LOCKGATE_GATEWAY)
        users_file = topo.tmp / f"{SERVER.name}.users"
        if users_file.exists():
            users_file.unlink()
        # The path a user takes, once; its hashes serve every bulk user (same password).
        self.gateway.add_user(SERVER.name, user_name(0))
        added = load_users(users_file)[user_name(0)]
        users = {user_name(i): User(user_name(i), password=added.password,
                                    nt_hash=added.nt_hash) for i in range(count)}  # fmt: skip
        save_users(users_file, users)

    def start(self) -> None:
        self.gateway.start()

    def pid(self) -> int:
        return self.gateway.pid()

    def clients(self) -> int:
        with contextlib.suppress(Exception):
            status = self.gateway.daemon.status(timeout=30)
            return sum(int(s.get("clients", 0)) for s in status["remote_access"])
        return -1

    def stop(self) -> None:
        self.gateway.stop()


def charon_server_swanctl(topo: P2cTopology, count: int) -> str:
    secrets = eap_secrets([user_name(i) for i in range(count)])
    return f"""connections {{
    rw {{
        version = 2
        local_addrs = {topo.server_address}
        pools = rw
        proposals = {IKE_PROPOSAL}
        rekey_time = 0
        mobike = no
        local {{
            auth = pubkey
            certs = server.crt
            id = {SERVER_NAME}
        }}
        remote {{
            auth = eap-mschapv2
            eap_id = %any
        }}
        children {{
            net {{
                local_ts = {CLOUD_NET}
                esp_proposals = {ESP_PROPOSAL}
                rekey_time = 0
            }}
        }}
    }}
}}
pools {{
    rw {{
        addrs = {POOL}
    }}
}}
{secrets}
"""


class CharonServer(Server):
    name = "charon"

    def __init__(self, topo: P2cTopology, count: int, tag: str) -> None:
        self.charon = Charon(
            topo.gateway,
            f"ra-{tag}",
            log_levels=_QUIET,
            extra_charon=_CHARON_SERVER,
            extra_plugins=EAP_PLUGINS,
        )
        self.charon.write_credential("x509", "server.crt", (topo.tmp / "server.pem").read_bytes())
        self.charon.write_credential(
            "private", "server.key", (topo.tmp / "server.key").read_bytes()
        )
        self.charon.write_credential("x509ca", "ca.crt", (topo.tmp / "ca.pem").read_bytes())
        (self.charon.swanctl_dir / "swanctl.conf").write_text(charon_server_swanctl(topo, count))

    def start(self) -> None:
        self.charon.start(timeout=30)
        self.charon.swanctl("--load-all", timeout=60)

    def pid(self) -> int:
        return self.charon.pid()

    def clients(self) -> int:
        with contextlib.suppress(HarnessError, OSError):
            stats = self.charon.stats()
            return stats["total"] - stats["half-open"]
        return -1

    def stop(self) -> None:
        self.charon.stop(timeout=20)


# --- one case --------------------------------------------------------------------------------


def run_case(
    topo: P2cTopology, make: Callable[[], Server], count: int, charons: int, timeout: float
) -> CaseResult:
    server = make()
    result = CaseResult(server.name, count, ramp_clients=count - 1)
    result.load_start = os.getloadavg()
    tag = f"{server.name}-{int(time.monotonic() * 1000) % 100000}"
    started: list[Charon] = []
    counters: list[UpCounter] = []
    try:
        server.start()
        pid = server.pid()
        time.sleep(1.0)  # the memory baseline is an idle server
        result.rss_before_kib = resident_kib(pid)
        first = start_client_charon(topo, 0, f"first-{tag}", [user_name(0)], first=True)
        started.append(first)
        first.swanctl("--load-all")
        first.initiate(user_name(0), user_name(0), timeout=30)
        idle = ping(topo.clients[0], CLOUD, count=10, interval=0.1, deadline=10)
        result.idle_rtt_avg_ms = ping_summary(idle.stdout)[2]
        shares = [list(range(1 + k, count, charons)) for k in range(charons)]
        bulk = [
            start_client_charon(topo, 1 + k, f"bulk{k}-{tag}", [user_name(i) for i in share],
                                first=False)
            for k, share in enumerate(shares) if share
        ]  # fmt: skip
        started += bulk
        counters = [UpCounter(c) for c in bulk]
        pings = int(timeout / RAMP_PING_INTERVAL) + 100
        pinger = topo.clients[0].spawn(
            ["ping", "-n", "-q", "-i", str(RAMP_PING_INTERVAL), "-c", str(pings),
             "-w", str(int(timeout) + 30), CLOUD],
            name="ramp-ping", stdout_pipe=True,
        )  # fmt: skip
        say(f"  {server.name}: up (pid {pid}, VmRSS {result.rss_before_kib / 1024:.1f} MiB), "
            f"first client connected; {count - 1} more from {len(bulk)} charons")  # fmt: skip
        cpu_before = cpu_seconds(pid)
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max(1, len(bulk))) as pool:
            loads = [pool.submit(_load_all, c) for c in bulk]
            deadline = t0 + timeout
            last_report = t0
            while time.monotonic() < deadline:
                up = sum(len(c.times) for c in counters)
                if up >= count - 1:
                    break
                if time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    say(f"    {last_report - t0:5.1f} s: {up} up")
                time.sleep(0.2)
            result.loaded_seconds = max(load.result() for load in loads) - t0
        result.cpu_seconds = cpu_seconds(pid) - cpu_before
        times = sorted(t for c in counters for t in c.times)
        result.up = len(times)
        if times and result.up >= count - 1:
            result.seconds = times[-1] - t0
        if len(times) >= (count - 1) / 2 and times:
            result.first_to_half = times[max(0, (count - 1) // 2 - 1)] - t0
        if count == 1:
            result.seconds = None
        pinger.signal(signal.SIGINT)
        try:
            out, _ = pinger.popen.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out = b""
        pinger.stop()
        summary = ping_summary(out.decode(errors="replace"))
        result.ping_sent, result.ping_received, result.rtt_avg_ms, result.rtt_max_ms = summary
        time.sleep(1.0)
        result.rss_after_kib = resident_kib(pid)
        result.server_clients_after = server.clients()
        try:
            ping(topo.clients[0], CLOUD, count=2, interval=0.2, deadline=5)
            result.first_ok_after = True
        except HarnessError:
            result.first_ok_after = False
        if result.up < count - 1:
            result.error = f"only {result.up} of {count - 1} ramp clients up in {timeout:g} s"
    except (HarnessError, TunnelError) as exc:
        result.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    finally:
        for counter in counters:
            counter.close()
        for charon in started:
            with contextlib.suppress(HarnessError, OSError):
                charon.stop(timeout=15)
        with contextlib.suppress(HarnessError, TunnelError, OSError):
            server.stop()
        result.load_end = os.getloadavg()
    return result


# --- the report ----------------------------------------------------------------------------


def _figure(values: Sequence[float | None], fmt: str) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    mid = fmt.format(statistics.median(got))
    if len(got) == 1:
        return mid
    return f"{mid} ({fmt.format(min(got))}-{fmt.format(max(got))})"


def _load(t: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in t)


def _median(values: Sequence[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


ROWS: list[tuple[str, Callable[[CaseResult], float | None], str]] = [
    ("setups per second", lambda r: r.rate, "{:.1f}"),
    ("ramp seconds (first load to last CHILD SA)", lambda r: r.seconds, "{:.2f}"),
    ("seconds to half of the ramp up", lambda r: r.first_to_half, "{:.2f}"),
    ("clients the server holds after the ramp", lambda r: r.server_clients_after, "{:.0f}"),
    ("server memory per client (KiB)", lambda r: r.kib_per_client, "{:.0f}"),
    ("server VmRSS after the ramp (MiB)", lambda r: r.rss_after_kib / 1024, "{:.1f}"),
    ("server CPU during the ramp (s)", lambda r: r.cpu_seconds, "{:.2f}"),
    ("server CPU per setup (ms)", lambda r: r.cpu_ms_per_setup, "{:.1f}"),
    ("clients' swanctl --load-all done after (s)", lambda r: r.loaded_seconds, "{:.2f}"),
    ("first client's ping RTT avg before (ms)", lambda r: r.idle_rtt_avg_ms, "{:.1f}"),
    ("first client's ping loss in the ramp (%)", lambda r: r.loss_percent, "{:.1f}"),
    ("first client's ping RTT avg in the ramp (ms)", lambda r: r.rtt_avg_ms, "{:.1f}"),
    ("first client's ping RTT max in the ramp (ms)", lambda r: r.rtt_max_ms, "{:.1f}"),
    ("first client reaches the cloud after (1=yes)", lambda r: float(r.first_ok_after), "{:.0f}"),
]


def report(results: Sequence[CaseResult], who: Sequence[str]) -> str:
    by = {w: [r for r in results if r.server == w] for w in who}
    width = 46
    lines = [f"{'':<{width}} " + " ".join(f"{w:>22}" for w in who)]
    for label, get, fmt in ROWS:
        cells = [_figure([get(r) for r in by[w]], fmt) for w in who]
        lines.append(f"{label:<{width}} " + " ".join(f"{c:>22}" for c in cells))
    if "lockgate" in by and "charon" in by:
        lines.append("")
        lines.append("lockgate / charon (medians):")
        for label, get, _fmt in [ROWS[i] for i in (0, 4, 7, 11, 12)]:
            ours = _median([get(r) for r in by["lockgate"]])
            theirs = _median([get(r) for r in by["charon"]])
            ratio = f"{ours / theirs:.2f}" if ours is not None and theirs else "-"
            lines.append(f"  {label:<{width - 2}} {ratio}")
    lines.append("")
    for r in results:
        state = f"error: {r.error}" if r.error else "ok"
        lines.append(f"{r.server:<9} {r.up}/{r.ramp_clients} up; load {_load(r.load_start)} "
                     f"-> {_load(r.load_end)}; {state}")  # fmt: skip
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


def run(lab: Lab, args: argparse.Namespace, who: Sequence[str]) -> list[CaseResult]:
    charons = max(1, min(args.charons, args.clients - 1))
    topo = build(lab, clients=1 + charons, pools=(POOL,))
    write_pki(topo.tmp)
    makers: dict[str, Callable[[], Server]] = {
        "lockgate": lambda: LockgateServer(topo, args.clients, f"{len(results)}"),
        "charon": lambda: CharonServer(topo, args.clients, f"{len(results)}"),
    }
    results: list[CaseResult] = []
    for n in range(args.repeat):
        for w in who:
            say(f"run {n + 1}/{args.repeat}, {w} as the server, {args.clients} clients")
            result = run_case(topo, makers[w], args.clients, charons, args.timeout)
            results.append(result)
            rate = f"{result.rate:.1f}/s" if result.rate else "-"
            say(f"  {w}: {result.up}/{result.ramp_clients} up, {rate}"
                + (f"; {result.error}" if result.error else ""))  # fmt: skip
    return results


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ikev2_ra_load",
        description="Many IKEv2 EAP-MSCHAPv2 clients (charon) against lockgate's ikev2 "
        "remote-access server and against charon's, in namespaces: setups per second, "
        "memory per client, the first client's traffic during the ramp.",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=200,
        help=f"clients in all, the first one included (200; <= {MAX_CLIENTS})",
    )
    parser.add_argument(
        "--charons",
        type=int,
        default=2,
        help="client charons sharing the ramp, one namespace each (2)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per server (1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per ramp (300)")
    parser.add_argument(
        "--who", default="lockgate,charon", help="servers, in order (lockgate,charon)"
    )
    parser.add_argument("--json", type=Path, help="write every case's figures as JSON")  # fmt: skip
    args = parser.parse_args(argv)
    who = [w for w in args.who.split(",") if w]
    if not 2 <= args.clients <= MAX_CLIENTS or args.charons < 1 or args.repeat < 1:
        parser.error(f"2 <= --clients <= {MAX_CLIENTS}, --charons >= 1, --repeat >= 1")
    if args.timeout <= 0 or not who or set(who) - {"lockgate", "charon"}:
        parser.error("--timeout > 0; --who lists lockgate and/or charon")
    args.who_list = who
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    missing = [] if os.geteuid() == 0 else ["root privileges"]
    missing += [f"'{t}'" for t in ("ip", "ping", "swanctl") if not shutil.which(t)]
    for path in ("/usr/lib/ipsec/charon", "/usr/lib/ipsec/plugins/libstrongswan-eap-mschapv2.so"):
        if not Path(path).exists():
            missing.append(path)
    if missing:
        say("bench.ikev2_ra_load needs " + ", ".join(missing))
        return 2
    load_before = os.getloadavg()
    say(f"load average at the start: {_load(load_before)}")
    started = time.monotonic()
    results, status = run_in_lab(lambda lab: run(lab, args, args.who_list))
    load_after = os.getloadavg()
    if results:
        say()
        say(report(results, args.who_list))
        if args.json is not None:
            data = [{**asdict(r), "rate": r.rate, "kib_per_client": r.kib_per_client,
                     "cpu_ms_per_setup": r.cpu_ms_per_setup, "loss_percent": r.loss_percent}
                    for r in results]  # fmt: skip
            args.json.write_text(json.dumps(data, indent=1))
        if any(r.error for r in results):
            status = status or 1
    say(f"load average at the start / end: {_load(load_before)} / {_load(load_after)}")
    say(f"(total {time.monotonic() - started:.0f}s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
