"""The shape of a task: one concern of an exchange (after strongSwan's `task_t`).

An exchange runs a list of tasks. The side that sends the request calls
`build_request` on each, then `process_response` with the answer; the other side
calls `process_request`, then `build_response`. Each task adds its own payloads and
reads its own; the IKE SA (`ikev2.sa`) owns Message IDs, encryption and sending.

A task sees the IKE SA through `TaskSa`: what it may read, the few fields of
IKE_SA_INIT that it fills in, and the named steps by which it changes the SA. Tasks
never import `ikev2.sa`, which imports them.

A task signals failure by raising an `ikev2.errors.IkeError` whose `notify` is what
the peer must be told (RFC 7296 §2.21).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Self

from ikev2.codec import Message, Payload
from ikev2.config import ConnectionConfig, IpInterface
from ikev2.constants import ExchangeType
from ikev2.crypto.dh import KeyExchange
from ikev2.crypto.keys import IkeKeys
from ikev2.crypto.registry import IkeSuite
from ikev2.crypto.rng import RandomSource
from ikev2.events import Address, Event
from ikev2.identity import Identity
from ikev2.sa_types import ChildSa, Intermediate, PeerIkeRekey, ResourceRetry
from ikev2.task_manager import TaskManager


class RetryExchange(Exception):
    """The response asks for the same request again, changed (INVALID_KE_PAYLOAD, COOKIE).

    RFC 7296 §1.2, §2.6: IKE_SA_INIT is then sent anew with Message ID 0.
    """


class Task:
    """One concern of an exchange; the defaults add and read nothing."""

    name: ClassVar[str] = "task"

    def build_request(self, sa: TaskSa, out: list[Payload]) -> None:
        """Add this task's payloads to our request."""

    def process_response(self, sa: TaskSa, message: Message) -> None:
        """Read this task's part of the peer's response."""

    def process_request(self, sa: TaskSa, message: Message) -> None:
        """Read this task's part of the peer's request."""

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        """Add this task's payloads to our response."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


@dataclass
class Exchange:
    """An exchange we initiate: its type and the tasks that build and read it."""

    exchange_type: ExchangeType
    """Exchange type of the request."""
    tasks: list[Task]
    """Tasks in the order they add payloads."""
    one_shot: bool = False
    """Sent once without waiting for an answer (a last notify before the SA goes)."""


class FollowupResponder(Protocol):
    """The responder's task of a CREATE_CHILD_SA whose additional key exchanges run in
    IKE_FOLLOWUP_KE exchanges (RFC 9370 §2.2.4): it finishes what it began once the
    last one is answered (``ikev2.tasks.followup_ke``)."""

    def followup_done(self, sa: TaskSa, additional: tuple[bytes, ...]) -> None:
        """The last additional key exchange gave its secret: make the SA, before the
        response goes out; ``additional`` is SK(1) ... SK(n)."""

    def build_response(self, sa: TaskSa, out: list[Payload]) -> None:
        """Add what the last IKE_FOLLOWUP_KE response needs, and act once it is built."""

    def followup_abandoned(self, sa: TaskSa) -> None:
        """The series ended before its last exchange (an error, or the peer went quiet)."""


@dataclass(slots=True, repr=False)
class FollowupAnswer:
    """Responder: a CREATE_CHILD_SA answered with N(ADDITIONAL_KEY_EXCHANGE), waiting
    for its next IKE_FOLLOWUP_KE (RFC 9370 §2.2.4). Kept under the link we sent."""

    owner: FollowupResponder
    """The task that answered the CREATE_CHILD_SA, and creates the SA at the end."""
    rounds: list[tuple[int, int]]
    """(transform type, method) of the additional key exchanges still to run."""
    expires_at: float
    """When it is forgotten if the next request has not come (§2.2.4: 5-20 s)."""
    lowest_nonce: bytes
    """The lower nonce of the CREATE_CHILD_SA: a crossing rekey's tie-break (§2.8)."""
    rekeys: ChildSa | None = None
    """The CHILD SA the exchange rekeys, if it does."""
    ike_rekey: bool = False
    """The exchange rekeys the IKE SA."""
    secrets: list[bytes] = field(default_factory=list)
    """SK(1), SK(2), ... of the rounds done."""

    def __repr__(self) -> str:
        return f"FollowupAnswer(rounds={self.rounds!r})"  # never the secrets


class TaskSa(Protocol):
    """The IKE SA as its tasks see it (`ikev2.sa.IkeSa` is the one implementation).

    Read-only unless listed under "filled in by IKE_SA_INIT"; every other change is a
    named method, so this list is also the list of what a task may change.
    """

    # --- filled in by IKE_SA_INIT (ikev2.tasks.ike_init) ---------------------------------
    ke: KeyExchange | None
    nonce_i: bytes
    nonce_r: bytes
    cookie: bytes
    fragmentation: bool
    peer_hashes: tuple[int, ...] | None
    ppk_offered: bool
    partial_csum: bool

    # --- read -------------------------------------------------------------------------
    @property
    def name(self) -> str: ...
    @property
    def config(self) -> ConnectionConfig: ...
    @property
    def candidates(self) -> tuple[ConnectionConfig, ...]: ...
    @property
    def initiator(self) -> bool: ...
    @property
    def now(self) -> float: ...
    @property
    def rng(self) -> RandomSource: ...
    @property
    def wall_clock(self) -> Callable[[], float]: ...
    @property
    def ike_sa_id(self) -> int: ...
    @property
    def local(self) -> Address: ...
    @property
    def remote(self) -> Address: ...
    @property
    def init_local(self) -> Address: ...
    @property
    def init_remote(self) -> Address: ...
    @property
    def last_path(self) -> tuple[Address, Address]: ...
    @property
    def mobike(self) -> bool: ...
    @property
    def spi_i(self) -> bytes: ...
    @property
    def spi_r(self) -> bytes: ...
    @property
    def suite(self) -> IkeSuite | None: ...
    @property
    def keys(self) -> IkeKeys | None: ...
    @property
    def intermediate(self) -> Intermediate | None: ...
    @property
    def int_auth(self) -> bytes: ...
    @property
    def quantum_safe(self) -> bool: ...
    @property
    def init_request(self) -> bytes: ...
    @property
    def init_response(self) -> bytes: ...
    @property
    def nat_local(self) -> bool: ...
    @property
    def nat_remote(self) -> bool: ...
    @property
    def peer_prefers_udp(self) -> bool: ...
    @property
    def encap_forced(self) -> bool: ...
    @property
    def offers_udp_vid(self) -> bool: ...
    @property
    def offers_partial_csum(self) -> bool: ...
    @property
    def udp_encap(self) -> bool: ...
    @property
    def udp_encap_reason(self) -> str: ...
    @property
    def send_initial_contact(self) -> bool: ...
    @property
    def ppk_used(self) -> bool: ...
    @property
    def peer_id(self) -> Identity | None: ...
    @property
    def ike_authenticated(self) -> bool: ...
    @property
    def eap_identity(self) -> str: ...
    @property
    def virtual_ips(self) -> tuple[IpInterface, ...] | None: ...
    @property
    def children(self) -> dict[int, ChildSa]: ...
    @property
    def followups(self) -> dict[bytes, FollowupAnswer]: ...
    @property
    def tm(self) -> TaskManager[Exchange]: ...
    @property
    def peer_ike_rekey(self) -> PeerIkeRekey[Self] | None: ...
    @property
    def rekeyed_into(self) -> Self | None: ...
    @property
    def ike_rekeying(self) -> bool: ...
    @property
    def resources(self) -> int: ...
    @property
    def spis_in_use(self) -> set[int]: ...

    def outstanding_tasks(self) -> set[str]: ...
    def deleted_by_peer_already(self, spi_out: int) -> bool: ...

    # --- make -------------------------------------------------------------------------
    def random_spi(self, size: int) -> bytes: ...
    def new_key_exchange(self, group: int) -> KeyExchange: ...
    def next_child_id(self) -> int: ...

    # --- change -----------------------------------------------------------------------
    def emit(self, event: Event) -> None: ...
    def adopt_keys(self, suite: IkeSuite, keys: IkeKeys) -> None: ...
    def start_intermediate(self, rounds: list[tuple[int, int]]) -> None: ...
    def use_ppk(self, keys: IkeKeys) -> None: ...
    def record_nat(self, *, nat_local: bool, nat_remote: bool, peer_prefers_udp: bool) -> None: ...
    def float_to_nat_port(self) -> None: ...
    def enable_mobike(self) -> None: ...
    def update_addresses(self, nat: tuple[bool, bool] | None) -> bool: ...
    def use_connection(self, config: ConnectionConfig) -> None: ...
    def established(
        self, now: float, peer_id: Identity, *, initial_contact: bool = False
    ) -> None: ...
    def mark_initial_child_failed(self) -> None: ...
    def continue_auth(self) -> None: ...
    def record_eap_identity(self, identity: str) -> None: ...
    def assign_virtual_ips(self, addresses: tuple[IpInterface, ...]) -> None: ...
    def delete_child(self, unique_id: int, now: float, reason: str = ...) -> None: ...
    def remove_child(self, child: ChildSa, reason: str) -> None: ...
    def peer_deleted_before_known(self, spi_out: int) -> None: ...
    def request_resource_sa(self, like: ChildSa) -> None: ...
    def retry_resource_sa(self, retry: ResourceRetry) -> None: ...
    def gone(self, reason: str, *, by_peer: bool) -> None: ...

    # --- IKE rekey (ikev2.tasks.ike_rekey; the handover is ikev2.ike_handover) ----------
    def spawn_rekeyed(
        self,
        *,
        initiator: bool,
        spi_i: bytes,
        spi_r: bytes,
        suite: IkeSuite,
        keys: IkeKeys,
        nonce_i: bytes,
        nonce_r: bytes,
    ) -> Self: ...
    def hand_over(self, new: Self) -> None: ...
    def ike_rekeyed(self, new: Self, lowest_nonce: bytes) -> None: ...
    def crossing_ike_rekey(self, new: Self, lowest_nonce: bytes) -> None: ...
    def ike_rekey_failed(self) -> bool: ...
    def retry_ike_rekey_at(self, when: float) -> None: ...


def retry_delay(sa: TaskSa, base: float) -> float:
    """How long to wait before trying a failed exchange again: `base` times a random
    0.5-1.5. RFC 7296 §2.25: never at once, and randomised, so that two peers whose
    requests crossed do not cross again."""
    return base * (0.5 + int.from_bytes(sa.rng.token_bytes(2), "big") / 65536.0)
