"""The tasks of IKEv2 exchanges, one module per concern (after strongSwan's
`libcharon/sa/ikev2/tasks/`): ike_init, ike_intermediate (RFC 9370's additional key
exchanges), ike_natd, ike_auth (PSK, certificates and EAP), ike_config (virtual
addresses), ike_mobike (MOBIKE as responder, RFC 4555),
child_create (IKE_AUTH's CHILD SA), child_rekey (CREATE_CHILD_SA: more CHILD SAs and
their rekeys), followup_ke (RFC 9370's additional key exchanges of a CREATE_CHILD_SA,
IKE_FOLLOWUP_KE), ike_rekey, ike_delete, child_delete and informational. Liveness checks
are empty INFORMATIONAL requests queued by the IKE SA itself; COOKIEs are handled by the
endpoint before an SA exists."""

from ikev2.tasks.base import Exchange, RetryExchange, Task, TaskSa
from ikev2.tasks.child_create import ChildCreate
from ikev2.tasks.child_delete import ChildDelete
from ikev2.tasks.child_rekey import AnswerCreateChild, CreateChild
from ikev2.tasks.followup_ke import AnswerFollowupKe
from ikev2.tasks.ike_auth import IkeAuth
from ikev2.tasks.ike_config import IkeConfig
from ikev2.tasks.ike_delete import IkeDelete
from ikev2.tasks.ike_init import IkeInit
from ikev2.tasks.ike_intermediate import AnswerIntermediate, IkeIntermediate, RefuseEarlyAuth
from ikev2.tasks.ike_mobike import IkeMobike, UpdateSaAddresses
from ikev2.tasks.ike_natd import IkeNatd
from ikev2.tasks.ike_rekey import CHILD_TASKS, AnswerIkeRekey, IkeRekey
from ikev2.tasks.informational import Informational, NotifyOnly, RefuseCreateChild

__all__ = [
    "CHILD_TASKS",
    "AnswerCreateChild",
    "AnswerFollowupKe",
    "AnswerIkeRekey",
    "AnswerIntermediate",
    "ChildCreate",
    "ChildDelete",
    "CreateChild",
    "Exchange",
    "IkeAuth",
    "IkeConfig",
    "IkeDelete",
    "IkeInit",
    "IkeIntermediate",
    "IkeMobike",
    "IkeNatd",
    "IkeRekey",
    "Informational",
    "NotifyOnly",
    "RefuseCreateChild",
    "RefuseEarlyAuth",
    "RetryExchange",
    "Task",
    "TaskSa",
    "UpdateSaAddresses",
]
