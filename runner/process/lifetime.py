"""Processes that end when the process that started them ends, however it ends: the kernel
sends them a signal (Linux's ``PR_SET_PDEATHSIG``). Elsewhere nothing is arranged, and callers
rely on their other means (a lifeline, an explicit stop).

The kernel sends the signal when the *thread* that started the process ends: the thread that
starts such a process outlives it (the main thread does).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@functools.cache
def _prctl() -> Any:
    import ctypes  # (lazy: bprun imports this module before it installs its signal handlers)

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


def die_with_parent(signum: int, parent: int | None = None) -> bool:
    """Have the kernel send this process ``signum`` when its parent ends; False where it cannot.
    ``parent``, the pid of the process that started this one, closes the window before the
    request: if that process has ended already, this one exits now."""
    prctl = _prctl()
    if prctl is None or prctl(PR_SET_PDEATHSIG, signum) != 0:
        return False
    if parent is not None and os.getppid() != parent:
        os._exit(128 + signum)
    return True


def dying_with_this_process(signum: int) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``signum`` when this process
    (the thread starting it) ends. What it calls is looked up here, not in the child between
    fork and exec."""
    _prctl()
    parent = os.getpid()

    def arrange() -> None:
        die_with_parent(signum, parent)

    return arrange
