"""The Security Association Database: which inbound SA an ESP packet belongs to.

An inbound ESP packet names its SA by the 32-bit SPI we chose (RFC 4303 §2.1,
RFC 4301 §4.4.2); the SAD maps it to the SA that decrypts it. Old and new SAs of a
rekey sit side by side until the old one is deleted, so no packet in flight is lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class SpiInUse(ValueError):
    """An inbound SA was installed with an SPI another installed SA already has."""


@dataclass
class Sad(Generic[T]):
    """Inbound SAs by SPI."""

    _by_spi: dict[int, T] = field(default_factory=dict)

    def add(self, spi: int, sa: T) -> None:
        """Install ``sa`` under ``spi``; an SPI is never shared (RFC 4301 §4.1)."""
        if not 0 < spi <= 0xFFFFFFFF:
            raise ValueError(f"SPI {spi:#x} is outside 1..2**32-1")
        if spi in self._by_spi:
            raise SpiInUse(f"SPI {spi:#010x} is already installed")
        self._by_spi[spi] = sa

    def remove(self, spi: int) -> T | None:
        """Remove and return the SA under ``spi`` (``None`` if absent)."""
        return self._by_spi.pop(spi, None)

    def lookup(self, spi: int) -> T | None:
        """The SA with ``spi``, or ``None``."""
        return self._by_spi.get(spi)

    def __contains__(self, spi: object) -> bool:
        return spi in self._by_spi

    def __iter__(self) -> Iterator[tuple[int, T]]:
        return iter(list(self._by_spi.items()))

    def __len__(self) -> int:
        return len(self._by_spi)
