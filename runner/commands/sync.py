"""``bprun-sync``: upload the runs kept offline (``tracking.offline=true``) to the tracking
server each was meant for (``runner.tracking.sync``), and what runs that lost their server kept
on disk (``bprun-sync FOLDER``, the folder the run named; ``runner.tracking.unsent``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from runner.commands.common import quiet_mlflow
from runner.process import interruption
from runner.process.errors import EXIT_FAILED, EXIT_INVALID, InvalidInput
from runner.process.locks import exclusive_lock
from runner.tracking.destination import OFFLINE_DATABASE, StoreUnavailable, sqlite_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bprun-sync", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folders",
        nargs="*",
        type=Path,
        help="folders a run kept when its server was lost (the run's line names it), or folders holding "
        "them (outputs/); given, only these are uploaded",
    )
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
    if arguments.folders:
        return _upload_kept(arguments.folders, arguments.timeout)
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


def _upload_kept(paths: list[Path], timeout: float) -> int:
    """Upload every kept run under ``paths`` to its server (see ``runner.tracking.unsent``)."""
    from runner.tracking.unsent import find_unsent  # (lazy: see main)

    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        print(f"bprun-sync: no such folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_INVALID
    folders = list(find_unsent(paths))
    if not folders:
        print(f"bprun-sync: no run kept for upload in {', '.join(map(str, paths))}", file=sys.stderr)
        return EXIT_INVALID
    quiet_mlflow()
    # (lazy: --help and argument errors answer at once, without MLflow's imports)
    from runner.tracking.destination import Destination, check_store
    from runner.tracking.unsent import UnsentRun, upload

    uploaded = 0
    for folder in folders:
        interruption.check(ended=f"{uploaded} kept run(s) uploaded before it stopped")
        kept = UnsentRun.load(folder)
        label = f"{kept.run_id} ({kept.run_name})"
        if kept.still_training():
            print(f"bprun-sync: skipped {label}: it has not ended, and its process still runs", file=sys.stderr)
            continue
        try:
            check_store(
                Destination(kept.tracking_uri, http_timeout=timeout, http_retries=2),
                server_advice="start it and run bprun-sync again",
            )
            status = upload(folder)
        except StoreUnavailable as error:
            print(f"bprun-sync: {error}; nothing more was uploaded", file=sys.stderr)
            return EXIT_FAILED
        except Exception as error:
            print(
                f"bprun-sync: uploading {label} from {folder} failed: {type(error).__name__}: "
                f"{(str(error).strip().splitlines() or [''])[0]}; it stays there for the next bprun-sync",
                file=sys.stderr,
            )
            return EXIT_FAILED
        uploaded += 1
        print(f"uploaded {label} to {kept.tracking_uri}: ended {status}")
    print(f"bprun-sync: {uploaded} kept run(s) uploaded")
    return 0


@contextmanager
def _only_sync_of(database: Path | None) -> Iterator[bool]:
    """Hold a lock beside the offline store while syncing it; yield True if another sync
    holds it. Two syncs of one store would each take the other's half-made copies for
    leftovers of an interrupted sync."""
    if database is None:
        yield False
        return
    with exclusive_lock(database.with_name(database.name + ".sync-lock")) as taken:
        yield taken


if __name__ == "__main__":
    sys.exit(main())
