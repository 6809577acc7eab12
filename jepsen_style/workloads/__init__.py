"""The workloads a Jepsen-style run drives against Spine, by name.

Each class takes the run context, runs one client process per ``client(process, stop)`` call,
does its after-healing reads in ``final()``, and judges the recorded history in ``check()``
(``{"valid": True | False | "unknown", ...}``):

- ``register``: a few keys at ``strong``, checked for per-key linearizability;
- ``set``: unique adds at the run's level (``session``), lost / unexpected / visibility lag;
- ``session``: read-your-writes and monotonic reads for clients carrying their token;
- ``convergence``: after healing, anti-entropy roots agree and search shows exactly the live set;
- ``cas-register``: strong reads and writes, ``If-Match`` compare-and-set and ``If-None-Match``
  creates on a few keys, checked for per-key linearizability (the cas-register model);
- ``lock``: leases with fencing tokens: holders do fenced writes, sometimes after their lease ran
  out; interleaved holders, stale tokens applied and overlapping grants are anomalies;
- ``feed``: writers put and delete a few keys while one consumer follows the change feed, moved
  to another node on each fault; lost, phantom, out-of-order and mis-flagged changes.
"""

from jepsen_style.workloads.cas_register import CasRegister
from jepsen_style.workloads.convergence import Convergence
from jepsen_style.workloads.feed import Feed
from jepsen_style.workloads.lock import Lock
from jepsen_style.workloads.register import Register
from jepsen_style.workloads.session import SessionWorkload
from jepsen_style.workloads.set import SetWorkload

WORKLOADS: dict[str, type] = {
    "register": Register,
    "set": SetWorkload,
    "session": SessionWorkload,
    "convergence": Convergence,
    "cas-register": CasRegister,
    "lock": Lock,
    "feed": Feed,
}

__all__ = [
    "WORKLOADS",
    "CasRegister",
    "Convergence",
    "Feed",
    "Lock",
    "Register",
    "SessionWorkload",
    "SetWorkload",
]
