"""The shape of a task: one concern of an exchange (after strongSwan's `task_t`).

An exchange runs a list of tasks. The side that sends the request calls
`build_request` on each, then `process_response` with the answer; the other side
calls `process_request`, then `build_response`. Each task adds its own payloads and
reads its own; the IKE SA (`ikev2.sa`) owns Message IDs, encryption and sending.

A task signals failure by raising an `ikev2.errors.IkeError` whose `notify` is what
the peer must be told (RFC 7296 §2.21).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ikev2.codec import Message, Payload

if TYPE_CHECKING:
    from ikev2.sa import IkeSa


class RetryExchange(Exception):
    """The response asks for the same request again, changed (INVALID_KE_PAYLOAD, COOKIE).

    RFC 7296 §1.2, §2.6: IKE_SA_INIT is then sent anew with Message ID 0.
    """


class Task:
    """One concern of an exchange; the defaults add and read nothing."""

    name: ClassVar[str] = "task"

    def build_request(self, sa: IkeSa, out: list[Payload]) -> None:
        """Add this task's payloads to our request."""

    def process_response(self, sa: IkeSa, message: Message) -> None:
        """Read this task's part of the peer's response."""

    def process_request(self, sa: IkeSa, message: Message) -> None:
        """Read this task's part of the peer's request."""

    def build_response(self, sa: IkeSa, out: list[Payload]) -> None:
        """Add this task's payloads to our response."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
