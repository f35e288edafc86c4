"""Every benchmark of this folder on an earlier commit and on this working tree, in one invocation,
with each figure side by side.

    python tests/benchmarks/compare_commits.py BEFORE [--after COMMIT] [--benchmarks runner ...] [--out DIR]

BEFORE is a commit (``f75dca0``), checked out in a temporary git worktree removed at the end; so
is ``--after`` when given (else this working tree is measured as it is). Each benchmark script
runs twice, once per tree, with that tree's own script, ``runner``, ``engine`` and Hydra plugins
first on ``PYTHONPATH`` (the same installed dependencies, so only the code differs); the order of
the two trees alternates from one benchmark to the next, so that a machine that grows busier over
the run weighs on both. Each script takes its own medians of several repeats.

Every markdown table row of the two reports is matched by (section, column, row) and printed with
the figure of each tree and their ratio; rows only one report has are listed apart. The reports
themselves are kept in ``--out`` (default: a temporary folder, named at the end).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark_common import REPOSITORY, load_average, log

BENCHMARKS = {
    "runner": "bench_runner.py",
    "sweeps": "bench_sweeps.py",
    "server": "bench_server.py",
    "clusters": "bench_clusters.py",
    "engine": "bench_engine.py",
}
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")
Figures = dict[tuple[str, str, str], tuple[float, str]]  # (section, column, row) -> (number, cell)


def run_benchmark(tree: Path, script: str, report: Path) -> int:
    """Run ``script`` of ``tree`` with its report to ``report``; its exit code."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    # Each process compiles its sources once and keeps the bytecode, as a user's install does:
    # without it, every bprun the scripts start would compile the tree again, the larger more slowly.
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    started = time.perf_counter()
    with report.open("w") as out:
        result = subprocess.run(
            [sys.executable, str(tree / "tests" / "benchmarks" / script)],
            cwd=tree,
            env=environment,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    log(f"  {report.name}: {time.perf_counter() - started:.0f} s, exit {result.returncode}")
    if result.returncode != 0:
        log(result.stderr[-3000:])
    return result.returncode


def figures(report: str) -> Figures:
    """The first number of every cell of every markdown table, by (section, column, row)."""
    found: Figures = {}
    section, header = "", []
    for line in report.splitlines():
        if line.startswith("#"):
            section, header = line.lstrip("# ").strip(), []
            continue
        if not line.startswith("|"):
            header = []
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not header:
            header = cells
            continue
        if all(set(cell) <= set("-: ") for cell in cells):
            continue
        for column, cell in zip(header[1:], cells[1:]):
            number = NUMBER.search(cell.replace(",", ""))
            if number:
                found[(section, column, cells[0])] = (float(number.group()), cell)
    return found


def checkout(commit: str) -> Path:
    """``commit`` in a git worktree of its own, in a temporary folder."""
    worktree = Path(tempfile.mkdtemp(prefix=f"{commit}-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--quiet", "--detach", str(worktree), commit], cwd=REPOSITORY, check=True)
    # The installed package maps runner.conf to conf/ (package-dir); on PYTHONPATH it is found here.
    (worktree / "runner" / "conf").symlink_to(Path("..") / "conf")
    return worktree


def side_by_side(before: Figures, after: Figures, before_name: str, after_name: str) -> list[str]:
    lines = [
        f"| section | column | row | {before_name} | {after_name} | ratio |",
        "|---|---|---|---:|---:|---:|",
    ]
    for key in (key for key in after if key in before):
        (old, old_cell), (new, new_cell) = before[key], after[key]
        ratio = f"{new / old:.2f}" if old else "-"
        lines.append(f"| {' | '.join(key)} | {old_cell} | {new_cell} | {ratio} |")
    only = [
        ("only " + before_name, [key for key in before if key not in after]),
        ("only " + after_name, [key for key in after if key not in before]),
    ]
    for name, keys in only:
        if keys:
            lines += ["", f"{name}: " + "; ".join(" / ".join(key) for key in keys)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="the earlier commit")
    parser.add_argument("--after", default=None, help="a later commit (default: this working tree)")
    parser.add_argument("--benchmarks", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=None, help="where the reports go")
    arguments = parser.parse_args()
    out = arguments.out or Path(tempfile.mkdtemp(prefix="compare-commits-"))
    out.mkdir(parents=True, exist_ok=True)
    after = arguments.after or "this tree"
    trees = {arguments.before: checkout(arguments.before)}
    trees[after] = checkout(arguments.after) if arguments.after else REPOSITORY
    started = time.perf_counter()
    log(f"load average at start {load_average()}")
    failed: list[str] = []
    try:
        for number, name in enumerate(arguments.benchmarks):
            log(f"{name}:")
            order = list(trees.items()) if number % 2 == 0 else list(reversed(trees.items()))
            for label, tree in order:
                code = run_benchmark(tree, BENCHMARKS[name], out / f"{name}-{label.replace(' ', '-')}.md")
                if code != 0:
                    failed.append(f"{name} on {label} (exit {code})")
    finally:
        for tree in trees.values():
            if tree != REPOSITORY:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPOSITORY, check=False)
    print(f"## {after} against {arguments.before}\n")
    print(f"Load average at the end {load_average()}; {time.perf_counter() - started:.0f} s in all; reports in {out}.")
    if failed:
        print(f"\nFailed, so their figures are missing below: {'; '.join(failed)}.")
    for name in arguments.benchmarks:
        before = figures((out / f"{name}-{arguments.before}.md").read_text())
        later = figures((out / f"{name}-{after.replace(' ', '-')}.md").read_text())
        print(f"\n### {name}\n")
        print("\n".join(side_by_side(before, later, arguments.before, after)))


if __name__ == "__main__":
    main()
