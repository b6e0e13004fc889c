"""Deleting the IKE SA with an INFORMATIONAL exchange (RFC 7296 §1.4.1).

The request carries Delete(IKE); whatever the answer, the IKE SA and all its CHILD
SAs are gone afterwards. The responder's side is in `informational`.
"""

from __future__ import annotations

from ikev2.codec import Delete, Message, Payload
from ikev2.constants import ProtocolId
from ikev2.tasks.base import Task, TaskSa


class IkeDelete(Task):
    """Sends Delete(IKE) and removes the IKE SA once the peer answered."""

    name = "ike_delete"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        out.append(Delete(ProtocolId.IKE))

    def process_response(self, sa: TaskSa, message: Message) -> None:
        sa.gone(self.reason, by_peer=False)
