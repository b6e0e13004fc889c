"""Load and validate a TOML configuration file into `conf.model.Config`.

Every mistake is reported with its key path and the reason, all of them at once:
`connections.dc1-net.esp_proposals[0]: unknown algorithm 'aes129gcm16'`. Unknown
keys are errors (a typo must not silently fall back to a default). Files named in the
configuration (PSK files, keys, certificates) are read and checked at load, so a
daemon that starts has what it needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from conf.model import (
    ANY_SUBNETS,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    DEFAULT_RA_ESP_PROPOSALS,
    DEFAULT_RA_IKE_PROPOSALS,
    DEFAULT_ROUTE_METRIC,
    DEFAULT_SSL_CIPHERS,
    ROUTE_INTERFACE_PREFIX,
    SSL_CIPHERS,
    AuthMethod,
    ClientAuth,
    Config,
    ConnectionConfig,
    ConnectionMode,
    ConsoleConfig,
    GatewayConfig,
    GroupConfig,
    IpAddress,
    IpNetwork,
    MetricsConfig,
    PeerConfig,
    RemoteAccessConfig,
    RemoteAccessProtocol,
    Secret,
    Transport,
)
from conf.proposals import esp_proposal_problem, ike_proposal_problem
from conf.toml_tables import TomlTables
from conf.users import load_users
from esp.replay import MAX_WINDOW
from ikev2.addresses import parse_address, parse_network
from ikev2.certs import (
    CredentialError,
    LocalCredentials,
    PrivateKey,
    TrustAnchors,
    describe,
    identity_mismatch,
)
from ikev2.config import ConfigError, Identity, Problem
from ovpn.tls_crypt import parse_static_key

T = TypeVar("T")

# Section names appear in key paths, logs and CLI commands: keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 365 * 86400
"""The longest duration any key takes: lifetimes, DPD and retransmission timers beyond
a year mean a typing mistake, and would overflow the timers' arithmetic long before."""
# RFC 7296 §2.15 advises a key with as much entropy as a strong key; refuse the worst.
MIN_PSK_LENGTH = 16
MIN_PPK_OCTETS = 32
"""A post-quantum preshared key needs at least 256 bits of entropy (RFC 8784 §6)."""
MAX_PPK_ID_LENGTH = 255
"""Octets of a `ppk_id`; it travels in a notify of an IKE_AUTH message."""
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

# IKE-level settings: every connection to one peer shares its IKE SA, so they must agree.
_IKE_LEVEL = (
    "ike_proposals",
    "ike_lifetime",
    "dpd_interval",
    "dpd_action",
    "encap",
    "fragmentation",
    "fragment_size",
)
# ESN words of an ESP proposal (strongSwan syntax); `esn = true` adds "esn" where none is.
_ESN_WORDS = frozenset({"esn", "noesn"})

_MISSING: Any = object()


class _Section:
    """Typed access to one TOML table, recording problems under its key path.

    A bad or missing value is recorded and the default returned, so one pass finds
    every mistake; the caller checks the problem count before building anything.
    """

    def __init__(self, data: Mapping[str, Any], path: str, problems: list[Problem]) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def problem(self, name: str, reason: str) -> None:
        self.problems.append(Problem(self.key(name) if name else self.path, reason))

    def has(self, name: str) -> bool:
        return name in self.data

    def _convert(self, name: str, raw: Any, convert: Callable[[Any], T]) -> T | None:
        try:
            return convert(raw)
        except _Bad as bad:
            self.problem(name, bad.reason)
            return None

    def value(self, name: str, convert: Callable[[Any], T], default: T) -> T:
        """The converted value, or `default` when the key is absent (or bad: recorded)."""
        self.seen.add(name)
        if name not in self.data:
            return default
        converted = self._convert(name, self.data[name], convert)
        return default if converted is None else converted

    def optional(self, name: str, convert: Callable[[Any], T]) -> T | None:
        """The converted value, or None when the key is absent."""
        self.seen.add(name)
        if name not in self.data:
            return None
        return self._convert(name, self.data[name], convert)

    def required(self, name: str, convert: Callable[[Any], T]) -> T | None:
        """The converted value; a missing key is recorded."""
        self.seen.add(name)
        if name not in self.data:
            self.problem(name, "required key is missing")
            return None
        return self._convert(name, self.data[name], convert)

    def items(
        self, name: str, convert: Callable[[Any], T], default: Sequence[T] | None = None
    ) -> tuple[T, ...] | None:
        """A non-empty list, each element converted; element problems say `[i]`.

        Absent: `default` (None: the key is required)."""
        self.seen.add(name)
        if name not in self.data:
            if default is None:
                self.problem(name, "required key is missing")
                return None
            return tuple(default)
        raw = self.data[name]
        if not isinstance(raw, list):
            self.problem(name, f"expected a list, got {_describe(raw)}")
            return None
        if not raw:
            self.problem(name, "must not be empty")
            return None
        out: list[T] = []
        for i, item in enumerate(raw):
            converted = self._convert(f"{name}[{i}]", item, convert)
            if converted is not None:
                out.append(converted)
        return tuple(out) if len(out) == len(raw) else None

    def finish(self) -> None:
        """Unknown keys are mistakes: name them, with the likely intended key."""
        for name in self.data:
            if name in self.seen:
                continue
            close = difflib.get_close_matches(name, sorted(self.seen), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.problem(name, f"unknown key{hint}")


class _Bad(Exception):
    """A value cannot be used; carries the reason (and optionally a finer path)."""

    def __init__(self, reason: str, path: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


def _describe(raw: object) -> str:
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(raw), type(raw).__name__)
    return f"{kind} ({raw!r})" if isinstance(raw, str | int | float) else kind


# --- value converters ------------------------------------------------------------------


def _string(raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Bad(f"expected a string, got {_describe(raw)}")
    if not raw.strip():
        raise _Bad("must not be empty")
    return raw


def _boolean(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise _Bad(f"expected true or false, got {_describe(raw)}")
    return raw


def _integer(low: int, high: int) -> Callable[[Any], int]:
    def convert(raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Bad(f"expected an integer, got {_describe(raw)}")
        if not low <= raw <= high:
            raise _Bad(f"{raw} is out of range {low}..{high}")
        return raw

    return convert


MAX_WORKERS = 16
"""Most data-plane workers `[gateway] workers` may ask for: each pair of workers has
a hand-off socket pair, so N workers cost the main process N(N-1) file descriptors
besides their own (240 at 16, well inside the default limit of 1024)."""


def _workers(raw: Any) -> int:
    """A worker count, or "auto": one per core this process may run on."""
    if raw == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    if isinstance(raw, str):
        raise _Bad(f'expected an integer or "auto", got {_describe(raw)}')
    return _integer(1, MAX_WORKERS)(raw)


def _duration(raw: Any) -> float:
    """Seconds, as a number (30) or a string with a unit ("30s", "15m", "4h", "1d")."""
    if isinstance(raw, bool):
        raise _Bad(f"expected a duration, got {_describe(raw)}")
    if isinstance(raw, int | float):
        seconds = float(raw)
    elif isinstance(raw, str) and (m := _DURATION.match(raw)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise _Bad(f'expected a duration such as 30, "30s", "15m" or "4h", got {_describe(raw)}')
    if not math.isfinite(seconds):
        raise _Bad(f"{raw!r} is not a finite duration")
    if seconds < 0:
        raise _Bad("a duration must not be negative")
    if seconds > MAX_DURATION:
        raise _Bad(f"{raw!r} is longer than the limit of {MAX_DURATION // 86400} days")
    return seconds


def _choice(*options: str) -> Callable[[Any], Any]:
    def convert(raw: Any) -> str:
        if not isinstance(raw, str) or raw not in options:
            listed = ", ".join(f'"{o}"' for o in options)
            raise _Bad(f"must be one of {listed}, got {_describe(raw)}")
        return raw

    return convert


def _address(raw: Any) -> IpAddress:
    text = _string(raw).strip()
    try:
        return parse_address(text)
    except ValueError:
        raise _Bad(f"not an IP address: {text!r}") from None


def _subnet(raw: Any) -> IpNetwork:
    text = _string(raw).strip()
    try:
        return parse_network(text)
    except ValueError:
        try:
            loose = parse_network(text, strict=False)
        except ValueError:
            raise _Bad(f'not a subnet: {text!r} (e.g. "192.0.2.0/24")') from None
        raise _Bad(f"{text!r} has host bits set (did you mean '{loose}'?)") from None


def _identity(raw: Any) -> str:
    text = _string(raw)
    try:
        Identity.parse(text)
    except ConfigError as exc:
        raise _Bad(str(exc)) from None
    return text.strip()


def _proposal(check: Callable[[str], str | None]) -> Callable[[Any], str]:
    def convert(raw: Any) -> str:
        text = _string(raw)
        problem = check(text)
        if problem is not None:
            raise _Bad(problem)
        return text.strip().lower()

    return convert


def _path(raw: Any) -> Path:
    text = _string(raw)
    path = Path(text)
    if not path.is_absolute():
        raise _Bad(f"{text!r} must be an absolute path")
    return path


def _readable_file(raw: Any) -> Path:
    path = _path(raw)
    if not path.is_file():
        raise _Bad(f"{str(path)!r} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise _Bad(f"{str(path)!r} is not readable")
    return path


def _private_file(raw: Any) -> Path:
    """A file holding a secret: it must be readable by its owner only."""
    path = _readable_file(raw)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        who = "everyone" if mode & stat.S_IROTH else "its group"
        raise _Bad(
            f"{str(path)!r} is accessible by {who} (mode {stat.S_IMODE(mode):04o}); "
            f"a secret file must be owner-only: chmod 600"
        )
    return path


def _ifname(raw: Any) -> str:
    text = _string(raw)
    if not _IFNAME.match(text):
        raise _Bad(f"{text!r} is not a valid interface name (1-15 letters, digits, '_.-')")
    return text


def _inside_address(version: int) -> Callable[[Any], Any]:
    """An interface address with its prefix ("198.51.100.253/30") of IP `version`."""

    def convert(raw: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        text = _string(raw).strip()
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError:
            raise _Bad(
                f'not an address with a prefix: {text!r} (e.g. "{_EXAMPLE[version]}")'
            ) from None
        if iface.version != version:
            raise _Bad(f"{text!r} is not an IPv{version} address")
        if "/" not in text:
            raise _Bad(f'{text!r} needs its prefix length (e.g. "{_EXAMPLE[version]}")')
        return iface

    return convert


_EXAMPLE = {4: "198.51.100.253/30", 6: "2001:db8:ff::1/126"}


# --- sections --------------------------------------------------------------------------


def _table(raw: Any, path: str, problems: list[Problem]) -> Mapping[str, Any] | None:
    if not isinstance(raw, dict):
        problems.append(Problem(path, f"expected a table ([{path}]), got {_describe(raw)}"))
        return None
    return raw


def _private_key(s: _Section, path: Path) -> PrivateKey | None:
    """The key of `path`, or None with the problem recorded under `private_key`."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        s.problem("private_key", f"{str(path)!r} is not an unencrypted PEM private key")
        return None
    if not isinstance(key, PrivateKey):
        s.problem(
            "private_key", f"{type(key).__name__} keys are not supported (RSA, ECDSA or Ed25519)"
        )
        return None
    return key


def _check_credentials(s: _Section, gw: GatewayConfig) -> None:
    """Load the certificate, key and CAs the way the IKE core will (`ikev2.certs`), so a
    file it could not use fails here, under its own key."""
    certs: list[x509.Certificate] = []
    key: Any = None
    if gw.certificate is not None:
        try:
            certs = x509.load_pem_x509_certificates(gw.certificate.read_bytes())
        except ValueError:
            s.problem("certificate", f"{str(gw.certificate)!r} is not a PEM X.509 certificate")
    if gw.private_key is not None:
        key = _private_key(s, gw.private_key)
    if certs and key is not None:
        try:
            LocalCredentials(certs[0], tuple(certs[1:]), key)
        except CredentialError:
            s.problem("private_key", "does not match the public key of gateway.certificate")
    for i, path in enumerate(gw.ca):
        try:
            TrustAnchors.from_pem(path.read_bytes())
        except (CredentialError, OSError):
            s.problem(f"ca[{i}]", f"{str(path)!r} is not a PEM X.509 certificate")


def _gateway(data: Mapping[str, Any], problems: list[Problem]) -> GatewayConfig | None:
    s = _Section(data, "gateway", problems)
    before = len(problems)
    addresses = s.items("addresses", _address)
    ident = s.required("id", _identity)
    gw_kwargs: dict[str, Any] = {
        "control_socket": s.value("control_socket", _path, DEFAULT_CONTROL_SOCKET),
        "ike_port": s.value("ike_port", _integer(1, 65535), 500),
        "nat_port": s.value("nat_port", _integer(1, 65535), 4500),
        "certificate": s.optional("certificate", _readable_file),
        "private_key": s.optional("private_key", _private_file),
        "ca": s.items("ca", _readable_file, ()) or (),
        "interface": s.value("interface", _ifname, "lockgate0"),
        # 1280: IPv6's minimum link MTU (RFC 8200 §5), so IPv6 inner traffic works.
        "mtu": s.optional("mtu", _integer(1280, 65535)),
        "log_level": s.value("log_level", _choice("debug", "info", "warning", "error"), "info"),
        "cookie_threshold": s.value("cookie_threshold", _integer(0, 1_000_000), 32),
        "max_half_open": s.value("max_half_open", _integer(1, 1_000_000), 1000),
        "retransmit_timeout": s.value("retransmit_timeout", _duration, 4.0),
        "retransmit_tries": s.value("retransmit_tries", _integer(0, 20), 5),
        "workers": s.value("workers", _workers, 1),
    }
    s.finish()
    if gw_kwargs["ike_port"] == gw_kwargs["nat_port"]:
        s.problem("nat_port", "must differ from ike_port")
    if s.has("certificate") != s.has("private_key"):
        missing = "private_key" if s.has("certificate") else "certificate"
        s.problem(missing, "certificate and private_key must be set together")
    if addresses is not None and len(set(addresses)) != len(addresses):
        s.problem("addresses", "lists an address twice")
    if gw_kwargs["retransmit_timeout"] <= 0:
        s.problem("retransmit_timeout", "must be positive")
    if gw_kwargs["cookie_threshold"] >= gw_kwargs["max_half_open"]:
        # Half-open SAs are capped first: COOKIEs would never be asked for.
        s.problem(
            "cookie_threshold",
            f"must be below max_half_open ({gw_kwargs['max_half_open']})",
        )
    if len(problems) > before or addresses is None or ident is None:
        return None
    gateway = GatewayConfig(addresses=addresses, id=ident, **gw_kwargs)
    _check_credentials(s, gateway)
    return gateway if len(problems) == before else None


def _peer_address(raw: Any) -> IpAddress | None:
    if raw == "%any":
        return None
    return _address(raw)


def _psk_text(raw: Any) -> Secret:
    text = _string(raw)
    if len(text) < MIN_PSK_LENGTH:
        raise _Bad(
            f"too short ({len(text)} characters); use at least {MIN_PSK_LENGTH} random "
            f"characters (RFC 7296 §2.15)"
        )
    return Secret(text.encode())


def _peer(
    name: str, data: Mapping[str, Any], gateway: GatewayConfig | None, problems: list[Problem]
) -> PeerConfig | None:
    s = _Section(data, f"peers.{name}", problems)
    before = len(problems)
    if "address" in data:
        address = s.optional("address", _peer_address)
    else:
        s.required("address", _peer_address)
        address = None
    ident = s.optional("id", _identity)
    local_id = s.optional("local_id", _identity)
    initial_contact = s.value("initial_contact", _boolean, True)
    auth: AuthMethod = s.value("auth", _choice("psk", "pubkey"), "psk")
    psk = s.optional("psk", _psk_text)
    psk_file = s.optional("psk_file", _private_file)
    ppk_id = s.optional("ppk_id", _ppk_id)
    ppk_file = s.optional("ppk_file", _private_file)
    ppk_required = s.value("ppk_required", _boolean, False)
    s.finish()
    ppk = _ppk(s, ppk_id, ppk_file, ppk_required)
    if psk_file is not None:
        text = psk_file.read_bytes().strip()
        if len(text) < MIN_PSK_LENGTH:
            s.problem(
                "psk_file",
                f"{str(psk_file)!r} holds a key of {len(text)} characters; use at least "
                f"{MIN_PSK_LENGTH} (RFC 7296 §2.15)",
            )
        psk = Secret(text)
    if auth == "psk":
        if s.has("psk") and s.has("psk_file"):
            s.problem("psk_file", "set psk or psk_file, not both")
        elif not s.has("psk") and not s.has("psk_file"):
            s.problem("", 'auth is "psk" but neither psk nor psk_file is set')
    else:
        for key in ("psk", "psk_file"):
            if s.has(key):
                s.problem(key, 'only used with auth = "psk"')
        if gateway is not None and (gateway.certificate is None or not gateway.ca):
            s.problem(
                "auth", '"pubkey" needs gateway.certificate, gateway.private_key and gateway.ca'
            )
    if address is not None and gateway is not None:
        if not any(a.version == address.version for a in gateway.addresses):
            s.problem(
                "address",
                f"an IPv{address.version} peer, but gateway.addresses has no "
                f"IPv{address.version} address",
            )
        if address in gateway.addresses:
            s.problem("address", "is one of gateway.addresses (the peer cannot be us)")
    if ident is None and address is not None:
        ident = str(address)
    if len(problems) > before or (address is None and "address" not in data):
        return None
    return PeerConfig(
        name=name,
        address=address,
        id=ident,
        auth=auth,
        psk=psk,
        psk_file=psk_file,
        local_id=local_id,
        initial_contact=initial_contact,
        ppk_id=ppk_id,
        ppk=ppk,
        ppk_file=ppk_file,
        ppk_required=ppk_required,
    )


def _ppk_id(raw: Any) -> str:
    text = _string(raw)
    if not text or len(text.encode()) > MAX_PPK_ID_LENGTH or not text.isprintable():
        raise _Bad(
            f"must be 1 to {MAX_PPK_ID_LENGTH} printable characters (sent as the PPK_ID, "
            "RFC 8784 §3)"
        )
    return text


def _ppk(s: _Section, ppk_id: str | None, ppk_file: Path | None, required: bool) -> Secret | None:
    """The PPK of `ppk_file` (hex text, RFC 8784 §3); its problems go to the keys."""
    if s.has("ppk_id") != s.has("ppk_file"):
        missing = "ppk_file" if s.has("ppk_id") else "ppk_id"
        s.problem(missing, "ppk_id and ppk_file must be set together")
    if required and not (s.has("ppk_id") and s.has("ppk_file")):
        s.problem("ppk_required", "needs ppk_id and ppk_file")
    if ppk_file is None or ppk_id is None:
        return None
    problem, key = parse_ppk_text(ppk_file.read_bytes())
    if problem:
        s.problem("ppk_file", f"{str(ppk_file)!r} {problem}")
        return None
    return Secret(key)


def parse_ppk_text(data: bytes) -> tuple[str, bytes]:
    """The PPK of a `ppk_file`: hexadecimal text (`openssl rand -hex 32`), white space
    ignored, at least MIN_PPK_OCTETS octets. Returns (problem, key); the problem is
    empty when the key is good, and never contains the key."""
    text = b"".join(data.split())
    if text[:2].lower() == b"0x":
        text = text[2:]
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return (
            "is not hexadecimal text; write the PPK as hex digits, e.g. "
            f"`openssl rand -hex {MIN_PPK_OCTETS}`",
            b"",
        )
    if len(key) < MIN_PPK_OCTETS:
        return (
            f"holds a PPK of {len(key)} octets; use at least {MIN_PPK_OCTETS} random octets "
            f"written as hex (`openssl rand -hex {MIN_PPK_OCTETS}`)",
            b"",
        )
    return "", key


def _connection(
    name: str,
    data: Mapping[str, Any],
    peers: Mapping[str, PeerConfig | None],
    problems: list[Problem],
    warnings: list[Problem],
) -> ConnectionConfig | None:
    s = _Section(data, f"connections.{name}", problems)
    before = len(problems)
    peer = s.required("peer", _string)
    mode: ConnectionMode = s.value("mode", _choice("policy", "route"), "policy")
    # Route mode: routing decides what enters the tunnel, so the selectors default to
    # everything (the way route-based VPNs negotiate, 0.0.0.0/0 and ::/0).
    any_subnets = ANY_SUBNETS if mode == "route" else None
    local_subnets = s.items("local_subnets", _subnet, any_subnets)
    remote_subnets = s.items("remote_subnets", _subnet, any_subnets)
    route_keys = _route_keys(s, name, mode)
    kwargs: dict[str, Any] = {
        "ike_proposals": s.items(
            "ike_proposals", _proposal(ike_proposal_problem), DEFAULT_IKE_PROPOSALS
        ),
        "esp_proposals": s.items(
            "esp_proposals", _proposal(esp_proposal_problem), DEFAULT_ESP_PROPOSALS
        ),
        "start": s.value("start", _choice("initiate", "trap", "wait"), "initiate"),
        "ike_lifetime": s.value("ike_lifetime", _duration, 14400.0),
        "child_lifetime": s.value("child_lifetime", _duration, 3600.0),
        "rekey_margin": s.value("rekey_margin", _duration, 540.0),
        "dpd_interval": s.value("dpd_interval", _duration, 30.0),
        # Resolved per peer once every connection is read (_default_dpd_actions).
        "dpd_action": s.value("dpd_action", _choice("clear", "restart", "trap"), ""),
        "encap": s.value("encap", _choice("auto", "force", "nat"), "auto"),
        "replay_window": s.value("replay_window", _integer(0, MAX_WINDOW), 128),
        "life_bytes": s.value("life_bytes", _integer(0, 2**63 - 1), 0),
        "life_packets": s.value("life_packets", _integer(0, 2**63 - 1), 0),
        "esn": s.value("esn", _boolean, False),
        "fragmentation": s.value("fragmentation", _boolean, True),
        # 200..65000: what the IKE core accepts; below ~500 IKE_AUTH needs many fragments.
        "fragment_size": s.value("fragment_size", _integer(200, 65000), 1232),
    }
    s.finish()
    margin = kwargs["rekey_margin"]
    for lifetime in ("ike_lifetime", "child_lifetime"):
        if kwargs[lifetime] == 0:
            s.problem(lifetime, "must be positive")
        elif margin >= kwargs[lifetime]:
            if s.has("rekey_margin"):
                s.problem(
                    "rekey_margin", f"{margin:g}s is not below {lifetime} ({kwargs[lifetime]:g}s)"
                )
            else:
                s.problem(
                    lifetime,
                    f"{kwargs[lifetime]:g}s must exceed rekey_margin ({margin:g}s, the default)",
                )
    if peer is not None:
        if peer not in peers:
            known = ", ".join(sorted(peers)) or "none defined"
            s.problem("peer", f"no peer named {peer!r} (peers: {known})")
        elif (
            (target := peers[peer]) is not None
            and target.address is None
            and kwargs["start"] == "initiate"
            and s.has("start")
        ):
            s.problem("start", f'"initiate" needs an address for peers.{peer} (it is %any)')
    if kwargs["esn"] and kwargs["esp_proposals"]:
        for i, text in enumerate(kwargs["esp_proposals"]):
            if "noesn" in text.split("-"):
                s.problem(f"esp_proposals[{i}]", 'says "noesn" but esn = true')
    for key, subnets in (("local_subnets", local_subnets), ("remote_subnets", remote_subnets)):
        if subnets is not None and len(set(subnets)) != len(subnets):
            s.problem(key, "lists a subnet twice")
    if local_subnets and remote_subnets:
        _check_families(s, local_subnets, remote_subnets, warnings)
    if len(problems) > before or peer is None or local_subnets is None or remote_subnets is None:
        return None
    target = peers.get(peer)
    if target is not None and target.address is None and not s.has("start"):
        kwargs["start"] = "wait"  # %any peer: we can only answer
        warnings.append(
            Problem(
                s.key("start"),
                f'runs as "wait": peers.{peer} has address = "%any", so only it can initiate',
            )
        )
    return ConnectionConfig(
        name=name,
        peer=peer,
        local_subnets=local_subnets,
        remote_subnets=remote_subnets,
        mode=mode,
        **route_keys,
        **kwargs,
    )


_ROUTE_ONLY = ("interface", "inside_address", "inside_address6", "routes", "route_metric")
"""Keys that mean something only for mode = "route"."""


def _route_keys(s: _Section, name: str, mode: str) -> dict[str, Any]:
    """The route-mode keys of a connection; in policy mode each one given is a mistake
    (its traffic is chosen by the selectors, and routed into the gateway's TUN)."""
    if mode != "route":
        for key in _ROUTE_ONLY:
            s.seen.add(key)
            if s.has(key):
                s.problem(key, 'only for mode = "route" (this connection is policy-based)')
        return {}
    routes = s.items("routes", _subnet, ()) or ()
    if len(set(routes)) != len(routes):
        s.problem("routes", "lists a prefix twice")
    keys = {
        "interface": s.value("interface", _ifname, (ROUTE_INTERFACE_PREFIX + name)[:15]),
        "inside_address": s.optional("inside_address", _inside_address(4)),
        "inside_address6": s.optional("inside_address6", _inside_address(6)),
        "routes": routes,
        "route_metric": s.value("route_metric", _integer(0, 2**32 - 1), DEFAULT_ROUTE_METRIC),
    }
    # Without an SA the interface is down: no packet could reach a trap.
    if s.data.get("start") == "trap":
        s.problem("start", '"trap" needs policy mode: a route-mode interface is down until '
                  "its CHILD SA is up, so no packet can start it")  # fmt: skip
    if s.data.get("dpd_action") == "trap":
        s.problem("dpd_action", '"trap" needs policy mode (see start)')
    return keys


def _check_route_mode(
    gateway: GatewayConfig | None,
    connections: Mapping[str, ConnectionConfig],
    problems: list[Problem],
) -> None:
    """Route-mode interfaces and inside addresses: each interface name is used once
    (the gateway's TUN included), and an inside address overlaps neither another
    connection's inside addresses nor a subnet of another connection (a packet to it
    must have one way to go)."""
    names: dict[str, str] = {}
    if gateway is not None:
        names[gateway.interface] = "gateway.interface"
    inside: list[tuple[str, IpNetwork]] = []
    for conn in connections.values():
        if conn.mode != "route" or conn.interface is None:
            continue
        key = f"connections.{conn.name}"
        if conn.interface in names:
            problems.append(
                Problem(
                    f"{key}.interface",
                    f"{conn.interface!r} is already used by {names[conn.interface]}",
                )
            )
        else:
            names[conn.interface] = f"{key}.interface"
        for field in ("inside_address", "inside_address6"):
            address = getattr(conn, field)
            if address is None:
                continue
            for where, other in inside:
                if other.version == address.version and other.overlaps(address.network):
                    problems.append(
                        Problem(f"{key}.{field}", f"{address} overlaps {where} ({other})")
                    )
            for other_conn in connections.values():
                if other_conn is conn:
                    continue
                for side in ("local_subnets", "remote_subnets"):
                    for subnet in getattr(other_conn, side):
                        # 0.0.0.0/0 and ::/0 (a route-mode default) overlap everything.
                        if (
                            subnet.prefixlen
                            and subnet.version == address.version
                            and subnet.overlaps(address.network)
                        ):
                            problems.append(
                                Problem(
                                    f"{key}.{field}",
                                    f"{address} overlaps connections.{other_conn.name}."
                                    f"{side} {subnet}",
                                )
                            )
            inside.append((f"{key}.{field}", address.network))


def _named_tables(
    data: Mapping[str, Any], key: str, problems: list[Problem], prefix: str = ""
) -> dict[str, Mapping[str, Any]]:
    """The `[KEY.NAME]` tables of `data` (under `prefix` in key paths) by NAME."""
    if key not in data:
        return {}
    key_path = f"{prefix}.{key}" if prefix else key
    raw = _table(data[key], key_path, problems)
    if raw is None:
        return {}
    out: dict[str, Mapping[str, Any]] = {}
    for name, body in raw.items():
        if not _NAME.match(name):
            problems.append(
                Problem(
                    f"{key_path}.{name}",
                    "a name must start with a letter or digit and use only letters, "
                    "digits, '-', '_' and '.' (up to 64)",
                )
            )
            continue
        table = _table(body, f"{key_path}.{name}", problems)
        if table is not None:
            out[name] = table
    return out


def _default_dpd_actions(
    connections: dict[str, ConnectionConfig], peers: Mapping[str, PeerConfig | None]
) -> None:
    """Fill in dpd_action where no connection to a peer sets it. It is a setting of the
    peer's IKE SA, so the default follows what its connections want: a peer we
    initiate to is initiated again after it is found dead (a restarted responder is
    back as soon as it answers), a peer whose connections are all traps is re-armed,
    and one we only wait for stays down until it initiates again."""
    by_peer: dict[str, list[ConnectionConfig]] = {}
    for conn in connections.values():
        by_peer.setdefault(conn.peer, []).append(conn)
    for peer, conns in by_peer.items():
        explicit = [c.dpd_action for c in conns if c.dpd_action]
        if explicit:
            # A peer with some connections explicit: the others take the first explicit
            # value, so the IKE-level settings still agree (_check_shared_ike).
            default = explicit[0]
        elif any(c.start == "initiate" for c in conns) and (
            (target := peers.get(peer)) is not None and target.address is not None
        ):
            default = "restart"
        elif all(c.start == "trap" for c in conns):
            default = "trap"
        else:
            default = "clear"
        for conn in conns:
            if not conn.dpd_action:
                connections[conn.name] = dataclasses.replace(conn, dpd_action=default)


def _check_shared_ike(connections: Mapping[str, ConnectionConfig], problems: list[Problem]) -> None:
    """Connections to one peer share an IKE SA: their IKE-level settings must agree."""
    first: dict[str, ConnectionConfig] = {}
    for conn in connections.values():
        lead = first.setdefault(conn.peer, conn)
        if lead is conn:
            continue
        for key in _IKE_LEVEL:
            if getattr(conn, key) != getattr(lead, key):
                problems.append(
                    Problem(
                        f"connections.{conn.name}.{key}",
                        f"differs from connections.{lead.name}; connections to peer "
                        f"{conn.peer!r} share one IKE SA, so {key} must be the same",
                    )
                )


def _check_own_identities(
    gateway: GatewayConfig, peers: Mapping[str, PeerConfig | None], problems: list[Problem]
) -> None:
    """With auth = "pubkey" we prove our identity with gateway.certificate: it must name
    that identity (RFC 4945 §3.1), or every peer refuses us at IKE_AUTH. Checked once per
    key: gateway.id for the peers without a local_id of their own."""
    pubkey = [p for p in peers.values() if p is not None and p.auth == "pubkey"]
    if not pubkey or gateway.certificate is None:
        return
    try:
        cert = x509.load_pem_x509_certificates(gateway.certificate.read_bytes())[0]
    except (OSError, ValueError):
        return  # reported under gateway.certificate
    checked: set[str] = set()
    for peer in pubkey:
        if peer.local_id is not None:
            key, ident = f"peers.{peer.name}.local_id", peer.local_id
        else:
            key, ident = "gateway.id", gateway.id
        if key in checked:
            continue
        checked.add(key)
        reason = identity_mismatch(cert, Identity.parse(ident))
        if reason is not None:
            problems.append(
                Problem(
                    key,
                    f"{ident!r} is not in our certificate (gateway.certificate "
                    f'{describe(cert)!r}, auth = "pubkey" for peers.{peer.name}): ID {reason}',
                )
            )


def _check_overlaps(connections: Mapping[str, ConnectionConfig], problems: list[Problem]) -> None:
    """Two connections with the same subnet pair would fight over one policy."""
    seen: dict[tuple[frozenset[IpNetwork], frozenset[IpNetwork]], str] = {}
    for conn in connections.values():
        if conn.mode == "route":
            continue  # its own interface: routing, not the selectors, tells them apart
        key = (frozenset(conn.local_subnets), frozenset(conn.remote_subnets))
        if key in seen:
            problems.append(
                Problem(
                    f"connections.{conn.name}",
                    f"same local_subnets and remote_subnets as connections.{seen[key]}",
                )
            )
        else:
            seen[key] = conn.name


def _check_families(
    s: _Section,
    local_subnets: Sequence[IpNetwork],
    remote_subnets: Sequence[IpNetwork],
    warnings: list[Problem],
) -> None:
    """Traffic selectors pair per address family (RFC 7296 §2.9): a packet has one
    family at both ends. With no family in common nothing could ever flow, so that is
    refused; a family on one side only is offered but carries nothing, so it is
    warned about."""
    local = {net.version for net in local_subnets}
    remote = {net.version for net in remote_subnets}
    if not local & remote:
        s.problem(
            "remote_subnets",
            f"IPv{min(remote)} only, while local_subnets are IPv{min(local)} only: "
            "selectors pair per address family, so nothing could flow",
        )
        return
    for version in sorted(local ^ remote):
        side, other = ("local", "remote") if version in local else ("remote", "local")
        warnings.append(
            Problem(
                s.key(f"{side}_subnets"),
                f"IPv{version} subnets have no IPv{version} partner in {other}_subnets "
                f"(selectors pair per address family): no IPv{version} traffic will flow",
            )
        )


def _warn_partial_overlaps(
    connections: Mapping[str, ConnectionConfig], warnings: list[Problem]
) -> None:
    """Two connections to one peer whose subnets overlap without being equal: a packet
    in the overlap goes to whichever policy is more specific, which is rarely meant."""
    listed = list(connections.values())
    for i, a in enumerate(listed):
        for b in listed[i + 1 :]:
            if a.peer != b.peer or "route" in (a.mode, b.mode):
                continue
            if set(a.local_subnets) == set(b.local_subnets) and set(a.remote_subnets) == set(
                b.remote_subnets
            ):
                continue  # identical pairs are an error of their own (_check_overlaps)
            local = _overlap(a.local_subnets, b.local_subnets)
            remote = _overlap(a.remote_subnets, b.remote_subnets)
            if local and remote:
                warnings.append(
                    Problem(
                        f"connections.{b.name}.local_subnets",
                        f"{local[1]} overlaps {local[0]} of connections.{a.name} towards "
                        f"the same peer and overlapping remote subnets ({remote[0]}, "
                        f"{remote[1]}): the more specific policy takes the overlap",
                    )
                )


def _overlap(
    first: Sequence[IpNetwork], second: Sequence[IpNetwork]
) -> tuple[IpNetwork, IpNetwork] | None:
    for x in first:
        for y in second:
            if x.version == y.version and x.overlaps(y):
                return x, y
    return None


# --- point-to-cloud servers ------------------------------------------------------------

MAX_REMOTE_ACCESS_CLIENTS = 500
"""Concurrent clients of all remote-access servers of one gateway together."""
MAX_CONNECTIONS_PER_USER = 5
MAX_LOCAL_SUBNETS = 20
MAX_DNS_SERVERS = 2
MAX_CLIENT_CAS = 10
MAX_GROUP_DESTINATIONS = 10
MAX_DNS_DOMAINS = 10
_SSL_ONLY = ("transport", "port", "ciphers", "tls_crypt_key")
_IKEV2_ONLY = ("dns_domains", "ike_proposals", "esp_proposals")
_SSL_PORTS = {"tcp": 443, "udp": 1194}
_ADDRESS_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.?$"
)


def _ssl_cipher(raw: Any) -> str:
    text = _string(raw).strip().upper()
    if text not in SSL_CIPHERS:
        known = ", ".join(sorted(SSL_CIPHERS))
        raise _Bad(f"unknown cipher {raw!r} (known: {known})")
    return text


def _network(version: int) -> Callable[[Any], Any]:
    def convert(raw: Any) -> IpNetwork:
        net = _subnet(raw)
        if net.version != version:
            raise _Bad(f"{str(net)!r} is not an IPv{version} network")
        return net

    return convert


def _dial_address(raw: Any) -> str:
    """What a client dials: an IP address or a DNS name."""
    text = _string(raw).strip()
    try:
        parse_address(text)
    except ValueError:
        if not _ADDRESS_NAME.match(text):
            raise _Bad(f"{text!r} is neither an IP address nor a DNS name") from None
    return text


def _dns_domain(raw: Any) -> str:
    text = _string(raw).strip().rstrip(".").lower()
    if not text or not _ADDRESS_NAME.match(text):
        raise _Bad(f"{raw!r} is not a DNS domain")
    return text


def _client_cas(raw: Any) -> Path:
    """A PEM file of the CAs that client certificates must chain to (1-10)."""
    path = _readable_file(raw)
    try:
        cas = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        raise _Bad(f"{str(path)!r} is not a PEM file of X.509 certificates") from None
    if len(cas) > MAX_CLIENT_CAS:
        raise _Bad(f"{str(path)!r} holds {len(cas)} certificates; at most {MAX_CLIENT_CAS} CAs")
    return path


def _tls_crypt_key(raw: Any) -> Path:
    """An OpenVPN static key file (`openvpn --genkey tls-crypt`), owner-only."""
    path = _private_file(raw)
    try:
        parse_static_key(path.read_text(encoding="ascii", errors="replace"))
    except ValueError as exc:
        raise _Bad(f"{str(path)!r} is not an OpenVPN tls-crypt key: {exc}") from None
    return path


def _within(inner: IpNetwork, outer: IpNetwork) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _pool_room(pool: IpNetwork, max_connections: int) -> str | None:
    """Why `pool` cannot hold `max_connections` clients, or None. The server takes the
    first host address; IPv4 loses its network and broadcast addresses too."""
    reserved = 3 if pool.version == 4 else 2
    clients = pool.num_addresses - reserved
    if pool.version == 4 and pool.prefixlen > 30:
        return f"{pool} is smaller than a /30 (the server, one client, network, broadcast)"
    if clients < max_connections:
        return (
            f"a pool smaller than max_connections: {pool} has {max(clients, 0)} client "
            f"addresses (the server takes {next(pool.hosts())}), max_connections is "
            f"{max_connections}"
        )
    return None


def _server_credentials(
    s: _Section, gateway: GatewayConfig, certificate: Path | None, key: Path | None
) -> None:
    """An SSL server proves itself with a certificate the stock OpenVPN client accepts:
    its `remote-cert-tls server` wants the serverAuth EKU and a keyUsage extension, and
    the TLS handshake signs with the key (digitalSignature), so a certificate without
    them fails every client at connect; refuse it here, under its key."""
    own = s.has("certificate")
    if certificate is None:
        s.problem(
            "certificate",
            "an SSL server needs a certificate: set certificate and private_key here "
            "or in [gateway]",
        )
        return
    where = "" if own else " (gateway.certificate, the default)"
    try:
        certs = x509.load_pem_x509_certificates(certificate.read_bytes())
    except ValueError:
        s.problem("certificate", f"{str(certificate)!r}{where} is not a PEM X.509 certificate")
        return
    leaf = certs[0]
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        s.problem(
            "certificate",
            f"{describe(leaf)!r}{where} has no serverAuth extended key usage; the OpenVPN "
            "client's `remote-cert-tls server` refuses it",
        )
    try:
        usage: x509.KeyUsage | None = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None:
        s.problem(
            "certificate",
            f"{describe(leaf)!r}{where} has no keyUsage extension; the OpenVPN client's "
            "`remote-cert-tls server` requires one (digitalSignature, keyEncipherment)",
        )
    elif not usage.digital_signature:
        s.problem(
            "certificate",
            f"{describe(leaf)!r}{where} has keyUsage without digitalSignature; the TLS "
            "handshake signs with the server's key, so clients would refuse it",
        )
    if key is None:
        return
    private = _private_key(s, key)
    if private is None:
        return
    try:
        LocalCredentials(leaf, tuple(certs[1:]), private)
    except CredentialError:
        s.problem("private_key", "does not match the public key of the server's certificate")


def _ikev2_server_credentials(
    s: _Section,
    certificate: Path | None,
    key: Path | None,
    address: str,
    warnings: list[Problem],
) -> None:
    """An IKEv2 server signs with its certificate (RFC 7296 §2.15). A certificate the
    built-in clients refuse loads (strongSwan clients may still accept it), but each
    reason a Windows, macOS, iOS or Android client would fail at connect is warned
    about here, naming what is missing."""
    if certificate is None or key is None:
        s.problem(
            "certificate",
            "an IKEv2 server needs a certificate: set certificate and private_key in "
            "[gateway] (or here)",
        )
        return
    try:
        certs = x509.load_pem_x509_certificates(certificate.read_bytes())
    except ValueError:
        s.problem("certificate", f"{str(certificate)!r} is not a PEM X.509 certificate")
        return
    private = _private_key(s, key)
    if private is None:
        return
    try:
        LocalCredentials(certs[0], tuple(certs[1:]), private)
    except CredentialError:
        s.problem("private_key", "does not match the public key of the server's certificate")
        return
    for reason in ikev2_certificate_problems(certs[0], address):
        warnings.append(Problem(f"{s.path}.certificate", f"{describe(certs[0])!r}: {reason}"))


def ikev2_certificate_problems(cert: x509.Certificate, address: str) -> list[str]:
    """Why the built-in IKEv2 clients would refuse `cert` as the certificate of a
    server they reach as `address` (an IP address or a DNS name); [] if none would."""
    out: list[str] = []
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        out.append(
            "no serverAuth extended key usage: Windows and macOS/iOS clients refuse it "
            "(add extendedKeyUsage = serverAuth)"
        )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns_names, ips = [], []
    try:
        dialled: str | None = str(ipaddress.ip_address(address))
    except ValueError:
        dialled = None
    if dialled is None:
        name = address.lower().rstrip(".")
        if name not in dns_names:
            out.append(
                f"no subjectAltName dNSName {name!r}, the name clients dial (address): "
                "Windows, macOS/iOS and strongSwan check the server's name against it"
            )
    else:
        if dialled not in ips:
            out.append(
                f"no subjectAltName IP address {dialled}, the address clients dial "
                "(address): clients check the server's name against it"
            )
        if dialled not in dns_names:
            out.append(
                f"{dialled} is not repeated as a subjectAltName dNSName: Windows fails "
                "with error 13801 unless the dialled IP address is also a dNSName"
            )
    public = cert.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        out.append(
            f"an {type(public).__name__.removesuffix('PublicKey')} key: Windows and iOS "
            "accept only RSA and ECDSA server certificates"
        )
    elif isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
        out.append(f"an RSA key of {public.key_size} bits: iOS and Windows need 2048 or more")
    elif isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name not in (
        "secp256r1",
        "secp384r1",
    ):
        out.append(f"an ECDSA key on {public.curve.name}: Windows and iOS accept P-256 and P-384")
    return out


def _group(
    name: str, data: Mapping[str, Any], path: str, problems: list[Problem]
) -> GroupConfig | None:
    s = _Section(data, path, problems)
    before = len(problems)
    destinations = s.items("destinations", _subnet)
    s.finish()
    if destinations is not None:
        if len(destinations) > MAX_GROUP_DESTINATIONS:
            s.problem(
                "destinations",
                f"lists {len(destinations)} prefixes; a group has at most {MAX_GROUP_DESTINATIONS}",
            )
        if len(set(destinations)) != len(destinations):
            s.problem("destinations", "lists a prefix twice")
    if len(problems) > before or destinations is None:
        return None
    return GroupConfig(name=name, destinations=destinations)


def _remote_access(
    name: str,
    data: Mapping[str, Any],
    gateway: GatewayConfig | None,
    problems: list[Problem],
    warnings: list[Problem],
) -> RemoteAccessConfig | None:
    s = _Section(data, f"remote_access.{name}", problems)
    before = len(problems)
    protocol: RemoteAccessProtocol = s.value("protocol", _choice("ssl", "ikev2"), "ssl")
    ikev2 = protocol == "ikev2"
    for key in _SSL_ONLY if ikev2 else _IKEV2_ONLY:
        if s.has(key):
            other = "ssl" if ikev2 else "ikev2"
            s.problem(key, f'only for protocol = "{other}" servers')
    dns_domains: tuple[str, ...] | None = ()
    if data.get("dns_domains") != []:
        dns_domains = s.items("dns_domains", _dns_domain, ())
    s.seen.add("dns_domains")
    ike_proposals = s.items(
        "ike_proposals", _proposal(ike_proposal_problem), DEFAULT_RA_IKE_PROPOSALS
    )
    esp_proposals = s.items(
        "esp_proposals", _proposal(esp_proposal_problem), DEFAULT_RA_ESP_PROPOSALS
    )
    transport: Transport = s.value("transport", _choice("tcp", "udp"), "tcp")
    port = s.value("port", _integer(1, 65535), _SSL_PORTS[transport])
    ciphers = s.items("ciphers", _ssl_cipher, DEFAULT_SSL_CIPHERS)
    pool = s.required("client_pool", _network(4))
    pool6 = s.optional("client_pool6", _network(6))
    local_subnets = s.items("local_subnets", _subnet)
    dns: tuple[IpAddress, ...] | None = ()
    if data.get("dns") != []:  # an empty list: no DNS servers, like no key
        dns = s.items("dns", _address, ())
    s.seen.add("dns")
    auth: ClientAuth = s.value("auth", _choice("password", "certificate", "any"), "password")
    client_ca = s.optional("client_ca", _client_cas)
    users = s.optional("users", _path)
    address = s.optional("address", _dial_address)
    max_connections = s.optional("max_connections", _integer(1, MAX_REMOTE_ACCESS_CLIENTS))
    if not s.has("max_connections"):
        max_connections = MAX_REMOTE_ACCESS_CLIENTS
    # None: a bad value (recorded), against which no pool is measured.
    per_user = s.value(
        "connections_per_user", _integer(1, MAX_CONNECTIONS_PER_USER), MAX_CONNECTIONS_PER_USER
    )
    certificate = s.optional("certificate", _readable_file)
    private_key = s.optional("private_key", _private_file)
    tls_crypt_key = s.optional("tls_crypt_key", _tls_crypt_key)
    client_to_client = s.value("client_to_client", _boolean, False)
    groups: dict[str, GroupConfig] = {}
    s.seen.add("groups")
    for group_name, body in _named_tables(data, "groups", problems, prefix=s.path).items():
        parsed = _group(group_name, body, f"{s.path}.groups.{group_name}", problems)
        if parsed is not None:
            groups[group_name] = parsed
    s.finish()

    if ciphers is not None:
        for i, cipher in enumerate(ciphers):
            if cipher in ciphers[:i]:
                s.problem(f"ciphers[{i}]", f"lists {cipher} twice")
    if local_subnets is not None:
        if len(local_subnets) > MAX_LOCAL_SUBNETS:
            s.problem(
                "local_subnets",
                f"lists {len(local_subnets)} subnets; a server pushes at most {MAX_LOCAL_SUBNETS}",
            )
        if len(set(local_subnets)) != len(local_subnets):
            s.problem("local_subnets", "lists a subnet twice")
    if dns is not None and len(dns) > MAX_DNS_SERVERS:
        s.problem("dns", f"lists {len(dns)} servers; at most {MAX_DNS_SERVERS} are pushed")
    if auth == "any" and not ikev2:
        s.problem("auth", '"any" is only for ikev2 servers; use "password" or "certificate"')
    if (auth == "certificate" or (auth == "any" and ikev2)) and not s.has("client_ca"):
        s.problem("client_ca", f'required with auth = "{auth}" (the CAs of the clients)')
    if auth == "any" and ikev2 and not s.has("users"):
        s.problem("users", 'required with auth = "any" (the file `lockgate user` writes)')
    if dns_domains is not None and len(dns_domains) > MAX_DNS_DOMAINS:
        s.problem("dns_domains", f"lists {len(dns_domains)} domains; at most {MAX_DNS_DOMAINS}")
    if auth == "password" and s.has("client_ca"):
        s.problem("client_ca", 'only used with auth = "certificate"')
    if auth == "password" and not s.has("users"):
        s.problem("users", 'required with auth = "password" (the file `lockgate user` writes)')
    if s.has("certificate") != s.has("private_key"):
        missing = "private_key" if s.has("certificate") else "certificate"
        s.problem(missing, "certificate and private_key must be set together")
    for key, net in (("client_pool", pool), ("client_pool6", pool6)):
        if net is None:
            continue
        reason = _pool_room(net, max_connections or 1)
        if reason is not None:
            s.problem(key, reason)
        for subnet in local_subnets or ():
            if subnet.version == net.version and subnet.overlaps(net):
                s.problem(key, f"{net} overlaps local_subnets {subnet}")
    unreadable = (s.has("certificate") and certificate is None) or (
        s.has("private_key") and private_key is None
    )
    if (
        ikev2
        and gateway is not None
        and not unreadable
        and s.has("certificate") == s.has("private_key")
    ):
        _ikev2_server_credentials(
            s,
            certificate if s.has("certificate") else gateway.certificate,
            private_key if s.has("private_key") else gateway.private_key,
            address if address is not None else str(gateway.addresses[0]),
            warnings,
        )
    elif gateway is not None and not unreadable and s.has("certificate") == s.has("private_key"):
        _server_credentials(
            s,
            gateway,
            certificate if s.has("certificate") else gateway.certificate,
            private_key if s.has("private_key") else gateway.private_key,
        )
    if users is not None and users.exists():
        try:
            load_users(users)
        except ConfigError as exc:
            s.problem("users", "; ".join(str(p) for p in exc.problems) or str(exc))
    if (
        len(problems) > before
        or gateway is None
        or pool is None
        or local_subnets is None
        or ciphers is None
        or dns is None
        or max_connections is None
        or dns_domains is None
        or ike_proposals is None
        or esp_proposals is None
    ):
        return None
    for group in groups.values():
        for dest in group.destinations:
            if not any(_within(dest, net) for net in local_subnets):
                warnings.append(
                    Problem(
                        f"{s.path}.groups.{group.name}.destinations",
                        f"{dest} is outside local_subnets: clients get no route to it",
                    )
                )
    return RemoteAccessConfig(
        name=name,
        protocol=protocol,
        client_pool=pool,
        local_subnets=local_subnets,
        users=users,
        address=address if address is not None else str(gateway.addresses[0]),
        transport=transport,
        port=port,
        ciphers=ciphers,
        client_pool6=pool6,
        dns=dns,
        auth=auth,
        client_ca=client_ca,
        max_connections=max_connections,
        connections_per_user=per_user,
        certificate=certificate if certificate is not None else gateway.certificate,
        private_key=private_key if private_key is not None else gateway.private_key,
        tls_crypt_key=tls_crypt_key,
        client_to_client=client_to_client,
        groups=types.MappingProxyType(groups),
        dns_domains=dns_domains,
        ike_proposals=ike_proposals,
        esp_proposals=esp_proposals,
    )


def workers_problems(
    workers: int,
    servers: Mapping[str, RemoteAccessConfig],
    connections: Mapping[str, ConnectionConfig],
) -> list[Problem]:
    """More than one data-plane worker serves the gateway's TUN and policy-based
    connections only: a route-mode connection's TUN and the ikev2 server's clients are
    still forwarded by the main process alone, so they are refused rather than half
    served. A reload checks the file against the running daemon's count (a
    `[gateway]` change needs a restart)."""
    if workers == 1:
        return []
    route = [f'connections.{c.name} has mode = "route"' for c in connections.values()
             if c.mode == "route"]  # fmt: skip
    ikev2 = [f"remote_access.{r.name}" for r in servers.values() if r.protocol == "ikev2"]
    return [
        Problem(
            "gateway.workers",
            f"{workers} workers do not serve {what} yet ({first[0]}); use workers = 1",
        )
        for what, first in (("route-mode connections", route), ("ikev2 remote access", ikev2))
        if first
    ]


def _check_remote_access(
    gateway: GatewayConfig | None,
    servers: Mapping[str, RemoteAccessConfig],
    connections: Mapping[str, ConnectionConfig],
    problems: list[Problem],
    peers: Mapping[str, PeerConfig | None] | None = None,
) -> None:
    """Rules between servers, and between servers and the rest of the file: the
    gateway's client limit, one listener per transport and port, and pools that no
    other subnet claims (a packet to a client address must route to that client)."""
    listed = list(servers.values())
    total = sum(server.max_connections for server in listed)
    if total > MAX_REMOTE_ACCESS_CLIENTS:
        parts = " + ".join(str(server.max_connections) for server in listed)
        problems.append(
            Problem(
                f"remote_access.{listed[-1].name}.max_connections",
                f"the servers' max_connections add up to {total} ({parts}); a gateway "
                f"serves at most {MAX_REMOTE_ACCESS_CLIENTS} clients",
            )
        )
    ikev2 = [server for server in listed if server.protocol == "ikev2"]
    for server in ikev2[1:]:
        # Clients are told apart only after IKE_AUTH (Windows names no server in IDr).
        problems.append(
            Problem(
                f"remote_access.{server.name}.protocol",
                f"a gateway runs one ikev2 server; remote_access.{ikev2[0].name} is one",
            )
        )
    for server in ikev2:
        # The IKE connection and its CHILD SAs carry the server's name.
        for kind, names in (("peers", peers or {}), ("connections", connections)):
            if server.name in names:
                problems.append(
                    Problem(
                        f"remote_access.{server.name}",
                        f"an ikev2 server's name must differ from {kind}.{server.name}'s "
                        "(logs and status name both)",
                    )
                )
    for i, server in enumerate(listed):
        path = f"remote_access.{server.name}"
        if server.protocol == "ikev2":
            listed_ssl = []
        else:
            listed_ssl = [o for o in listed[:i] if o.protocol == "ssl"]
        for other in listed_ssl:
            if (other.transport, other.port) == (server.transport, server.port):
                problems.append(
                    Problem(
                        f"{path}.port",
                        f"{server.transport} port {server.port} is taken by "
                        f"remote_access.{other.name} (both listen on gateway.addresses)",
                    )
                )
        if gateway is not None and server.protocol == "ssl" and server.transport == "udp":
            for key in ("ike_port", "nat_port"):
                if getattr(gateway, key) == server.port:
                    problems.append(
                        Problem(f"{path}.port", f"udp port {server.port} is gateway.{key}")
                    )
        for key in ("client_pool", "client_pool6"):
            pool = getattr(server, key)
            if pool is None:
                continue
            for other in listed[:i]:
                theirs = other.client_pool if pool.version == 4 else other.client_pool6
                if theirs is not None and pool.overlaps(theirs):
                    problems.append(
                        Problem(
                            f"{path}.{key}",
                            f"{pool} overlaps remote_access.{other.name}'s pool {theirs}",
                        )
                    )
            for conn in connections.values():
                for side in ("local_subnets", "remote_subnets"):
                    for subnet in getattr(conn, side):
                        # A route-mode 0.0.0.0/0 claims nothing (routing decides).
                        if conn.mode == "route" and not subnet.prefixlen:
                            continue
                        if subnet.version == pool.version and subnet.overlaps(pool):
                            problems.append(
                                Problem(
                                    f"{path}.{key}",
                                    f"{pool} overlaps connections.{conn.name}.{side} {subnet}",
                                )
                            )


def _listen(raw: Any) -> tuple[IpAddress, int]:
    """ "198.51.100.2:8443" or "[2001:db8::2]:8443": an address and a port, both needed
    (`[metrics]` and `[console]`)."""
    text = _string(raw).strip()
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise _Bad(f'{text!r} needs ADDRESS:PORT (e.g. "198.51.100.2:8443")')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise _Bad(f'{text!r}: put an IPv6 address in brackets (e.g. "[2001:db8::2]:8443")')
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise _Bad(f"{host!r} is not an IP address") from None
    number = int(port)
    if not 1 <= number <= 65535:
        raise _Bad(f"port {number} is out of range (1-65535)")
    return address, number


def _console(data: Mapping[str, Any], problems: list[Problem]) -> ConsoleConfig | None:
    """`[console]`: where the web console listens, its admins file and its TLS pair."""
    s = _Section(data, "console", problems)
    before = len(problems)
    listen = s.required("listen", _listen)
    admins = s.required("admins", _path)
    certificate = s.optional("certificate", _readable_file)
    private_key = s.optional("private_key", _private_file)
    s.finish()
    if s.has("certificate") != s.has("private_key"):
        missing = "private_key" if s.has("certificate") else "certificate"
        s.problem(missing, "certificate and private_key must be set together")
    if admins is not None:
        try:
            # The admins file has the users file's format (names and scrypt hashes); a
            # missing one is allowed (no admin yet), a malformed or readable one is not.
            load_users(admins)
        except ConfigError as exc:
            s.problem("admins", "; ".join(str(p) for p in exc.problems) or str(exc))
    if certificate is not None and private_key is not None:
        key = _private_key(s, private_key)
        try:
            cert = x509.load_pem_x509_certificate(certificate.read_bytes())
        except ValueError:
            s.problem("certificate", f"{str(certificate)!r} is not a PEM X.509 certificate")
        else:
            if key is not None and cert.public_key() != key.public_key():
                s.problem("private_key", "does not match the public key of console.certificate")
    if len(problems) > before or listen is None or admins is None:
        return None
    return ConsoleConfig(
        host=listen[0],
        port=listen[1],
        admins=admins,
        certificate=certificate,
        private_key=private_key,
    )


def _metrics(data: Mapping[str, Any], problems: list[Problem]) -> MetricsConfig | None:
    s = _Section(data, "metrics", problems)
    listen = s.required("listen", _listen)
    s.finish()
    return MetricsConfig(str(listen[0]), listen[1]) if listen is not None else None


def parse_config(data: Mapping[str, Any], *, source: Path | None = None) -> Config:
    """Validate an already parsed TOML document; raise ConfigError listing every mistake."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    top = _Section(data, "", problems)
    top.seen.update({"gateway", "peers", "connections", "remote_access", "metrics", "console"})
    top.finish()
    gateway = None
    if "gateway" not in data:
        problems.append(Problem("gateway", "required section [gateway] is missing"))
    elif (table := _table(data["gateway"], "gateway", problems)) is not None:
        gateway = _gateway(table, problems)
    peers = {
        name: _peer(name, body, gateway, problems)
        for name, body in _named_tables(data, "peers", problems).items()
    }
    connections: dict[str, ConnectionConfig] = {}
    for name, body in _named_tables(data, "connections", problems).items():
        conn = _connection(name, body, peers, problems, warnings)
        if conn is not None:
            connections[name] = conn
    _default_dpd_actions(connections, peers)
    _check_shared_ike(connections, problems)
    _check_overlaps(connections, problems)
    _check_route_mode(gateway, connections, problems)
    _warn_partial_overlaps(connections, warnings)
    if gateway is not None:
        _check_own_identities(gateway, peers, problems)
    servers: dict[str, RemoteAccessConfig] = {}
    for name, body in _named_tables(data, "remote_access", problems).items():
        server = _remote_access(name, body, gateway, problems, warnings)
        if server is not None:
            servers[name] = server
    _check_remote_access(gateway, servers, connections, problems, peers)
    if gateway is not None:
        problems += workers_problems(gateway.workers, servers, connections)
    metrics = None
    if "metrics" in data and (table := _table(data["metrics"], "metrics", problems)) is not None:
        metrics = _metrics(table, problems)
    console = None
    if "console" in data and (table := _table(data["console"], "console", problems)) is not None:
        console = _console(table, problems)
    # Site-to-site, point-to-cloud or both; a file with neither does nothing.
    if not problems and not connections and "remote_access" not in data:
        problems.append(Problem("connections", "no connection is configured"))
    if problems or gateway is None:
        raise ConfigError(problems, str(source) if source is not None else None)
    return Config(
        gateway=gateway,
        peers=types.MappingProxyType({n: p for n, p in peers.items() if p is not None}),
        connections=types.MappingProxyType(connections),
        source=source,
        remote_access=types.MappingProxyType(servers),
        console=console,
        warnings=tuple(warnings),
        metrics=metrics,
    )


def load_config(path: str | os.PathLike[str], *, tables: TomlTables | None = None) -> Config:
    """Read and validate a configuration file; raise ConfigError naming every mistake.

    With `tables` (a daemon's, kept across reloads) the TOML tables whose text did not
    change since the last load are not parsed again; the result is the same."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read: {exc.strerror}")], str(file)) from exc
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text) if tables is None else tables.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("", "not UTF-8 text")], str(file)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("", f"invalid TOML: {exc}")], str(file)) from exc
    return parse_config(data, source=file)


def loads_config(text: str) -> Config:
    """Validate configuration text (tests, `check-config -`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("", f"invalid TOML: {exc}")]) from exc
    return parse_config(data)
