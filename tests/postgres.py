"""A PostgreSQL database for the tests: empty, made for the test session, gone after it.

``postgres_uri`` (a session-scoped fixture; with pytest-xdist, one per worker) is the URI
``postgresql://USER@127.0.0.1:PORT/bprun_test_<random>`` of a new, empty database:

- when ``BPRUN_TEST_POSTGRES_URI`` is set (.ci/run sets it), the database is made on that server
  and dropped at the end. Its user must be allowed to create databases. A server that does not
  answer fails the tests that use it: CI must not skip them;
- else, when PostgreSQL is installed (Debian's ``postgresql`` package), on a throwaway cluster in
  a temporary directory, on a free loopback port, stopped and deleted at the end. When the tests
  run as root the cluster runs as the ``postgres`` user: initdb refuses root;
- else the tests that use it are skipped, saying what to install.

A watchdog process stops the throwaway cluster and deletes its directory when the session ends,
and also when the test process dies without tearing down (killed), so no server outlives it. The
watchdog and the cluster are started without the session's mark (``guard.py``): the guard, which
kills marked processes once pytest has ended, would stop them before the watchdog's clean stop.

Use it with ``from postgres import postgres_uri`` in a conftest.py or a test module.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from guard import without_mark

ENV = "BPRUN_TEST_POSTGRES_URI"
# Seconds initdb, a start or a stop may take on a loaded 2-core machine (each takes about one).
SERVER_TIMEOUT = 120
INSTALL = "install Debian's postgresql package (apt-get install postgresql) or set " + ENV

# Runs beside the tests: the test process writes a line to its stdin at teardown, or dies and
# so closes it; either way it stops the cluster (if it runs) and deletes its directory.
_WATCHDOG = """
import os, shutil, subprocess, sys
pg_ctl, folder, user, timeout = sys.argv[1:]
sys.stdin.readline()
data = os.path.join(folder, "data")
if os.path.exists(os.path.join(data, "postmaster.pid")):
    subprocess.run([pg_ctl, "stop", "-D", data, "-m", "fast", "-s", "-t", timeout],
                   user=user or None, group=user or None, extra_groups=[] if user else None, cwd=folder)
shutil.rmtree(folder, ignore_errors=True)
sys.exit(1 if os.path.exists(folder) else 0)
"""


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """The URI of an empty PostgreSQL database made for this test session (see the module)."""
    configured = os.environ.get(ENV)
    server = contextlib.nullcontext(configured) if configured else _throwaway_cluster()
    with server as server_uri, _database(server_uri, configured is not None) as uri:
        yield uri


@contextlib.contextmanager
def _database(server_uri: str, configured: bool) -> Iterator[str]:
    """A new database on the server of ``server_uri`` (which names an existing database to
    connect to), dropped at the end; yields its URI."""
    parts = urlsplit(server_uri)
    shown = server_uri.replace(f":{parts.password}@", ":***@") if parts.password else server_uri
    where = f"{ENV}={shown}" if configured else f"the throwaway cluster at {shown}"
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        message = "psycopg is not installed: pip install -e '.[test]'"
        if configured:
            pytest.fail(f"{ENV} is set but {message}", pytrace=False)
        pytest.skip(message)
    if not parts.scheme.startswith("postgresql"):
        pytest.fail(f"{where}: not a postgresql:// URI", pytrace=False)
    libpq_uri = parts._replace(scheme="postgresql").geturl()  # psycopg reads no +driver
    name = f"bprun_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(libpq_uri, autocommit=True, connect_timeout=10) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            force = sql.SQL(" WITH (FORCE)" if admin.info.server_version >= 130000 else "")
    except psycopg.Error as error:
        pytest.fail(f"{where}: cannot create a database there: {error}", pytrace=False)
    try:
        yield parts._replace(path=f"/{name}").geturl()
    finally:
        # FORCE: a connection left open (a pool, a server not stopped) would block the drop.
        with psycopg.connect(libpq_uri, autocommit=True, connect_timeout=10) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)) + force)


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[str]:
    """A new PostgreSQL cluster on a free loopback port; yields the URI of its ``postgres``
    database (superuser ``postgres``, no password: only loopback connections are accepted)."""
    bin_dir = _binaries()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL's initdb and pg_ctl are not installed: {INSTALL}")
    user = _unprivileged_user()
    as_user = {"user": user, "group": user, "extra_groups": []} if user else {}
    folder = Path(tempfile.mkdtemp(prefix="bprun-pg-"))
    data, log = folder / "data", folder / "postgres.log"
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(bin_dir / "pg_ctl"), str(folder), user or "", str(SERVER_TIMEOUT)],
        stdin=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=without_mark(),
    )  # Ctrl-C does not reach it

    def run(*command: str) -> None:
        result = subprocess.run(
            command,
            check=False,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=SERVER_TIMEOUT,
            env=without_mark(),
            **as_user,
        )
        if result.returncode != 0:
            logged = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}{logged}"
            )

    try:
        if user:
            os.chown(folder, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        # Throwaway data: no fsync, and the C locale whatever the machine's.
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        for attempt in range(3):  # a free port may be taken before the server binds it
            port = _free_port()
            options = (
                f"-p {port} -k {shlex.quote(str(folder))} -c listen_addresses=127.0.0.1"
                " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
            )
            try:
                run(
                    str(bin_dir / "pg_ctl"),
                    "start",
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    str(SERVER_TIMEOUT),
                    "-o",
                    options,
                )
                break
            except RuntimeError:
                if attempt == 2 or "could not bind" not in log.read_text():
                    raise
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        watchdog.stdin.write("stop\n")
        watchdog.stdin.close()
        if watchdog.wait(timeout=2 * SERVER_TIMEOUT) != 0:
            raise RuntimeError(f"the throwaway PostgreSQL cluster in {folder} was not stopped and deleted")


def _binaries() -> Path | None:
    """The folder of initdb and pg_ctl: the one on PATH, else Debian's newest version."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def _unprivileged_user() -> str | None:
    """None when the tests do not run as root; else ``postgres``, which PostgreSQL runs as."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(f"the tests run as root and there is no postgres user to run PostgreSQL as: {INSTALL}")
    return "postgres"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
