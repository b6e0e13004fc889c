"""Deleting a CHILD SA with an INFORMATIONAL exchange (RFC 7296 §1.4.1).

The request lists our inbound ESP SPI; the peer answers with its inbound SPI of the
pair, and both ends remove both ESP SAs. The responder's side is in `informational`.
"""

from __future__ import annotations

from ikev2.codec import Delete, Message, Payload
from ikev2.constants import ProtocolId
from ikev2.sa_types import ChildSa
from ikev2.tasks.base import Task, TaskSa


class ChildDelete(Task):
    """Sends Delete(ESP, our inbound SPI) and removes the CHILD SA once answered."""

    name = "child_delete"

    def __init__(self, child: ChildSa, reason: str) -> None:
        self.child = child
        self.reason = reason

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        out.append(Delete(ProtocolId.ESP, (self.child.spi_in.to_bytes(4, "big"),)))

    def process_response(self, sa: TaskSa, message: Message) -> None:
        # The answer normally names the peer's SPI of the pair; with crossing deletes it
        # may not (§1.4.1). Either way the pair is gone now.
        sa.remove_child(self.child, self.reason)
