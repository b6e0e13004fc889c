"""Tests, demos, benchmarks, examples and docs use documentation addresses only.

The traffic of a test or a demo stays between the namespaces it creates, and the
addresses it writes are the ones reserved for documentation: 192.0.2.0/24,
198.51.100.0/24 and 203.0.113.0/24 (RFC 5737) and 2001:db8::/32 (RFC 3849), client
pools and tunnel inside addresses included. A private or public address in a test
would reach a real network the moment a route leaks; in a doc it invites a reader to
copy it. This guard reads every tracked text file under the scanned paths and names
file:line of each IPv4 or IPv6 literal outside those ranges and the short list below.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("tests", "testkit", "bench", "daemon", "conf", "README.md", "ARCHITECTURE.md")

DOCUMENTATION = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)

# What may appear besides documentation addresses, and why:
ALLOWED_ADDRESSES = {
    ipaddress.ip_address("0.0.0.0"): "IPv4 'any': a wildcard bind, `vips = 0.0.0.0`",
    ipaddress.ip_address("::"): "IPv6 'any': a wildcard bind",
    ipaddress.ip_address("::1"): "IPv6 loopback: never leaves the host",
}
ALLOWED_NETWORKS = {
    ipaddress.ip_network("0.0.0.0/0"): "every IPv4 address: a traffic selector, a route",
    ipaddress.ip_network("::/0"): "every IPv6 address: a traffic selector, a route",
}
ALLOWED_RANGES = {
    ipaddress.ip_network("127.0.0.0/8"): "IPv4 loopback: never leaves the host",
    ipaddress.ip_network("255.0.0.0/8"): "netmasks (255.255.255.0) and the limited broadcast",
}

IPV4 = re.compile(r"(?<![\w.])(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?(?!\w|\.\d)")
IPV6 = re.compile(
    r"(?<![\w:.])([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3})"
    r"(?:/(\d{1,3}))?(?![\w:])"
)
# A placeholder of a format string (`f"2001:db8:{side}::{i:x}"`) reads as 0, so that
# templates are checked too; braces holding quotes are dicts and inline tables, kept.
PLACEHOLDER = re.compile(r"\{[^{}\"'\n]*\}")
# Lookalikes that are no addresses: an RFC section (`RFC 4301 §4.4.2.1`) and a Python
# slice (`parts[1::3]`).
SECTION = re.compile(r"§\s*$")
SLICE = re.compile(r"-?\d*::-?\d*")


def scanned_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", *SCANNED],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.decode()
        names = [name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        # Not a git checkout (an unpacked source tree): every file under the paths.
        names = [
            str(path.relative_to(REPO))
            for top in SCANNED
            for path in ([REPO / top] if (REPO / top).is_file() else (REPO / top).rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts
        ]
    return [REPO / name for name in sorted(names)]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (a pcap, a fuzz corpus entry)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def allowed(literal: str, prefix: str | None) -> bool:
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        return True  # not an address at all (a time of day, a MAC address)
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped  # ::ffff:192.0.2.1 is 192.0.2.1
    network = None
    if prefix is not None and mapped is None:
        try:
            network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        except ValueError:
            network = None
    if network is not None:
        return network in ALLOWED_NETWORKS or any(
            network.version == outer.version and network.subnet_of(outer)  # type: ignore[arg-type]
            for outer in (*DOCUMENTATION, *ALLOWED_RANGES)
        )
    return address in ALLOWED_ADDRESSES or any(
        address in outer for outer in (*DOCUMENTATION, *ALLOWED_RANGES)
    )


def offenders(path: Path, text: str) -> Iterator[str]:
    name = path.relative_to(REPO)
    for number, raw in enumerate(text.splitlines(), 1):
        line = PLACEHOLDER.sub("0", raw)
        for match in IPV4.finditer(line):
            if SECTION.search(line, 0, match.start()):
                continue
            if not allowed(match[1], match[2]):
                yield f"{name}:{number}: {match[0]}"
        for match in IPV6.finditer(line):
            if SLICE.fullmatch(match[0]) and line[match.start() - 1 : match.start()] == "[":
                continue
            if not allowed(match[1], match[2]):
                yield f"{name}:{number}: {match[0]}"


def test_only_documentation_addresses_are_used() -> None:
    files = scanned_files()
    assert any(path.name == "README.md" for path in files), files
    found = [
        offence
        for path in files
        # This file's own self-test lines hold the addresses it must refuse.
        if path != Path(__file__).resolve() and (text := text_of(path)) is not None
        for offence in offenders(path, text)
    ]
    assert found == [], (
        "addresses outside 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and "
        "2001:db8::/32 (tests, demos and docs use documentation addresses only):\n"
        + "\n".join(found)
    )


def test_the_guard_sees_what_it_must() -> None:
    """The scanner on lines it must refuse and lines it must accept."""

    def flagged(line: str) -> list[str]:
        return [o.split(": ", 1)[1] for o in offenders(REPO / "x.py", line)]

    assert flagged('client_pool = "10.8.0.0/24"  # 10.8.0.1, 172.16.0.1, 192.168.1.1') == [
        "10.8.0.0/24",
        "10.8.0.1",
        "172.16.0.1",
        "192.168.1.1",
    ]
    assert flagged('remote = "198.18.0.0/15"; dns = "8.8.8.8"') == ["198.18.0.0/15", "8.8.8.8"]
    assert flagged('f"10.{i}.0.0/24", f"2001:db9:{i:x}::1"') == ["10.0.0.0/24", "2001:db9:0::1"]
    assert flagged('"fd00::1", "2001:db8::/31", "::ffff:10.0.0.1", "fe80::1"') == [
        "10.0.0.1",
        "fd00::1",
        "2001:db8::/31",
        "::ffff:10.0.0.1",
        "fe80::1",
    ]
    assert flagged('"192.0.2.0/24", "198.51.100.7", "203.0.113.0/25", "2001:db8:a::/64"') == []
    assert flagged('"0.0.0.0/0", "::/0", "0.0.0.0", "::", "::1", "127.0.0.1/8"') == []
    assert flagged('"ifconfig 192.0.2.2 255.255.255.0", "255.255.255.255"') == []
    assert flagged("RFC 4301 §4.4.2.1, RFC 1812 § 4.3.2.8; parts[0::3], x[1::3]") == []
    assert flagged('"[2001:db8::1]:500", "::ffff:192.0.2.1", "12:34:56"') == []
    assert flagged('f"2001:db8:{side}::{i + 1:x}/128", f"203.0.113.{8 * i}/29"') == []
