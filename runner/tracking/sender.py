"""Work for a tracking server done in order on a thread of its own, while training goes on."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# Metric values a piece of work carries, {run id: [values]}: those it did not store when it failed.
Unsent = dict[str, list[Any]]


class Sender:
    """One thread that runs what is submitted, in order. ``wait`` raises the first error of the
    work submitted since the last ``wait``; ``take_unsent`` then gives the metric values that
    work did not store."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bprun-sender")
        self._under_way: list[tuple[Future[Any], Unsent | None]] = []
        self._unsent: list[Unsent] = []

    def submit(self, call: Callable[..., Any], *arguments: Any, unsent: Unsent | None = None) -> None:
        """Run ``call(*arguments)`` after what is under way; ``unsent`` holds, when the call
        fails, the metric values it did not store (the call removes those it stores)."""
        self._under_way.append((self._executor.submit(call, *arguments), unsent))

    def wait(self) -> None:
        under_way, self._under_way = self._under_way, []
        first_error: BaseException | None = None
        for work, unsent in under_way:
            try:
                work.result()
            except BaseException as error:
                if unsent:
                    self._unsent.append(unsent)
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def take_unsent(self) -> Unsent:
        merged: Unsent = {}
        for unsent in self._unsent:
            for run_id, rows in unsent.items():
                merged.setdefault(run_id, []).extend(rows)
        self._unsent = []
        return merged

    def close(self) -> None:
        self._executor.shutdown(wait=True)
