"""The last lines of the daemon's log, kept in memory for the console's log page.

A handler on the root logger while the console runs: it sees what the daemon's own
handler sees (the same levels), and keeps LOG_LINES of it. Nothing secret is logged
anywhere in the daemon, so nothing secret is kept here.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

LOG_LINES = 2000
"""Lines kept."""
SHOWN = 300
"""Lines a page shows at most (the newest)."""


@dataclass(frozen=True)
class LogLine:
    created: float
    level: str
    source: str
    message: str

    def row(self) -> list[str | dict[str, Any]]:
        """Time, level, source and message: a row of the log page's table."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created))
        return [stamp, self.level, self.source, self.message]


class LogBuffer(logging.Handler):
    """The newest LOG_LINES records, formatted once."""

    def __init__(self, size: int = LOG_LINES) -> None:
        super().__init__()
        self.lines: deque[LogLine] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        self.lines.append(LogLine(record.created, record.levelname, record.name, message))

    def select(self, connection: str | None = None, limit: int = SHOWN) -> list[LogLine]:
        """The newest `limit` lines, only those naming `connection` if given (as a
        whole word: "site" does not match "site2")."""
        if not connection:
            return list(self.lines)[-limit:]
        word = re.compile(rf"(?<![\w.-]){re.escape(connection)}(?![\w.-])")
        return [line for line in self.lines if word.search(line.message)][-limit:]
