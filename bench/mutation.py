"""Mutation testing of spine/core and the data-path services with mutmut, outside `make test`.

    .venv/bin/python bench/mutation.py                      # the default modules, 1 worker
    .venv/bin/python bench/mutation.py quorum abd coordinator
    .venv/bin/python bench/mutation.py --report             # print the last figures, run nothing
    .venv/bin/python bench/mutation.py --sample 0.1 handoff fanout   # a seeded tenth of each

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

--sample F tests a seeded random fraction F of each module's mutants (at least one), drawn
independently per module from the mutant names mutmut generates (`--sample-seed S`, default 0:
the same F and S give the same sample for the same source). Its table counts only the sampled
mutants, and adds the 95% Wilson interval of each module's true score (the fraction of all its
mutants the tests kill), and of the pooled score of the modules of spine/core and spine/cluster.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKDIR = ROOT / "runs" / "mutation"

SERVICES = ["coordinator", "reads", "strong_reads", "replication", "rebalance", "ringkeeper",
            "handoff", "fanout", "antientropy"]
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


def sync_tree(head: bool = False) -> None:
    """Copy the work tree's files (tracked and untracked, not ignored) into WORKDIR, touching
    only the files whose bytes differ, and delete the ones that are gone. With `head`, the files
    as committed at HEAD instead (leaves out edits others have under way in the work tree)."""
    if head:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            copy_files(Path(tmp), {str(f.relative_to(tmp)) for f in Path(tmp).rglob("*")
                                   if f.is_file()})
        return
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    copy_files(ROOT, {f for f in out.decode().split("\0") if f and (ROOT / f).is_file()})


def copy_files(src_root: Path, files: set[str]) -> None:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    for rel in files:
        src, dst = src_root / rel, WORKDIR / rel
        if dst.is_file() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        # a fresh mtime, not the source's: mutmut regenerates a module's mutants only when the
        # module is newer than them, and an edit older than the last generation must count too
        shutil.copyfile(src, dst)
    for top in ("spine", "tests"):
        for path in (WORKDIR / top).rglob("*.py"):
            rel = str(path.relative_to(WORKDIR))
            if rel not in files:
                path.unlink()
                # and mutmut's copy, mutants and verdicts of it (a module split out and back)
                for suffix in ("", ".meta", ".spans"):
                    (WORKDIR / "mutants" / (rel + suffix)).unlink(missing_ok=True)


def run_mutmut(modules: list[str], workers: int, rerun: bool,
               sample: dict[str, list[str]] | None = None, retest: bool = False) -> int:
    """Run the modules' mutants (or only the `sample`'s, by module). mutmut tests every mutant it
    is given by name again, so unless `rerun`, name only the ones without a verdict yet (an
    interrupted run resumes; a function that changed since gets new, unverdicted mutants) and,
    with `retest`, the survivors (after tests were added for them); a first run names whole
    modules."""

    def wanted(code: int | None) -> bool:
        return rerun or code is None or (retest and STATUS.get(code) in ("survived", "no tests"))

    if sample is not None:
        names = [k for m in modules for k in sample[m] if wanted(codes(module_path(m))[k])]
        if not names:
            return 0
    else:
        names = [] if rerun else [k for m in modules for k, code in codes(module_path(m)).items()
                                  if wanted(code)]
    if not names:
        names = [module_path(m)[:-3].replace("/", ".") + ".*" for m in modules]
        if not rerun and all(codes(module_path(m)) for m in modules):
            return 0  # every mutant has its verdict
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(mutmut), "run", "--max-children", str(workers), *names],
                          cwd=WORKDIR, env=env, check=False).returncode


# mutmut's own first step of `mutmut run` (generate the mutants, write each module's .meta with
# every mutant's name), without running anything: what a sample is drawn from.
GENERATE = """
from mutmut.__main__ import create_mutants
from mutmut.mutation.trampoline import set_mutant_under_test
from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths
import os
os.makedirs("mutants", exist_ok=True)
set_mutant_under_test("mutant_generation")
copy_src_dir()
copy_also_copy_files()
setup_source_paths()
create_mutants(1)
"""


def generate() -> None:
    """Generate the mutants in WORKDIR, as `mutmut run` does first (unchanged modules keep theirs
    and their verdicts)."""
    subprocess.run([sys.executable, "-c", GENERATE], cwd=WORKDIR, check=True,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, stdout=subprocess.DEVNULL)


def draw_sample(modules: list[str], fraction: float, seed: int) -> dict[str, list[str]]:
    """A seeded random `fraction` of each module's mutant names (at least one), drawn per module,
    so one module's sample does not depend on which others are named."""
    sample = {}
    for m in modules:
        keys = sorted(codes(module_path(m)))
        k = min(len(keys), max(1, round(fraction * len(keys)))) if keys else 0
        sample[m] = sorted(random.Random(f"{seed}/{module_path(m)}").sample(keys, k))
    return sample


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion: k successes in n trials (95% for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def codes(path: str) -> dict[str, int | None]:
    """mutmut's exit code per mutant of one module (None: not run yet); {} before a first run."""
    meta = WORKDIR / "mutants" / f"{path}.meta"
    if not meta.is_file():
        return {}
    result: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return result


def verdicts(path: str, keys: list[str] | None = None) -> Counter[str]:
    """The table's columns for one module: all its mutants, or only `keys`."""
    by_key = codes(path)
    return Counter(STATUS.get(code, "other") if code is not None else "not run"
                   for code in (by_key.values() if keys is None else (by_key[k] for k in keys)))


def report(modules: list[str], sample: dict[str, list[str]] | None = None) -> None:
    cols = ["killed", "timeout", "survived", "no tests", "other", "not run"]
    print(f"{'module':34} " + " ".join(f"{c:>9}" for c in cols) + f" {'total':>6} {'score':>6}"
          + (f" {'95% interval':>14} {'of':>5}" if sample is not None else ""))
    groups: dict[str, Counter[str]] = {"spine/core": Counter(), "spine/cluster": Counter()}
    sizes: Counter[str] = Counter()
    for m in modules:
        path = module_path(m)
        c = verdicts(path, None if sample is None else sample[m])
        if not c:
            print(f"{path:34} (not run)")
            continue
        group = "spine/core" if path.startswith("spine/core") else "spine/cluster"
        groups[group].update(c)
        sizes[group] += len(codes(path))
        print(line(path, c, cols, len(codes(path)) if sample is not None else None))
    for name, c in groups.items():
        if c:
            print(line(f"all of {name} above", c, cols,
                       sizes[name] if sample is not None else None))


def line(label: str, c: Counter[str], cols: list[str], population: int | None = None) -> str:
    """One row; with `population` (a sampled row: the module's mutants in all), the 95% Wilson
    interval of the score over all of them."""
    run = sum(v for k, v in c.items() if k != "not run")
    kills = c["killed"] + c["timeout"]
    score = f"{100 * kills / run:5.1f}%" if run else "    -"
    row = f"{label:34} " + " ".join(f"{c[k]:>9}" for k in cols) + f" {sum(c.values()):>6} {score:>6}"
    if population is not None:
        lo, hi = wilson(kills, run)
        row += f" {100 * lo:5.1f}-{100 * hi:5.1f}% {population:>5}" if run else f" {'-':>14} {population:>5}"
    return row


def survivors(modules: list[str], sample: dict[str, list[str]] | None = None) -> None:
    for m in modules:
        by_key = codes(module_path(m))
        for key in sorted(by_key if sample is None else sample[m]):
            code = by_key[key]
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
    ap.add_argument("--head", action="store_true", help="test the files as committed at HEAD, "
                    "not the work tree (whose edits under way may not even import)")
    ap.add_argument("--rerun", action="store_true", help="test every mutant of the modules "
                    "again (default: only those without a verdict, so a stopped run resumes)")
    ap.add_argument("--retest", action="store_true", help="test the survivors again too (after "
                    "adding tests for them), besides the mutants without a verdict")
    ap.add_argument("--survivors", action="store_true", help="also list surviving mutants "
                    "(inspect one with `cd runs/mutation && mutmut show NAME`)")
    ap.add_argument("--sample", type=float, metavar="F", help="test a seeded random fraction F "
                    "(0 < F <= 1) of each module's mutants; the table counts only those, with the "
                    "95%% Wilson interval of each score")
    ap.add_argument("--sample-seed", type=int, default=0, metavar="S",
                    help="the sample's seed (default 0)")
    ap.add_argument("--list", action="store_true", help="print the names of the mutants to test "
                    "(the sample's with --sample), run nothing")
    args = ap.parse_args()
    if args.sample is not None and not 0 < args.sample <= 1:
        ap.error("--sample takes a fraction in (0, 1]")
    modules = args.modules or DEFAULT
    rc = 0
    if not args.report and not args.no_sync:
        sync_tree(args.head)
    if args.sample is not None or args.list:
        if not args.report:
            generate()  # the names a sample is drawn from
        missing = [module_path(m) for m in modules if not codes(module_path(m))]
        if missing:
            print(f"no mutants for {', '.join(missing)} (not in the tree or not in only_mutate)")
            modules = [m for m in modules if module_path(m) not in missing]
    sample = None if args.sample is None else draw_sample(modules, args.sample, args.sample_seed)
    if args.list:
        for m in modules:
            print("\n".join(sorted(codes(module_path(m))) if sample is None else sample[m]))
        return 0
    if not args.report:
        rc = run_mutmut(modules, args.workers, args.rerun, sample, args.retest)
    if sample is not None:
        print(f"sample: {args.sample:g} of each module's mutants, seed {args.sample_seed}, "
              f"{sum(map(len, sample.values()))} of {sum(len(codes(module_path(m))) for m in modules)}")
    report(modules, sample)
    if args.survivors:
        survivors(modules, sample)
    return rc


if __name__ == "__main__":
    sys.exit(main())
