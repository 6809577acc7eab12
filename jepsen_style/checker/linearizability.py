"""Linearizability of a register history: Wing & Gong's search with Lowe's memoization.

Wing & Gong, "Testing and verifying concurrent objects" (1993); Lowe, "Testing for
linearizability" (2017); the loop follows Porcupine's ``checkSingle`` (anishathalye/porcupine,
``checker.go``). Keys are independent registers, so each key is checked on its own
(Herlihy & Wing's locality; Porcupine's P-compositionality).

The history is a doubly linked list of call and return entries in time order. The search walks it
from the front: at a call it tries to linearize that operation now (the register model must accept
it, and the pair (set of linearized ops, register value) must be new, else that subtree was already
explored); at a return it has run out of candidates for the operation returning there, so it
undoes the most recent choice. It succeeds once every operation with a known outcome is linearized.

Intervals are closed: at equal times calls sort before returns, so an operation invoked at the
instant another returns counts as concurrent with it. An operation of unknown outcome has no return
entry (its return is at +infinity): it may be linearized at any point after its call, or never.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from jepsen_style.checker.history import Op

#: How many candidate operations a failure explanation lists beside the blocking one.
_MAX_EXPLAINED = 8


class Verdict(StrEnum):
    """The answer for a history or a key; ``UNKNOWN`` means the search budget ran out."""

    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not-linearizable"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key.

    For ``NOT_LINEARIZABLE``, ``explanation`` holds the operations involved at the deepest point
    the search reached: the operation that set the register's value there (if any), the operation
    that could not be linearized (``blocked``), and the other unlinearized operations that were
    candidates before it returned; ``message`` says the same in words.
    """

    key: str
    verdict: Verdict
    ops: int
    steps: int
    message: str = ""
    blocked: Op | None = None
    explanation: tuple[Op, ...] = ()


@dataclass(frozen=True, slots=True)
class Result:
    """The verdict for a whole history and the per-key details it was derived from."""

    verdict: Verdict
    keys: Mapping[str, KeyResult] = field(default_factory=dict)

    @property
    def failing_keys(self) -> list[str]:
        """Keys whose history is definitely not linearizable, sorted."""
        return sorted(k for k, r in self.keys.items() if r.verdict is Verdict.NOT_LINEARIZABLE)

    @property
    def unknown_keys(self) -> list[str]:
        """Keys whose search ran out of budget, sorted."""
        return sorted(k for k, r in self.keys.items() if r.verdict is Verdict.UNKNOWN)


def step(op: Op, state: Hashable) -> tuple[bool, Hashable]:
    """The register model: can ``op`` take effect on a register holding ``state``, and the result.

    A read must see the value; a write always applies; an ok cas needs FROM and installs TO; a
    failed cas needs anything but FROM and changes nothing; an unknown cas swaps if FROM is held.
    """
    if op.f == "read":
        return op.value == state, state
    if op.f == "write":
        return True, op.value
    assert isinstance(op.value, tuple)
    old, new = op.value
    if op.outcome == "ok":
        return state == old, new
    if op.outcome == "fail":
        return state != old, state
    return True, new if state == old else state


def check(ops: Sequence[Op], budget: int = 1_000_000) -> Result:
    """Check a history of register operations on any number of keys, each key on its own.

    ``budget`` caps the search steps per key; a key that exceeds it is ``UNKNOWN``. The history is
    ``NOT_LINEARIZABLE`` if any key is, else ``UNKNOWN`` if any key is, else ``LINEARIZABLE``.
    """
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    keys = {key: check_key(key, key_ops, budget) for key, key_ops in sorted(by_key.items())}
    verdicts = {r.verdict for r in keys.values()}
    if Verdict.NOT_LINEARIZABLE in verdicts:
        verdict = Verdict.NOT_LINEARIZABLE
    elif Verdict.UNKNOWN in verdicts:
        verdict = Verdict.UNKNOWN
    else:
        verdict = Verdict.LINEARIZABLE
    return Result(verdict, keys)


def check_key(key: str, ops: Sequence[Op], budget: int = 1_000_000) -> KeyResult:
    """Wing–Gong–Lowe search over the operations of one key (all of them must be on ``key``)."""
    if any(op.key != key for op in ops):
        raise ValueError(f"check_key({key!r}) given an op on another key")
    n = len(ops)
    # Entry 2i is op i's call, 2i+1 its return (absent for an unknown outcome); 2n is the head.
    order = sorted(
        [(op.invoke_t, 0, 2 * i) for i, op in enumerate(ops)]
        + [(op.return_t, 1, 2 * i + 1) for i, op in enumerate(ops) if op.return_t is not None]
    )
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    last = head
    for _, _, e in order:
        nxt[last], prv[e] = e, last
        last = e
    known = [op.return_t is not None for op in ops]
    required = sum(known)

    state: Hashable = None
    linearized = 0  # bit i set: op i is linearized
    done = 0  # linearized ops with a known outcome
    # Lowe's memo: every (linearized set, register value) entered. An unknown op is optional, so
    # a configuration with it linearized is dominated by the same one without it (every
    # continuation of the former is one of the latter): skip it if that one was entered.
    cache: set[tuple[int, Hashable]] = {(0, None)}
    unknown_mask = sum(1 << i for i in range(n) if not known[i])
    stack: list[tuple[int, Hashable]] = []  # (op linearized, register value before it)
    deepest: tuple[int, int, Hashable, tuple[int, ...]] = (-1, -1, None, ())
    steps = 0
    entry = nxt[head]
    while done < required:
        steps += 1
        if steps > budget:
            return KeyResult(key, Verdict.UNKNOWN, n, budget,
                             message=f"search budget of {budget} steps exhausted")
        if entry & 1 == 0:  # a call: try to linearize op i here
            i = entry >> 1
            ok, new_state = step(ops[i], state)
            if ok:
                bits = linearized | (1 << i)
                memo = (bits, new_state)
                fresh = memo not in cache
                u = bits & unknown_mask
                while fresh and u:
                    low = u & -u
                    u ^= low
                    if (bits ^ low, new_state) in cache:
                        fresh = False
                if fresh:
                    cache.add(memo)
                    stack.append((i, state))
                    state, linearized = new_state, bits
                    done += known[i]
                    # lift: unlink the call and its return entry
                    p, q = prv[entry], nxt[entry]
                    nxt[p] = q
                    if q != -1:
                        prv[q] = p
                    if known[i]:
                        r = entry + 1
                        p, q = prv[r], nxt[r]
                        nxt[p] = q
                        if q != -1:
                            prv[q] = p
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:
            # A return: op entry>>1 has no place after this prefix, so undo the last choice.
            # (Never the list's end: an unlinearized known op's return entry lies ahead.)
            if len(stack) > deepest[0]:
                deepest = (len(stack), entry >> 1, state, tuple(i for i, _ in stack))
            if not stack:
                break
            i, state = stack.pop()
            linearized &= ~(1 << i)
            done -= known[i]
            c = 2 * i
            # unlift: relink the return entry, then the call (the reverse of lift)
            if known[i]:
                r = c + 1
                nxt[prv[r]] = r
                if nxt[r] != -1:
                    prv[nxt[r]] = r
            nxt[prv[c]] = c
            if nxt[c] != -1:
                prv[nxt[c]] = c
            entry = nxt[c]
    else:
        return KeyResult(key, Verdict.LINEARIZABLE, n, steps)
    return _explain(key, ops, steps, deepest)


def _explain(
    key: str, ops: Sequence[Op], steps: int, deepest: tuple[int, int, Hashable, tuple[int, ...]]
) -> KeyResult:
    """A failing KeyResult naming the op that blocked the deepest partial linearization."""
    depth, b, state, prefix = deepest
    blocked = ops[b]
    setter: Op | None = None  # the op in the prefix that last changed the register
    value: Hashable = None
    for i in prefix:
        _, after = step(ops[i], value)
        if ops[i].f == "write" or (ops[i].f == "cas" and ops[i].outcome != "fail"
                                   and after != value):
            setter = ops[i]
        value = after
    in_prefix = set(prefix)
    assert blocked.return_t is not None
    rivals = [op for i, op in enumerate(ops)
              if i not in in_prefix and i != b and op.invoke_t <= blocked.return_t]
    rivals.sort(key=lambda op: op.invoke_t)
    involved = ([setter] if setter is not None else []) + [blocked] + rivals[:_MAX_EXPLAINED]
    message = (f"key {key!r}: after the {depth} ops that could be linearized first, the register "
               f"holds {state!r} and {blocked.describe()} cannot take effect")
    if setter is not None:
        message += f" (value set by {setter.describe()})"
    return KeyResult(key, Verdict.NOT_LINEARIZABLE, len(ops), steps, message=message,
                     blocked=blocked, explanation=tuple(involved))
