"""``bprun-sync``: upload the runs kept offline (``tracking.offline=true``) to the tracking
server each was meant for (``runner.tracking.sync``)."""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from runner.commands.common import quiet_mlflow
from runner.process import interruption
from runner.process.errors import EXIT_FAILED, EXIT_INVALID, InvalidInput
from runner.tracking.destination import OFFLINE_DATABASE, StoreUnavailable, sqlite_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bprun-sync", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--offline-store",
        default=f"sqlite:///{Path(os.getcwd(), OFFLINE_DATABASE)}",
        help=f"the offline store (default: ./{OFFLINE_DATABASE})",
    )
    parser.add_argument(
        "--to",
        dest="target",
        help="upload only the runs meant for this tracking URI "
        "(default: every pending run, each to the server it was meant for)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds the server may take to answer")
    arguments = parser.parse_args(argv)
    interruption.install(report=True, stopping_line="bprun-sync: stopping once the run being uploaded is complete")
    database = sqlite_path(arguments.offline_store)
    if database is not None and not database.is_file():
        print(f"bprun-sync: no offline store at {database}", file=sys.stderr)
        return EXIT_INVALID
    quiet_mlflow()
    from runner.tracking.sync import UploadFailed, sync  # (lazy: --help and argument errors answer at once)

    with _only_sync_of(database) as other:
        if other:
            print(f"bprun-sync: another bprun-sync is uploading from {database}; wait for it to end", file=sys.stderr)
            return EXIT_INVALID
        try:
            result = sync(arguments.offline_store, arguments.target, arguments.timeout, report=print)
        except interruption.Interrupted as stop:
            print(f"bprun-sync: {stop.verb}; {stop.ended}", file=sys.stderr)
            return stop.exit_code
        except StoreUnavailable as error:
            print(f"bprun-sync: {error}; nothing more was uploaded", file=sys.stderr)
            return EXIT_FAILED
        except InvalidInput as error:
            print(f"bprun-sync: {error}", file=sys.stderr)
            return EXIT_INVALID
        except UploadFailed as error:
            print(f"bprun-sync: {error}", file=sys.stderr)
            return EXIT_FAILED
    summary = f"bprun-sync: {len(result.uploaded)} run(s) uploaded"
    if result.adopted:
        summary += f", {len(result.adopted)} found already copied"
    if result.skipped:
        summary += f", {len(result.skipped)} skipped (not ended yet; see above)"
    print(summary)
    return 0


@contextmanager
def _only_sync_of(database: Path | None) -> Iterator[bool]:
    """Hold a lock beside the offline store while syncing it; yield True if another sync
    holds it. Two syncs of one store would each take the other's half-made copies for
    leftovers of an interrupted sync."""
    if database is None:
        yield False
        return
    with open(database.with_name(database.name + ".sync-lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield True
            return
        yield False


if __name__ == "__main__":
    sys.exit(main())
