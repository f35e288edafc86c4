"""``bprun-sync``: upload the runs kept offline (``tracking.offline=true``) to the tracking
server each was meant for (``runner.tracking.sync``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from runner.commands.common import quiet_mlflow
from runner.process.errors import EXIT_FAILED, EXIT_INVALID, InvalidInput
from runner.tracking.destination import OFFLINE_DATABASE, StoreUnavailable, sqlite_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bprun-sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--offline-store", default=f"sqlite:///{Path(os.getcwd(), OFFLINE_DATABASE)}",
                        help=f"the offline store (default: ./{OFFLINE_DATABASE})")
    parser.add_argument("--to", dest="target", help="upload only the runs meant for this tracking URI "
                        "(default: every pending run, each to the server it was meant for)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds the server may take to answer")
    arguments = parser.parse_args(argv)
    database = sqlite_path(arguments.offline_store)
    if database is not None and not database.is_file():
        print(f"bprun-sync: no offline store at {database}", file=sys.stderr)
        return EXIT_INVALID
    quiet_mlflow()
    from runner.tracking.sync import sync  # (lazy: --help and argument errors answer at once)

    try:
        copied = sync(arguments.offline_store, arguments.target, arguments.timeout)
    except StoreUnavailable as error:
        print(f"bprun-sync: {error}; nothing more was uploaded (run it again later)", file=sys.stderr)
        return EXIT_FAILED
    except InvalidInput as error:
        print(f"bprun-sync: {error}", file=sys.stderr)
        return EXIT_INVALID
    for offline_id, new_id in copied:
        print(f"uploaded {offline_id} as {new_id}")
    print(f"bprun-sync: {len(copied)} run(s) uploaded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
