"""strongSwan as the test suite's peer: `testkit.strongswan` and `testkit.pki`,
plus `logs_on_failure`, which prints charon's logs into a failing test's output.

Both live in the unshipped `testkit` so the benchmarks can run charon too; test
modules keep importing its names from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from testkit.pki import KEY_TYPES, Credential, Pki
from testkit.strongswan import (
    CHARON,
    DEFAULT_LOG_LEVELS,
    PLUGINS,
    Charon,
    ChildSaInfo,
    IkeSaInfo,
    SwanChild,
    SwanConnection,
    SwanSecret,
    Vici,
    install_credentials,
    render_strongswan_conf,
    render_swanctl,
)

__all__ = [
    "CHARON",
    "DEFAULT_LOG_LEVELS",
    "KEY_TYPES",
    "PLUGINS",
    "Charon",
    "ChildSaInfo",
    "Credential",
    "IkeSaInfo",
    "Pki",
    "SwanChild",
    "SwanConnection",
    "SwanSecret",
    "Vici",
    "install_credentials",
    "logs_on_failure",
    "render_strongswan_conf",
    "render_swanctl",
]


@contextlib.contextmanager
def logs_on_failure(*charons: Charon) -> Iterator[None]:
    """Print every charon's log if the body fails (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        for charon in charons:
            print(charon.logs())  # test output: pytest shows it with the failure
        raise
