"""Per-resource CHILD SAs (RFC 9611): which worker a CHILD SA goes to, and the notify.

The data plane runs `resources` workers and steers inbound ESP by its SPI: the worker
of a CHILD SA is its inbound SPI modulo `resources`. So the SPI we choose is the
choice of worker (its *index*):

- a rekey keeps the index of the SA it replaces, so it stays in the same worker;
- the first CHILD SA of a configuration under an IKE SA takes a random index, so
  peers that stay at one SA spread over the workers;
- any other CHILD SA takes the lowest index that no CHILD SA of the same
  configuration under this IKE SA uses.

With more than one resource every exchange that creates (not rekeys) a CHILD SA
carries SA_RESOURCE_INFO; when both sides sent it, the SA is one of a per-resource
group, and the side that asked for the first asks for more with the same selectors
until each index has one or the peer answers TS_MAX_QUEUE (a TEMPORARY_FAILURE asks
again a little later, RFC 7296 §2.25). With one resource nothing
here changes what goes on the wire, and SPIs are drawn exactly as before.
"""

from __future__ import annotations

from ikev2.codec import Message, Notify
from ikev2.config import ChildConfig
from ikev2.constants import NotifyType
from ikev2.sa_types import ChildSa
from ikev2.tasks.base import TaskSa
from ikev2.ts import TrafficSelector

_SPI_MAX = 0xFFFFFFFF
_SPI_RESERVED = 255
"""ESP SPIs 1..255 are reserved by IANA and 0 means none (RFC 4303 §2.1)."""


def used_indexes(
    sa: TaskSa,
    config: ChildConfig,
    selectors: tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]] | None = None,
) -> set[int]:
    """The indexes the live CHILD SAs of `config` under this IKE SA use (only those with
    exactly these (local, remote) selectors, if given). A rekey's old and new SA share
    one index, so this counts resources, not SAs."""
    n = sa.resources
    return {
        child.spi_in % n
        for child in sa.children.values()
        if child.config.name == config.name
        and not child.deleting
        and (selectors is None or (child.local_ts, child.remote_ts) == selectors)
    }


def resource_index(sa: TaskSa, config: ChildConfig, old: ChildSa | None = None) -> int:
    """The worker index for a new inbound SPI: `old`'s for its rekey, a random one for
    the first CHILD SA of `config`, else the lowest one its CHILD SAs leave free (0
    when all are taken)."""
    n = sa.resources
    if old is not None:
        return old.spi_in % n
    used = used_indexes(sa, config)
    if not used:
        # The first SA of a configuration: a random index, so the connections of
        # peers that stay at one SA (no SA_RESOURCE_INFO) spread over the workers
        # instead of all landing on worker 0.
        return int.from_bytes(sa.rng.token_bytes(4), "big") % n
    return next((i for i in range(n) if i not in used), 0)


def inbound_spi(sa: TaskSa, config: ChildConfig, old: ChildSa | None = None) -> bytes:
    """Our inbound ESP SPI for a CHILD SA of `config` (rekeying `old`, if given).

    One resource: random, as always. Several: random among the SPIs whose remainder
    modulo `resources` is the index (`resource_index`), never 0 or reserved and none
    a CHILD SA of the endpoint has (nor one under this IKE SA not yet reported).
    """
    n = sa.resources
    if n <= 1:
        return sa.random_spi(4)
    index = resource_index(sa, config, old)
    taken = {child.spi_in for child in sa.children.values()}
    while True:
        value = int.from_bytes(sa.rng.token_bytes(4), "big")
        value += index - value % n
        if value > _SPI_MAX:
            value -= n
        if value > _SPI_RESERVED and value not in taken and value not in sa.spis_in_use:
            return value.to_bytes(4, "big")


def resource_notify(sa: TaskSa) -> list[Notify]:
    """SA_RESOURCE_INFO for a request or response that creates a CHILD SA, when we have
    more than one resource (RFC 9611). Its Resource Identifier is optional and only
    informative; we send none."""
    if sa.resources <= 1:
        return []
    return [Notify(NotifyType.SA_RESOURCE_INFO, b"")]


def peer_per_resource(sa: TaskSa, message: Message) -> bool:
    """Both sides do per-resource CHILD SAs for the SA `message` creates: we have more
    than one resource (so we send SA_RESOURCE_INFO) and the peer's message has it."""
    return sa.resources > 1 and message.notify(NotifyType.SA_RESOURCE_INFO) is not None


__all__ = [
    "inbound_spi",
    "peer_per_resource",
    "resource_index",
    "resource_notify",
    "used_indexes",
]
