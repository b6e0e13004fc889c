"""systemd integration without a dependency: sd_notify(3) and journald-friendly logs.

`Type=notify` services tell systemd they are ready (READY=1), what they are doing
(STATUS=...), that they are alive (WATCHDOG=1) and that they are stopping
(STOPPING=1) by sending datagrams to the Unix socket named in $NOTIFY_SOCKET (a path,
or an abstract name when it starts with "@"). Outside systemd the variable is unset
and every call here does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET, if systemd gave one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # An abstract socket name starts with "@", which stands for a NUL byte.
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_interval = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return bool(self._address)

    @property
    def watchdog_interval(self) -> float | None:
        """How often to send WATCHDOG=1 (half of WatchdogSec), or None if not asked."""
        return None if self._watchdog_interval is None else self._watchdog_interval / 2

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines, e.g. ``notify(READY=1, STATUS="2 tunnels up")``."""
        if not self._address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc.strerror)
            return False
        return True


# syslog priorities (RFC 5424 §6.2.1) for the "<N>" prefix journald understands.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """ "<priority>logger: message", without a timestamp: journald adds its own and
    reads the priority from the prefix (systemd.exec(5), SyslogLevelPrefix)."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # Every line of a multi-line message (a traceback) keeps the priority.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    """True when stderr goes to the journal (systemd sets these for services)."""
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def setup_logging(level: str = "info", environ: Mapping[str, str] | None = None) -> None:
    """Log to stderr: journald style under systemd, with timestamps otherwise."""
    handler = logging.StreamHandler(sys.stderr)
    if under_systemd(environ):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # pyroute2 is chatty at debug level and says nothing an operator needs.
    logging.getLogger("pyroute2").setLevel(max(root.level, logging.WARNING))
