"""Test-suite wide rules.

Namespace (`netns`) and strongSwan (`interop`) tests need root and a few system
tools. On a developer's machine without them they skip, saying what is missing.
In CI (`CI` set to a true value) a missing requirement fails the test instead: a
skipped interop test there would hide a broken product.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testkit.strongswan import CHARON, SWANCTL, host_path, swan_root

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

_NETNS_TOOLS = ("ip", "ping")


def _netns_missing() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root privileges")
    missing += [f"the '{tool}' command" for tool in _NETNS_TOOLS if shutil.which(tool) is None]
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun")
    return missing


def _interop_missing() -> list[str]:
    missing = _netns_missing()
    if swan_root() is None and shutil.which("swanctl") is None:
        missing.append("the 'swanctl' command")
    elif swan_root() is not None and not host_path(SWANCTL).exists():
        missing.append(f"{host_path(SWANCTL)} (Debian package strongswan-swanctl)")
    if not host_path(CHARON).exists():
        missing.append(f"{host_path(CHARON)} (Debian package strongswan-charon)")
    return missing


def pytest_runtest_setup(item: pytest.Item) -> None:
    missing: list[str] = []
    if item.get_closest_marker("interop") is not None:
        missing = _interop_missing()
    elif item.get_closest_marker("netns") is not None:
        missing = _netns_missing()
    if not missing:
        return
    reason = "needs " + ", ".join(missing) + " (run `make test` as root)"
    if IN_CI:
        pytest.fail("CI must run this test but it " + reason, pytrace=False)
    pytest.skip(reason)
