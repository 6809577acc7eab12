"""The workloads a Jepsen-style run drives against Spine, by name.

Each class takes the run context, runs one client process per ``client(process, stop)`` call,
does its after-healing reads in ``final()``, and judges the recorded history in ``check()``
(``{"valid": True | False | "unknown", ...}``):

- ``register``: a few keys at ``strong``, checked for per-key linearizability;
- ``set``: unique adds at the run's level (``session``), lost / unexpected / visibility lag;
- ``session``: read-your-writes and monotonic reads for clients carrying their token;
- ``convergence``: after healing, anti-entropy roots agree and search shows exactly the live set.
"""

from jepsen_style.workloads.convergence import Convergence
from jepsen_style.workloads.register import Register
from jepsen_style.workloads.session import SessionWorkload
from jepsen_style.workloads.set import SetWorkload

WORKLOADS: dict[str, type] = {
    "register": Register,
    "set": SetWorkload,
    "session": SessionWorkload,
    "convergence": Convergence,
}

__all__ = ["WORKLOADS", "Convergence", "Register", "SessionWorkload", "SetWorkload"]
