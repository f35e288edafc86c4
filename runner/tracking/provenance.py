"""What a run records so that it can be reproduced: code version, library versions, BLAS, config.

``provenance_tags`` returns MLflow tags (every name matches ``[/\\w.\\- :]``, every value is a
string). Each one answers a question someone asks when a result cannot be reproduced:

``git.commit``
    HEAD of the git work tree holding this package's source (the project checkout), or
    ``"unknown"`` when the code does not come from a checkout (a wheel installed into
    site-packages, git missing). MLflow's own ``mlflow.source.git.commit`` describes the
    directory of the entry script instead, which for a console script is the venv's ``bin/``.
``git.dirty``
    ``"true"`` when tracked files differ from that commit (staged or not), so the commit alone
    does not give back the code that ran; ``"false"`` otherwise. Untracked files do not count,
    as with ``git describe --dirty``: output directories are ignored by ``.gitignore`` and a new
    module only matters once a tracked file imports it, which makes the tree dirty anyway.
    ``git_diff`` gives the changes themselves. ``"unknown"`` when ``git.commit`` is.
``cwd_git.commit``, ``cwd_git.dirty``
    The same for the repository the command was started in, only when that is a *different*
    repository (a user's project that keeps its data and configs in git and calls ``bprun``).
``version.python``, ``version.numpy``, ``version.hydra_core``, ``version.omegaconf``, ``version.mlflow``,
``version.backprop_runner``
    Installed versions (``importlib.metadata``, so nothing heavy is imported); ``"unknown"``
    when a distribution is not installed. A different NumPy or BLAS can change results in the
    last bits.
``blas.library``, ``blas.threads``
    The BLAS NumPy calls (name, version, build details from ``threadpoolctl``) and its thread
    count: OpenBLAS sums in a different order at a different thread count, so results drift by
    about 1e-13 and only repeat exactly at the same count.
``config.sha256``
    sha256 of the composed config's YAML text: two runs with the same hash ran the same config,
    whatever the command lines looked like.

Nothing here raises because git is missing or a directory is not a repository: provenance is
recorded as well as it can be and a run never fails for lack of it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy
from threadpoolctl import threadpool_info

import runner
from runner import names

UNKNOWN = "unknown"
GIT_TIMEOUT_SECONDS = 10.0

# Distribution names (as pip knows them) behind the version.* tags.
VERSION_TAGS = {
    names.VERSION_NUMPY: "numpy",
    names.VERSION_HYDRA_CORE: "hydra-core",
    names.VERSION_OMEGACONF: "omegaconf",
    names.VERSION_MLFLOW: "mlflow",
    names.VERSION_BACKPROP_RUNNER: "backprop-runner",
}

# These point git at another repository than the directory it runs in (they are set inside git
# hooks, for example); the directory we pass must decide which repository we describe.
_GIT_LOCATION_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)


@dataclass(frozen=True)
class GitState:
    """One git work tree: its HEAD ``commit`` (None before the first commit), whether tracked
    files differ from it (``dirty``), and its top-level directory ``root``."""

    commit: str | None
    dirty: bool
    root: str


def _run_git(directory: str | os.PathLike[str], *arguments: str) -> bytes | None:
    """stdout of ``git <arguments>`` run in ``directory``; None if git is missing or fails."""
    environment = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARIABLES}
    try:
        completed = subprocess.run(
            # --no-optional-locks: `git status` would otherwise take index.lock to refresh the
            # index, and make a concurrent `git commit` in the same checkout fail.
            ["git", "--no-optional-locks", *arguments],
            cwd=directory,
            env=environment,
            capture_output=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # git not installed, no such directory, timeout
        return None
    return completed.stdout if completed.returncode == 0 else None


def git_state(directory: str | os.PathLike[str]) -> GitState | None:
    """The git work tree containing ``directory``, or None (not a work tree, git missing or
    refusing, for example a repository owned by another user). Never raises."""
    toplevel = _run_git(directory, "rev-parse", "--show-toplevel")
    if not toplevel or not toplevel.strip():
        return None
    root = os.fsdecode(toplevel.rstrip(b"\n"))
    status = _run_git(root, "status", "--porcelain=v2", "--branch", "--untracked-files=no")
    if status is None:
        return None
    commit, dirty = None, False
    for line in status.decode("utf-8", "replace").splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split()[-1]
            commit = None if oid == "(initial)" else oid
        elif line and not line.startswith("#"):  # a changed tracked entry: "1 ...", "2 ...", "u ..."
            dirty = True
    return GitState(commit=commit, dirty=dirty, root=root)


@functools.lru_cache(maxsize=4)
def git_diff(root: str | os.PathLike[str]) -> str:
    """``git diff HEAD`` of the work tree at ``root`` (staged and unstaged changes of tracked
    files), preceded by ``#`` comment lines naming untracked files, whose contents are not
    included (they may be large or private). ``git apply`` skips the comment lines, so the text
    applies as a patch on top of ``git.commit``. Binary files appear as "Binary files differ";
    undecodable bytes are replaced. Returns "" when there is nothing to report or git fails."""
    diff = _run_git(root, "diff", "HEAD", "--no-color", "--no-ext-diff", "--no-textconv") or b""
    untracked = _run_git(root, "ls-files", "--others", "--exclude-standard", "-z") or b""
    untracked_files = [os.fsdecode(name) for name in untracked.split(b"\0") if name]
    header = ""
    if untracked_files:
        header = "# untracked files (contents not included):\n" + "".join(f"#   {name}\n" for name in untracked_files)
    return header + diff.decode("utf-8", "replace")


@functools.lru_cache(maxsize=1)
def project_git_state() -> GitState | None:
    """Git state of the checkout this ``runner`` package's source comes from.

    Read once per process: the code that runs is the code imported at start, however many jobs
    a sweep runs in this process (and each read costs several git calls).

    None when the package is not a tracked part of a work tree: a wheel installed into a venv
    that happens to sit inside some repository (``.venv`` ignored) must not report that
    repository's commit.
    """
    package_dir = Path(runner.__file__).resolve().parent
    state = git_state(package_dir)
    if state is None:
        return None
    tracked = _run_git(package_dir, "ls-files", "-z", "--", "__init__.py")
    return state if tracked else None


@functools.cache  # installed versions do not change while a sweep runs; each lookup scans site-packages
def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def read_once_per_process() -> None:
    """Read now what ``provenance_tags`` reads once per process (the runner's git state, the
    installed versions): a sweep's worker processes do it before their first job (warm_up)."""
    project_git_state()
    for distribution in VERSION_TAGS.values():
        _version(distribution)


def _numpy_blas() -> dict | None:
    """threadpoolctl's entry for the BLAS that NumPy itself links, if it can tell."""
    entries = [entry for entry in threadpool_info() if entry.get("user_api") == "blas"]
    if not entries:
        return None
    # A NumPy wheel bundles its BLAS in site-packages/numpy.libs (or numpy/.libs); SciPy, once
    # imported, loads a second copy from scipy.libs, which is not the one NumPy calls.
    numpy_dir = Path(numpy.__file__).resolve().parent
    own_dirs = (str(numpy_dir) + os.sep, str(numpy_dir) + ".libs" + os.sep)
    for entry in entries:
        if str(Path(entry.get("filepath", "")).resolve()).startswith(own_dirs):
            return entry
    return entries[0]  # a system or conda NumPy: linked against the shared library that is loaded


def blas_tags() -> dict[str, str]:
    """``blas.library`` and ``blas.threads`` for the BLAS NumPy uses ("unknown" if undetected)."""
    entry = _numpy_blas()
    if entry is None:
        return {names.BLAS_LIBRARY: UNKNOWN, names.BLAS_THREADS: UNKNOWN}
    details = [f"{key}={entry[key]}" for key in ("internal_api", "threading_layer", "architecture") if entry.get(key)]
    details.append(f"file={Path(entry.get('filepath', '')).name}")
    library = f"{entry.get('internal_api', UNKNOWN)} {entry.get('version') or UNKNOWN} ({', '.join(details)})"
    return {names.BLAS_LIBRARY: library, names.BLAS_THREADS: str(entry.get("num_threads", UNKNOWN))}


def provenance_tags(config_yaml: str, start_dir: str) -> dict[str, str]:
    """Every provenance tag for a run (see the module docstring for what each one means).

    ``config_yaml`` is the composed config as YAML text; ``start_dir`` is the directory the
    command was started in.
    """
    tags: dict[str, str] = {}
    project = project_git_state()
    tags[names.GIT_COMMIT] = (project.commit or UNKNOWN) if project else UNKNOWN
    # Present even when unknown, so that every run has the same columns in search_runs.
    tags[names.GIT_DIRTY] = str(project.dirty).lower() if project else UNKNOWN
    here = git_state(start_dir)
    if here is not None and (project is None or Path(here.root).resolve() != Path(project.root).resolve()):
        tags[names.CWD_GIT_COMMIT] = here.commit or UNKNOWN
        tags[names.CWD_GIT_DIRTY] = str(here.dirty).lower()
    tags[names.VERSION_PYTHON] = platform.python_version()
    tags.update({tag: _version(distribution) for tag, distribution in VERSION_TAGS.items()})
    tags.update(blas_tags())
    tags[names.CONFIG_SHA256] = hashlib.sha256(config_yaml.encode("utf-8")).hexdigest()
    return tags
