"""Mutation testing of spine/core and the data-path services with mutmut, outside `make test`.

    .venv/bin/python bench/mutation.py                      # the default modules, 1 worker
    .venv/bin/python bench/mutation.py quorum abd coordinator
    .venv/bin/python bench/mutation.py --report             # print the last figures, run nothing

What is mutated and which tests run per mutant is `[tool.mutmut]` in pyproject.toml: the unit and
property tests that reach the mutated function, then four whole-cluster simulation seeds; no
process-level integration tests. mutmut writes its mutants and results under `mutants/` of the
directory it runs in, so this script runs it in a copy of the work tree (`runs/mutation/`,
ignored by git): the shared tree stays clean, edits made to it while a run is going do not leak
into the run, and a second run resumes: it tests only the mutants without a verdict yet
(--rerun tests them all again).

The table counts, per module: killed (a test failed), timeout (the tests ran past mutmut's
limit, a kill too), survived, no tests (no selected test reaches the function: a survivor) and
other (mutmut's "suspicious", a segfault, ...), not run (yet), and the score: (killed + timeout)
over the mutants run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKDIR = ROOT / "runs" / "mutation"

SERVICES = ["coordinator", "strong_reads", "replication", "rebalance", "ringkeeper", "handoff",
            "fanout", "antientropy"]
# The pure decision halves first (the order they run in), then the services.
DEFAULT = ["quorum", "abd", "routing", "ring_change", "session", "ringmap", *SERVICES]

# mutmut's exit codes (mutmut.stats.status_by_exit_code), folded into the table's columns.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          37: "killed"}


def module_path(name: str) -> str:
    """`quorum` -> spine/core/quorum.py, `coordinator` -> spine/cluster/coordinator.py."""
    if "/" in name:
        return name
    return f"spine/cluster/{name}.py" if name in SERVICES else f"spine/core/{name}.py"


def sync_tree() -> None:
    """Copy the work tree's files (tracked and untracked, not ignored) into WORKDIR, touching
    only the files whose bytes differ, and delete the ones that are gone."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    files = {f for f in out.decode().split("\0") if f and (ROOT / f).is_file()}
    WORKDIR.mkdir(parents=True, exist_ok=True)
    for rel in files:
        src, dst = ROOT / rel, WORKDIR / rel
        if dst.is_file() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    for top in ("spine", "tests"):
        for path in (WORKDIR / top).rglob("*.py"):
            if str(path.relative_to(WORKDIR)) not in files:
                path.unlink()


def run_mutmut(modules: list[str], workers: int, rerun: bool) -> int:
    """Run the modules' mutants. mutmut tests every mutant it is given by name again, so unless
    `rerun`, name only the ones without a verdict yet (an interrupted run resumes; a function
    that changed since gets new, unverdicted mutants); a first run names whole modules."""
    names = [] if rerun else [k for m in modules for k, code in codes(module_path(m)).items()
                              if code is None]
    if not names:
        names = [module_path(m)[:-3].replace("/", ".") + ".*" for m in modules]
        if not rerun and all(codes(module_path(m)) for m in modules):
            return 0  # every mutant has its verdict
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(mutmut), "run", "--max-children", str(workers), *names],
                          cwd=WORKDIR, env=env, check=False).returncode


def codes(path: str) -> dict[str, int | None]:
    """mutmut's exit code per mutant of one module (None: not run yet); {} before a first run."""
    meta = WORKDIR / "mutants" / f"{path}.meta"
    if not meta.is_file():
        return {}
    result: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return result


def verdicts(path: str) -> Counter[str]:
    return Counter(STATUS.get(code, "other") if code is not None else "not run"
                   for code in codes(path).values())


def report(modules: list[str]) -> None:
    cols = ["killed", "timeout", "survived", "no tests", "other", "not run"]
    print(f"{'module':34} " + " ".join(f"{c:>9}" for c in cols) + f" {'total':>6} {'score':>6}")
    groups: dict[str, Counter[str]] = {"spine/core": Counter(), "spine/cluster": Counter()}
    for m in modules:
        path = module_path(m)
        c = verdicts(path)
        if not c:
            print(f"{path:34} (not run)")
            continue
        groups["spine/core" if path.startswith("spine/core") else "spine/cluster"].update(c)
        print(line(path, c, cols))
    for name, c in groups.items():
        if c:
            print(line(f"all of {name} above", c, cols))


def line(label: str, c: Counter[str], cols: list[str]) -> str:
    run = sum(v for k, v in c.items() if k != "not run")
    score = f"{100 * (c['killed'] + c['timeout']) / run:5.1f}%" if run else "    -"
    return f"{label:34} " + " ".join(f"{c[k]:>9}" for k in cols) + f" {sum(c.values()):>6} {score:>6}"


def survivors(modules: list[str]) -> None:
    for m in modules:
        for key, code in sorted(codes(module_path(m)).items()):
            if code is not None and STATUS.get(code) in ("survived", "no tests"):
                print(f"{STATUS[code]:9} {key}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", help="module names (quorum, coordinator, ...) "
                    "or paths; default: the core decision halves and the data-path services")
    ap.add_argument("--workers", type=int, default=1, help="mutants tested at once (default 1)")
    ap.add_argument("--report", action="store_true", help="print the last figures, run nothing")
    ap.add_argument("--no-sync", action="store_true", help="test the copy in runs/mutation as it "
                    "is, without bringing in the work tree's changes (resume on the same snapshot)")
    ap.add_argument("--rerun", action="store_true", help="test every mutant of the modules "
                    "again (default: only those without a verdict, so a stopped run resumes)")
    ap.add_argument("--survivors", action="store_true", help="also list surviving mutants "
                    "(inspect one with `cd runs/mutation && mutmut show NAME`)")
    args = ap.parse_args()
    modules = args.modules or DEFAULT
    rc = 0
    if not args.report:
        if not args.no_sync:
            sync_tree()
        rc = run_mutmut(modules, args.workers, args.rerun)
    report(modules)
    if args.survivors:
        survivors(modules)
    return rc


if __name__ == "__main__":
    sys.exit(main())
