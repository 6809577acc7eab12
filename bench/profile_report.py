#!/usr/bin/env python3
"""Summarise py-spy collapsed stacks (`py-spy record --format raw`): top functions by self and
by inclusive share of the samples.

    python bench/profile_report.py FILE.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    """'func (path/to/spine/x/y.py:12)' -> 'func (spine/x/y.py)'."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    f = m.group("file")
    for marker in ("/spine/", "site-packages/", "/lib/python3"):
        i = f.find(marker)
        if i >= 0:
            f = f[i + 1:] if marker == "/spine/" else f[i + len(marker):].lstrip("/")
            break
    return f"{m.group('func')} ({f})"


def summarise(path: Path, top: int = 15) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [short(f) for f in stack.split(";")]
        # the first frame is the thread ("process 123:"/"thread (0x..)") for some py-spy versions
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl_c[f] += count
    pct = (lambda c: [(f, 100.0 * n / total) for f, n in c.most_common(top)]) if total else (lambda c: [])
    return total, pct(self_c), pct(incl_c)


def report(path: Path, top: int = 15) -> str:
    total, self_top, incl_top = summarise(path, top)
    out = [f"## {path.name}: {total} samples"]
    out.append("  self%   function")
    out += [f"  {p:5.1f}   {f}" for f, p in self_top]
    out.append("  incl%   function")
    # skip the trivial outer frames (event loop, run_node, main) that are ~100%
    out += [f"  {p:5.1f}   {f}" for f, p in incl_top]
    return "\n".join(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    for f in a.files:
        print(report(Path(f), a.top))
        print()
    sys.exit(0)
