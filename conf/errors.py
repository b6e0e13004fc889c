"""Configuration errors that name the offending key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ikev2.config import ConfigError as IkeConfigError


@dataclass(frozen=True)
class Problem:
    """One mistake in a configuration file."""

    path: str
    """Key path, e.g. ``connections.dc1-net.esp_proposals[0]`` (empty: the whole file)."""
    reason: str
    """What is wrong, in words an operator can act on."""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ConfigError(IkeConfigError):
    """The configuration cannot be used. `problems` lists every mistake found.

    A subclass of `ikev2.config.ConfigError`, so callers may catch either.
    """

    def __init__(self, problems: Sequence[Problem], source: str | None = None) -> None:
        self.problems = tuple(problems)
        self.source = source
        lines = [str(p) for p in self.problems]
        prefix = f"{source}: " if source else ""
        if len(lines) == 1:
            message = prefix + lines[0]
        else:
            message = f"{prefix}{len(lines)} problems:\n" + "\n".join(f"  {x}" for x in lines)
        super().__init__(message)
