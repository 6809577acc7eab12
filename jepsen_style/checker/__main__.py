"""``python -m jepsen_style.checker FILE``: print the verdict; exit 0, 1 or 2.

FILE is a Jepsen etcd log, or (``*.jsonl``) one event dict a line as :func:`ops_from_events`
takes them. Exit status: 0 linearizable, 1 not-linearizable, 2 unknown (budget exhausted);
a failing key's explanation goes to stderr. A malformed history exits 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jepsen_style.checker.history import HistoryError, Op, ops_from_events
from jepsen_style.checker.jepsen_log import parse
from jepsen_style.checker.linearizability import Verdict, check

EXIT = {Verdict.LINEARIZABLE: 0, Verdict.NOT_LINEARIZABLE: 1, Verdict.UNKNOWN: 2}


def load(path: Path) -> list[Op]:
    """The Ops of a history file, by its suffix."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return ops_from_events(json.loads(line) for line in text.splitlines() if line.strip())
    return parse(text)


def main(argv: list[str] | None = None) -> int:
    """Check one history file; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jepsen_style.checker", description=__doc__)
    parser.add_argument("file", type=Path, help="a Jepsen etcd .log or a .jsonl event history")
    parser.add_argument("--budget", type=int, default=1_000_000, help="search steps per key")
    args = parser.parse_args(argv)
    try:
        ops = load(args.file)
    except (OSError, HistoryError, json.JSONDecodeError) as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 3
    result = check(ops, budget=args.budget)
    print(result.verdict.value)
    for key_result in result.keys.values():
        if key_result.verdict is not Verdict.LINEARIZABLE:
            print(key_result.message, file=sys.stderr)
            for op in key_result.explanation:
                print(f"  {op.describe()}", file=sys.stderr)
    return EXIT[result.verdict]


if __name__ == "__main__":
    sys.exit(main())
