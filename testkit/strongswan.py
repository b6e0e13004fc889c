"""strongSwan in the lab: charon in a network namespace with userspace ESP.

The interop tests use it as lockgate's peer; the benchmarks as the baseline.

Facts this relies on (see shared/reference/strongswan.md, measured on Debian 12 with
strongSwan 5.9.8 and a kernel without ESP):

- charon hard-codes `/var/run/charon.pid`, so each instance gets a private `/run`: the
  run directory is bind-mounted over `/run` inside `ip netns exec`'s own mount
  namespace, where the bind cannot leak to the host.
- `load_modular = no` with an explicit plugin list; `kernel-libipsec` (userspace ESP
  over a TUN, `ipsec0`) must come before `kernel-netlink` so its IPsec backend wins.
  It always UDP-encapsulates ESP (port 4500) and routes in table 220.
- The vici socket lives in the run directory; this module speaks vici itself (a small
  length-prefixed binary protocol) for initiate/terminate/list-sas, and uses
  `swanctl --load-all` for the configuration files.
- With `LOCKGATE_STRONGSWAN_ROOT` naming a Debian root (e.g. a Debian 13 debootstrap
  with strongSwan 6), charon and swanctl run from that root (`chroot`), charon still
  in the test's network namespace. Inside the private mount namespace the run
  directory is bind-mounted at its own path in the root, so every path in the
  generated files means the same inside and outside; /dev, /proc and /sys are bound
  there too (kernel-libipsec opens /dev/net/tun). Nothing is mounted on the host.

Typical use::

    charon = Charon(topo.gw_b, "gwB")
    charon.start()
    charon.load([SwanConnection(...)], [SwanSecret(...)])
    charon.initiate("net", ike="s2s")
    charon.list_sas()  # -> [IkeSaInfo(...)]
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shlex
import socket
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from daemon.lab.netns import HarnessError, Lab, Namespace, Process, run_command
from testkit.pki import Credential, Pki

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "/usr/sbin/swanctl"
ROOT_VARIABLE = "LOCKGATE_STRONGSWAN_ROOT"
"""Names a root directory holding another strongSwan (e.g. /srv/trixie, Debian 13 with
strongSwan 6) for charon and swanctl; unset or empty: the host's own."""


def swan_root() -> Path | None:
    """The root charon and swanctl run from (`ROOT_VARIABLE`), None for the host's."""
    value = os.environ.get(ROOT_VARIABLE, "")
    return Path(value) if value else None


def host_path(path: str) -> Path:
    """Where the strongSwan file `path` (e.g. `CHARON`) is, seen from the host."""
    root = swan_root()
    return root / path.lstrip("/") if root is not None else Path(path)


def _bind_script(rundir: Path, root: Path) -> str:
    """Shell lines, run in a private mount namespace, that make `rundir` and the
    kernel's file systems visible inside `root` at the same paths."""
    q_root, q_run = shlex.quote(str(root)), shlex.quote(str(rundir))
    inner = shlex.quote(str(root / str(rundir).lstrip("/")))
    return (
        f"mount --bind {q_run} {inner} && "
        f"mount --rbind /dev {q_root}/dev && "
        f"mount --rbind /proc {q_root}/proc && "
        f"mount --rbind /sys {q_root}/sys && "
    )


def installed_version() -> tuple[int, ...]:
    """The installed charon's version as numbers ("Linux strongSwan 5.9.8" -> (5, 9,
    8)), from ``charon --version``: which features (RFC 9370 from 6.0) the peer has.
    With `ROOT_VARIABLE` set, the version of the charon in that root."""
    root = swan_root()
    args = [CHARON, "--version"] if root is None else ["chroot", str(root), CHARON, "--version"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=True).stdout
    found = re.search(r"strongSwan\s+U?(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        raise HarnessError(f"cannot read charon's version from {out!r}")
    return tuple(int(n) for n in found.groups())


@functools.cache
def installed_key_exchanges() -> frozenset[str]:
    """The key exchange methods the installed charon implements ("ML_KEM_768", ...),
    asked of a charon started for it in a namespace of its own (needs root).

    The version alone does not say: strongSwan 6.0 configures `ke1_mlkem768`, but
    computes ML-KEM only with the `ml` plugin, from 6.0.2 with OpenSSL 3.5, or with
    botan/wolfssl; Debian 13's 6.0.1 has none of them and answers an ML-KEM
    IKE_INTERMEDIATE with INVALID_SYNTAX ("negotiated key exchange method
    ML_KEM_768 not supported")."""
    with Lab() as lab:
        charon = Charon(lab.namespace("swanprobe"), "probe")
        charon.start()
        try:
            return frozenset(charon.key_exchange_methods())
        finally:
            charon.stop()


PLUGINS = (
    "random nonce openssl pem pkcs1 pkcs8 x509 pubkey constraints revocation kdf "
    "kernel-libipsec kernel-netlink socket-default vici"
)

# --- swanctl.conf generation ------------------------------------------------------------


@dataclass
class SwanChild:
    """One `children.NAME` section of a swanctl connection."""

    name: str
    local_ts: Sequence[str]
    remote_ts: Sequence[str]
    esp_proposals: str = "aes128gcm16"
    # none (responder only), trap (on first packet) or start (at load).
    start_action: str = "none"
    rekey_time: str = "1h"
    life_time: str | None = None
    dpd_action: str = "clear"
    close_action: str = "none"
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass
class SwanConnection:
    """One `connections.NAME` section: addresses, identities, auth and children."""

    name: str
    local_addrs: str
    remote_addrs: str
    local_id: str
    remote_id: str
    children: Sequence[SwanChild]
    proposals: str = "aes128gcm16-prfsha256-x25519"
    # psk or pubkey (certificates: files written with Charon.write_credential).
    local_auth: str = "psk"
    remote_auth: str = "psk"
    local_certs: Sequence[str] = ()
    remote_cacerts: Sequence[str] = ()
    rekey_time: str = "4h"
    reauth_time: str = "0"
    over_time: str | None = None
    dpd_delay: str | None = None
    dpd_timeout: str | None = None
    encap: bool = False
    # The userspace peer sends MOBIKE updates right after IKE_AUTH; off keeps logs calm.
    mobike: bool = False
    fragmentation: str = "yes"
    local_port: int | None = None
    remote_port: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass
class SwanSecret:
    """An IKE pre-shared key between identities (`secrets.ike-NAME`), or with kind
    "ppk" a post-quantum preshared key under its PPK ids (`secrets.ppk-NAME`)."""

    name: str
    ids: Sequence[str]
    secret: str
    kind: str = "ike"


def _block(name: str, lines: Sequence[str], indent: int) -> list[str]:
    pad = "    " * indent
    return [f"{pad}{name} {{", *lines, f"{pad}}}"]


def _kv(key: str, value: str | Sequence[str], indent: int) -> str:
    text = value if isinstance(value, str) else ", ".join(value)
    return f"{'    ' * indent}{key} = {text}"


def _quote(secret: str) -> str:
    if '"' in secret or "\\" in secret:
        raise ValueError("test PSKs must not contain quotes or backslashes")
    return f'"{secret}"'


def render_swanctl(connections: Sequence[SwanConnection], secrets: Sequence[SwanSecret]) -> str:
    """The swanctl.conf text for these connections and secrets."""
    out = ["# generated by testkit/strongswan.py", "connections {"]
    for conn in connections:
        lines = [
            _kv("version", "2", 2),
            _kv("local_addrs", conn.local_addrs, 2),
            _kv("remote_addrs", conn.remote_addrs, 2),
            _kv("proposals", conn.proposals, 2),
            _kv("rekey_time", conn.rekey_time, 2),
            _kv("reauth_time", conn.reauth_time, 2),
            _kv("encap", "yes" if conn.encap else "no", 2),
            _kv("mobike", "yes" if conn.mobike else "no", 2),
            _kv("fragmentation", conn.fragmentation, 2),
        ]
        for key, value in (
            ("over_time", conn.over_time),
            ("dpd_delay", conn.dpd_delay),
            ("dpd_timeout", conn.dpd_timeout),
            ("local_port", conn.local_port),
            ("remote_port", conn.remote_port),
        ):
            if value is not None:
                lines.append(_kv(key, str(value), 2))
        lines += [_kv(k, v, 2) for k, v in conn.extra.items()]
        local = [_kv("auth", conn.local_auth, 3), _kv("id", conn.local_id, 3)]
        if conn.local_certs:
            local.append(_kv("certs", conn.local_certs, 3))
        remote = [_kv("auth", conn.remote_auth, 3), _kv("id", conn.remote_id, 3)]
        if conn.remote_cacerts:
            remote.append(_kv("cacerts", conn.remote_cacerts, 3))
        lines += _block("local", local, 2) + _block("remote", remote, 2)
        children: list[str] = []
        for child in conn.children:
            child_lines = [
                _kv("local_ts", child.local_ts, 4),
                _kv("remote_ts", child.remote_ts, 4),
                _kv("mode", "tunnel", 4),
                _kv("esp_proposals", child.esp_proposals, 4),
                _kv("rekey_time", child.rekey_time, 4),
                _kv("start_action", child.start_action, 4),
                _kv("dpd_action", child.dpd_action, 4),
                _kv("close_action", child.close_action, 4),
            ]
            if child.life_time is not None:
                child_lines.append(_kv("life_time", child.life_time, 4))
            child_lines += [_kv(k, v, 4) for k, v in child.extra.items()]
            children += _block(child.name, child_lines, 3)
        lines += _block("children", children, 2)
        out += _block(conn.name, lines, 1)
    out += ["}", "secrets {"]
    for secret in secrets:
        lines = [_kv(f"id-{i}", ident, 2) for i, ident in enumerate(secret.ids)]
        lines.append(_kv("secret", _quote(secret.secret), 2))
        out += _block(f"{secret.kind}-{secret.name}", lines, 1)
    out.append("}")
    return "\n".join(out) + "\n"


def render_strongswan_conf(
    rundir: Path,
    name: str,
    *,
    log_levels: Mapping[str, int],
    port: int = 500,
    port_nat_t: int = 4500,
    extra_charon: Sequence[str] = (),
    install_routes: bool = True,
    extra_plugins: Sequence[str] = (),
) -> str:
    """strongswan.conf for one charon whose run directory is `rundir`; `extra_plugins`
    go after the standard list (e.g. `eap-mschapv2 eap-identity` for EAP)."""
    plugins = " ".join((PLUGINS, *extra_plugins))
    levels = "\n".join(f"            {k} = {v}" for k, v in log_levels.items())
    extra = "\n".join(f"    {line}" for line in extra_charon)
    return f"""# generated by testkit/strongswan.py for {name}
charon {{
    load_modular = no
    load = {plugins}
    port = {port}
    port_nat_t = {port_nat_t}
    install_routes = {"yes" if install_routes else "no"}
    routing_table = 220
    routing_table_prio = 220
    # Fail fast in the lab: three tries, one second apart, then give up.
    retransmit_timeout = 1.0
    retransmit_base = 1.0
    retransmit_tries = 3
{extra}
    filelog {{
        {name} {{
            path = {rundir}/charon.log
            time_format = %T
            ike_name = yes
            append = no
            flush_line = yes
{levels}
        }}
    }}
    syslog {{
        identifier = charon-{name}
        daemon {{
            default = -1
        }}
    }}
    plugins {{
        vici {{
            socket = unix://{rundir}/charon.vici
        }}
        kernel-libipsec {{
            allow_peer_ts = no
        }}
    }}
}}
swanctl {{
    socket = unix://{rundir}/charon.vici
}}
"""


# --- vici: the control protocol ---------------------------------------------------------
# Packet: u32 length, u8 type, then (named types) u8 name length + name, then a message
# of elements: section start/end, key=value (u16 value length), list start/item/end.

_CMD_REQUEST, _CMD_RESPONSE, _CMD_UNKNOWN = 0, 1, 2
_EVENT_REGISTER, _EVENT_CONFIRM, _EVENT_UNKNOWN, _EVENT = 3, 5, 6, 7
_SECTION_START, _SECTION_END, _KEY_VALUE = 1, 2, 3
_LIST_START, _LIST_ITEM, _LIST_END = 4, 5, 6

ViciValue = str | list[str] | dict[str, "ViciValue"]
ViciMessage = dict[str, ViciValue]


def _encode_message(msg: Mapping[str, object]) -> bytes:
    out = bytearray()
    for key, value in msg.items():
        name = key.encode()
        if isinstance(value, Mapping):
            out += bytes([_SECTION_START, len(name)]) + name
            out += _encode_message(value)
            out.append(_SECTION_END)
        elif isinstance(value, list | tuple):
            out += bytes([_LIST_START, len(name)]) + name
            for item in value:
                data = str(item).encode()
                out += bytes([_LIST_ITEM]) + struct.pack("!H", len(data)) + data
            out.append(_LIST_END)
        else:
            data = value if isinstance(value, bytes) else str(value).encode()
            out += bytes([_KEY_VALUE, len(name)]) + name + struct.pack("!H", len(data)) + data
    return bytes(out)


def _decode_message(data: bytes) -> ViciMessage:
    root: ViciMessage = {}
    stack: list[ViciMessage] = [root]
    current_list: list[str] | None = None
    pos = 0

    def name() -> str:
        nonlocal pos
        length = data[pos]
        text = data[pos + 1 : pos + 1 + length].decode(errors="replace")
        pos += 1 + length
        return text

    def value() -> str:
        nonlocal pos
        (length,) = struct.unpack_from("!H", data, pos)
        text = data[pos + 2 : pos + 2 + length].decode(errors="replace")
        pos += 2 + length
        return text

    while pos < len(data):
        kind = data[pos]
        pos += 1
        if kind == _SECTION_START:
            section: ViciMessage = {}
            stack[-1][name()] = section
            stack.append(section)
        elif kind == _SECTION_END:
            stack.pop()
        elif kind == _KEY_VALUE:
            key = name()
            stack[-1][key] = value()
        elif kind == _LIST_START:
            current_list = []
            stack[-1][name()] = current_list
        elif kind == _LIST_ITEM and current_list is not None:
            current_list.append(value())
        elif kind == _LIST_END:
            current_list = None
        else:
            raise HarnessError(f"vici: unexpected element {kind} at {pos - 1}")
    return root


class Vici:
    """A vici client session on a Unix socket (one connection per instance)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Vici:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, kind: int, name: str | None, msg: Mapping[str, object] | None) -> None:
        body = bytes([kind])
        if name is not None:
            body += bytes([len(name)]) + name.encode()
        if msg is not None:
            body += _encode_message(msg)
        self.sock.sendall(struct.pack("!I", len(body)) + body)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise HarnessError("vici: connection closed by charon")
            buf += chunk
        return bytes(buf)

    def _recv(self) -> tuple[int, str | None, ViciMessage]:
        (length,) = struct.unpack("!I", self._recv_exact(4))
        body = self._recv_exact(length)
        kind, rest = body[0], body[1:]
        name = None
        if kind == _EVENT:
            name, rest = rest[1 : 1 + rest[0]].decode(), rest[1 + rest[0] :]
        return kind, name, _decode_message(rest)

    def register(self, event: str) -> None:
        """Ask charon to stream `event` (e.g. "child-updown") on this session."""
        self._send(_EVENT_REGISTER, event, None)
        kind, _, _ = self._recv()
        if kind != _EVENT_CONFIRM:
            raise HarnessError(f"vici: cannot register for event {event!r}")

    def next_event(self) -> tuple[str, ViciMessage]:
        """The next event registered for (blocks up to the socket's timeout, then
        raises `TimeoutError`)."""
        while True:
            kind, name, msg = self._recv()
            if kind == _EVENT and name is not None:
                return name, msg

    def request(
        self, command: str, msg: Mapping[str, object] | None = None, *, event: str | None = None
    ) -> tuple[ViciMessage, list[ViciMessage]]:
        """Send a command; with `event`, also collect that event's messages until the reply."""
        if event is not None:
            self.register(event)
        self._send(_CMD_REQUEST, command, msg)
        events: list[ViciMessage] = []
        while True:
            kind, name, reply = self._recv()
            if kind == _EVENT:
                if name == event:
                    events.append(reply)
                continue
            if kind == _CMD_UNKNOWN:
                raise HarnessError(f"vici: unknown command {command!r}")
            if kind != _CMD_RESPONSE:
                raise HarnessError(f"vici: unexpected packet type {kind}")
            return reply, events


# --- what list-sas says -------------------------------------------------------------------


def _str(msg: Mapping[str, ViciValue], key: str, default: str = "") -> str:
    value = msg.get(key, default)
    return value if isinstance(value, str) else default


def _list(msg: Mapping[str, ViciValue], key: str) -> list[str]:
    value = msg.get(key, [])
    return value if isinstance(value, list) else []


@dataclass(frozen=True)
class ChildSaInfo:
    """A CHILD SA as charon reports it (`list-sas`)."""

    name: str
    state: str  # INSTALLED, REKEYING, ...
    encap: bool  # ESP in UDP (always, with kernel-libipsec)
    spi_in: str
    spi_out: str
    encr_alg: str
    encr_keysize: str
    integ_alg: str
    dh_group: str
    local_ts: list[str]
    remote_ts: list[str]
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    raw: Mapping[str, ViciValue]


@dataclass(frozen=True)
class IkeSaInfo:
    """An IKE SA as charon reports it, with its CHILD SAs."""

    name: str
    state: str  # CONNECTING, ESTABLISHED, ...
    local_host: str
    local_port: str
    remote_host: str
    remote_port: str
    local_id: str
    remote_id: str
    initiator: bool
    nat_local: bool
    nat_remote: bool
    encr_alg: str
    encr_keysize: str
    prf_alg: str
    dh_group: str
    children: list[ChildSaInfo]
    raw: Mapping[str, ViciValue]

    def child(self, name: str) -> ChildSaInfo:
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)


def _child_info(msg: Mapping[str, ViciValue]) -> ChildSaInfo:
    return ChildSaInfo(
        name=_str(msg, "name"),
        state=_str(msg, "state"),
        encap=_str(msg, "encap") == "yes",
        spi_in=_str(msg, "spi-in"),
        spi_out=_str(msg, "spi-out"),
        encr_alg=_str(msg, "encr-alg"),
        encr_keysize=_str(msg, "encr-keysize"),
        integ_alg=_str(msg, "integ-alg"),
        dh_group=_str(msg, "dh-group"),
        local_ts=_list(msg, "local-ts"),
        remote_ts=_list(msg, "remote-ts"),
        bytes_in=int(_str(msg, "bytes-in", "0")),
        bytes_out=int(_str(msg, "bytes-out", "0")),
        packets_in=int(_str(msg, "packets-in", "0")),
        packets_out=int(_str(msg, "packets-out", "0")),
        raw=msg,
    )


def _ike_info(name: str, msg: Mapping[str, ViciValue]) -> IkeSaInfo:
    children_msg = msg.get("child-sas", {})
    children = [
        _child_info(child)
        for child in (children_msg.values() if isinstance(children_msg, dict) else [])
        if isinstance(child, dict)
    ]
    return IkeSaInfo(
        name=name,
        state=_str(msg, "state"),
        local_host=_str(msg, "local-host"),
        local_port=_str(msg, "local-port"),
        remote_host=_str(msg, "remote-host"),
        remote_port=_str(msg, "remote-port"),
        local_id=_str(msg, "local-id"),
        remote_id=_str(msg, "remote-id"),
        initiator=_str(msg, "initiator") == "yes",
        nat_local=_str(msg, "nat-local") == "yes",
        nat_remote=_str(msg, "nat-remote") == "yes",
        encr_alg=_str(msg, "encr-alg"),
        encr_keysize=_str(msg, "encr-keysize"),
        prf_alg=_str(msg, "prf-alg"),
        dh_group=_str(msg, "dh-group"),
        children=children,
        raw=msg,
    )


# --- socket buffers ---------------------------------------------------------------------

_SYS_PIDFD_GETFD = 438
"""pidfd_getfd(2)'s number on x86-64 and arm64 (Linux 5.6): a duplicate of another
process's file descriptor, which shares the open socket and so its options."""
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33
SWAN_SOCKET_BUFFER = 4 * 1024 * 1024
"""What `Charon.grow_socket_buffers` gives charon's UDP sockets: the size lockgate
gives its own (`daemon.pump.SOCKET_BUFFER`), so both are measured on equal terms."""


def grow_udp_buffers(pid: int, size: int = SWAN_SOCKET_BUFFER) -> list[tuple[int, str]]:
    """Force SO_RCVBUF and SO_SNDBUF of every UDP socket of process `pid` to `size`.

    charon has no setting for its sockets' buffers (socket-default takes
    `net.core.rmem_default`, 208 KiB here, and that sysctl is not per namespace). With
    it, kernel-libipsec's receiving gateway dropped one ESP datagram in eight under one
    TCP stream (`UdpRcvbufErrors`), and TCP backed off on each. The descriptor is
    duplicated with pidfd_getfd (root), so the options land on charon's own socket.
    Returns (fd, local address) of each socket grown.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    grown: list[tuple[int, str]] = []
    pidfd = os.pidfd_open(pid)
    try:
        for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue  # closed meanwhile
            if not target.startswith("socket:"):
                continue
            fd = int(libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0))
            if fd < 0:
                continue  # closed meanwhile, or not ours to take
            with socket.socket(fileno=fd) as sock:
                if sock.type != socket.SOCK_DGRAM or sock.family not in (
                    socket.AF_INET,
                    socket.AF_INET6,
                ):
                    continue
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
                sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, size)
                grown.append((int(name), str(sock.getsockname()[:2])))
    finally:
        os.close(pidfd)
    return grown


# --- one charon -----------------------------------------------------------------------------


_MADE_IN_ROOT: set[Path] = set()
"""The empty directories made in a `ROOT_VARIABLE` root to bind run directories onto
(a lab's charons share their parent), removed by `Charon.stop` once empty."""

DEFAULT_LOG_LEVELS: Mapping[str, int] = {"default": 1, "ike": 2, "cfg": 2, "knl": 1, "net": 1}


class Charon:
    """One charon in a namespace, with its own run directory, config and log.

    `log_levels` are filelog levels per subsystem (`ike = 4, chd = 4` also logs keys,
    handy to compare a derivation).
    """

    def __init__(
        self,
        ns: Namespace,
        name: str,
        *,
        log_levels: Mapping[str, int] = DEFAULT_LOG_LEVELS,
        port: int = 500,
        port_nat_t: int = 4500,
        extra_charon: Sequence[str] = (),
        install_routes: bool = True,
        extra_plugins: Sequence[str] = (),
    ) -> None:
        self.ns = ns
        self.name = name
        self.rundir = ns.lab.tmpdir / f"charon-{name}"
        self.swanctl_dir = self.rundir / "swanctl"
        for sub in ("", "x509", "x509ca", "private", "pkcs8", "ecdsa", "rsa"):
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path = self.rundir / "strongswan.conf"
        self.conf_path.write_text(
            render_strongswan_conf(
                self.rundir,
                name,
                log_levels=log_levels,
                port=port,
                port_nat_t=port_nat_t,
                extra_charon=extra_charon,
                install_routes=install_routes,
                extra_plugins=extra_plugins,
            )
        )
        self.vici_path = self.rundir / "charon.vici"
        self.log_path = self.rundir / "charon.log"
        self.process: Process | None = None
        self.root = swan_root()

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "STRONGSWAN_CONF": str(self.conf_path),
            "SWANCTL_DIR": str(self.swanctl_dir),
        }

    def start(self, timeout: float = 10.0) -> None:
        """Start charon and wait until its vici socket answers."""
        script = f"mount --bind {self.rundir} /run && exec {CHARON}"
        if self.root is not None:
            self._make_mount_point(self.root)
            q_root = shlex.quote(str(self.root))
            script = (
                f"{_bind_script(self.rundir, self.root)}"
                f"mount --bind {shlex.quote(str(self.rundir))} {q_root}/run && "
                f"exec chroot {q_root} {CHARON}"
            )
        self.process = self.ns.spawn(
            ["sh", "-c", script],
            name=f"charon-{self.name}",
            log_path=self.rundir / "charon.stdout",
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while True:
            if not self.process.alive():
                raise HarnessError(f"charon {self.name} exited early\n{self.logs()}")
            if self.vici_path.exists():
                with contextlib.suppress(OSError), Vici(self.vici_path, timeout=2) as vici:
                    vici.request("version")
                    return
            if time.monotonic() > deadline:
                raise HarnessError(f"charon {self.name} not ready in {timeout}s\n{self.logs()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM (charon sends IKE Delete first), then SIGKILL after `timeout`."""
        if self.process is None:
            return None
        rc = self.process.stop(timeout)
        # Deepest first; a directory another charon of the lab still uses stays.
        for path in sorted(_MADE_IN_ROOT, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()
                _MADE_IN_ROOT.discard(path)
        return rc

    def _make_mount_point(self, root: Path) -> None:
        """Create the run directory's path inside `root`, remembering what was new."""
        path = root
        for part in self.rundir.parts[1:]:
            path = path / part
            if not path.exists():
                path.mkdir()
                _MADE_IN_ROOT.add(path)

    def pid(self) -> int:
        if self.process is None:
            raise HarnessError(f"charon {self.name} not started")
        return self.process.pid

    def grow_socket_buffers(self, size: int = SWAN_SOCKET_BUFFER) -> list[tuple[int, str]]:
        """Give charon's UDP sockets `size`-octet buffers (see `grow_udp_buffers`)."""
        grown = grow_udp_buffers(self.pid(), size)
        if not grown:
            raise HarnessError(f"charon {self.name}: no UDP socket to grow\n{self.logs()}")
        return grown

    def write_credential(self, kind: str, filename: str, data: bytes) -> Path:
        """Put a certificate or key into swanctl's directory (kind: x509, x509ca, private...)."""
        path = self.swanctl_dir / kind / filename
        path.write_bytes(data)
        if kind in {"private", "pkcs8", "ecdsa", "rsa"}:
            path.chmod(0o600)
        return path

    def swanctl(self, *args: str, timeout: float = 20.0) -> str:
        command = ["swanctl", *args, "--uri", f"unix://{self.vici_path}"]
        if self.root is not None:
            # swanctl reads the files under the run directory and its socket: the same
            # binds as charon's, in a mount namespace of its own (unshare's default
            # propagation is private, so nothing reaches the host).
            self._make_mount_point(self.root)
            inner = " ".join(shlex.quote(a) for a in [SWANCTL, *command[1:]])
            script = (
                f"{_bind_script(self.rundir, self.root)}"
                f"exec chroot {shlex.quote(str(self.root))} {inner}"
            )
            command = ["unshare", "--mount", "sh", "-c", script]
        proc = run_command(
            command,
            check=False,
            timeout=timeout,
            env=self.env,
        )
        if proc.returncode != 0:
            raise HarnessError(
                f"swanctl {' '.join(args)} failed on {self.name}: {proc.stdout}{proc.stderr}"
                f"\n{self.logs()}"
            )
        return proc.stdout

    def load(
        self, connections: Sequence[SwanConnection], secrets: Sequence[SwanSecret] = ()
    ) -> str:
        """Write swanctl.conf for these connections and `swanctl --load-all`."""
        (self.swanctl_dir / "swanctl.conf").write_text(render_swanctl(connections, secrets))
        return self.swanctl("--load-all")

    def _vici(
        self, command: str, msg: Mapping[str, object] | None = None, *, timeout: float = 30.0
    ) -> ViciMessage:
        with Vici(self.vici_path, timeout=timeout) as vici:
            reply, _ = vici.request(command, msg)
        return reply

    def initiate(self, child: str, ike: str | None = None, *, timeout: float = 15.0) -> None:
        """Initiate a CHILD SA (and its IKE SA); raise with the log if it fails."""
        msg: dict[str, object] = {"child": child, "timeout": int(timeout * 1000)}
        if ike is not None:
            msg["ike"] = ike
        reply = self._vici("initiate", msg, timeout=timeout + 5)
        if _str(reply, "success") != "yes":
            raise HarnessError(
                f"charon {self.name}: initiate {child} failed: {_str(reply, 'errmsg')}\n"
                f"{self.logs()}"
            )

    def terminate(
        self, *, ike: str | None = None, child: str | None = None, timeout: float = 10.0
    ) -> bool:
        """Terminate SAs by name; True if something was terminated."""
        msg: dict[str, object] = {"timeout": int(timeout * 1000)}
        if ike is not None:
            msg["ike"] = ike
        if child is not None:
            msg["child"] = child
        reply = self._vici("terminate", msg, timeout=timeout + 5)
        return _str(reply, "success") == "yes"

    def stats(self) -> dict[str, int]:
        """charon's IKE SA counters (vici `stats`): "total" and "half-open" IKE SAs.

        Cheap to ask even with thousands of SAs, unlike `list_sas`.
        """
        reply = self._vici("stats")
        ikesas = reply.get("ikesas", {})
        if not isinstance(ikesas, dict):
            raise HarnessError(f"charon {self.name}: stats without ikesas: {reply!r}")
        return {key: int(_str(ikesas, key, "0")) for key in ("total", "half-open")}

    def key_exchange_methods(self) -> dict[str, str]:
        """The key exchange methods this charon can compute (vici `get-algorithms`),
        each with the plugin that provides it: {"CURVE_25519": "openssl", ...}."""
        reply = self._vici("get-algorithms")
        # strongSwan 6 lists them under "ke" (RFC 9370's name), 5.9 under "dh".
        methods = reply.get("ke", reply.get("dh", {}))
        if not isinstance(methods, dict):
            raise HarnessError(f"charon {self.name}: get-algorithms without ke: {reply!r}")
        return {name: plugin for name, plugin in methods.items() if isinstance(plugin, str)}

    def list_sas(self) -> list[IkeSaInfo]:
        with Vici(self.vici_path) as vici:
            _, events = vici.request("list-sas", {}, event="list-sa")
        return [
            _ike_info(name, body)
            for event in events
            for name, body in event.items()
            if isinstance(body, dict)
        ]

    def wait_for_child(
        self, child: str, *, state: str = "INSTALLED", timeout: float = 15.0
    ) -> IkeSaInfo:
        """Wait until a CHILD SA called `child` is in `state`; return its IKE SA."""
        deadline = time.monotonic() + timeout
        while True:
            for ike in self.list_sas():
                if any(c.name == child and c.state == state for c in ike.children):
                    return ike
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"charon {self.name}: no {state} CHILD SA {child!r} in {timeout}s\n"
                    f"{self.logs()}"
                )
            time.sleep(0.1)

    def logs(self) -> str:
        """charon's log (and its stdout/stderr), for failure messages."""
        parts = [f"===== charon {self.name} ({self.ns.name}) log ====="]
        for path in (self.log_path, self.rundir / "charon.stdout"):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-20000:])
        return "\n".join(parts)


def install_credentials(charon: Charon, own: Credential, pki: Pki, name: str = "gw") -> str:
    """Give a charon its certificate, key and the CA chain; return the cert file name."""
    charon.write_credential("x509", f"{name}.crt", own.cert_pem)
    charon.write_credential("private", f"{name}.key", own.key_pem)
    chain = pki.chain()
    # The root is the trust anchor (x509ca); intermediates go with the own certificate
    # (x509), so charon sends them in IKE_AUTH and the peer must build the chain.
    for i, pem in enumerate(chain):
        charon.write_credential("x509ca" if i == len(chain) - 1 else "x509", f"ca{i}.crt", pem)
    return f"{name}.crt"
