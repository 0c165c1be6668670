"""`pandaes daemon`: PanDA's periodic scripts with PanDA's guarantees (daemons/master.py + daemons/utils.py).

Scripts (``SCRIPTS``; ``[daemon] scripts`` picks which run): the watcher's timeouts, the finisher and
the closer sweep (PanDA's datasetManager), the dispatch sweep (``services/gateway/undelivered.py``), the
configurator (the sites engineer's ``services.sitedata.configurator:run_once``, skipped if it cannot be
imported) and the upload-cache cleanup.
A script is ``fn(cfg, ctx)`` (or ``fn(cfg)``) where ``ctx`` carries the worker's shared resources.

Guarantees, and how:
* **bounded workers** — ``[daemon] n_proc`` worker processes pull script names from one queue; the
  master only schedules. A worker retires after ``proc_lifetime`` seconds and is replaced.
* **shared database connections** — each worker opens ONE autocommit connection and one Kafka
  producer, lazily, and hands them to every script it runs (PanDA's ``n_dbconn`` shared proxies).
* **one run at a time per script per host** — the master never queues a script that is in flight,
  and the worker takes a non-blocking ``flock`` on ``<state dir>/daemon/<script>.lock``, so two daemons
  on one host do not overlap either.
* **cluster-wide exclusivity** (``sync`` scripts, ``[daemon] cluster_lock``) — the worker runs the
  script only if ``pg_try_advisory_lock`` on the script's key succeeds, released right after; another
  host holding it means "skipped", not "wait" (PanDA's JEDI_Process_Lock idea without a lease table).
* **worker metrics on the daemon's endpoint** — counters a script moves live in a worker process, which
  serves nothing; the workers run in prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
  a folder of this master's, emptied at start) and the master's ``/metrics`` adds them
  (``WorkerMetrics``), so a worker that retires keeps its counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import inspect
import logging
import multiprocessing as mp
import os
import queue
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from core import bus, metrics  # prometheus_client is loaded here, before a worker's folder is ever in the environment
from core.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Script:
    target: str                     # "module:function"
    period: float                   # seconds between the starts of two runs
    sync: bool = True               # cluster-wide exclusive (advisory lock)
    optional: bool = False          # skip quietly when the module is not there


def scripts_from_config(cfg: Config) -> dict[str, Script]:
    d = cfg.daemon
    known = {
        "watcher": Script("services.clock.watcher:run_once", float(cfg.watcher.period)),
        "finisher": Script("services.clock.finisher:run_once", float(cfg.finisher.period)),
        "closer": Script("services.reactors.closer:run_once", float(d.closer_period)),
        "configurator": Script(d.configurator, float(d.configurator_period), optional=True),
        "cache_cleanup": Script("services.clock.daemon:cleanup_cache", float(d.cache_cleanup_period), sync=False),
        "dispatch_sweep": Script("services.gateway.undelivered:run_once", float(cfg.dispatcher.sweep_period)),
    }
    unknown = [n for n in d.scripts if n not in known]
    if unknown:
        raise ValueError(f"[daemon] scripts: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return {n: known[n] for n in d.scripts}


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a script name (``pandaD.<name>`` as in PanDA)."""
    return int.from_bytes(hashlib.blake2b(f"pandaD.{name}".encode(), digest_size=8).digest(), "big", signed=True)


# ------------------------------------------------------------------------------------------- scripts
def cleanup_cache(cfg: Config, ctx: Any = None) -> int:
    """Delete upload-cache files older than ``[daemon] cache_lifetime`` (``<state dir>/cache``)."""
    root = cfg.state_dir / "cache"
    if not root.is_dir():
        return 0
    limit = time.time() - float(cfg.daemon.cache_lifetime)
    removed = 0
    for path in root.rglob("*"):
        try:
            if path.is_file() and path.stat().st_mtime < limit:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


# -------------------------------------------------------------------------------------------- worker
class Context:
    """What a worker shares between the scripts it runs: one DB connection, one command sender."""

    def __init__(self, cfg: Config):
        from core import db

        self.cfg = cfg
        self._db = db.Reconnecting(cfg)
        self._sender = None
        self.host = socket.gethostname()

    @property
    def conn(self):
        return self._db.conn

    @property
    def sender(self):
        if self._sender is None:
            # its producer made at the first send: the watcher and the sweeps take it at every run and,
            # on an idle system, send nothing
            self._sender = bus.CommandSender(self.cfg, lazy=True)
        return self._sender

    def reset(self) -> None:
        """After an error the connection may be unusable: drop it (the next script reopens)."""
        self._db.reset()

    def close(self) -> None:
        self.reset()
        if self._sender is not None:
            with contextlib.suppress(Exception):
                self._sender.close()


@contextlib.contextmanager
def host_lock(directory: Path, name: str) -> Iterator[bool]:
    """Non-blocking per-host lock: yields False if another process on this host runs ``name``."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def cluster_lock(conn, name: str) -> Iterator[bool]:
    """Session advisory lock on the worker's connection; yields False if another daemon holds it."""
    key = lock_key(name)
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
    try:
        yield bool(got)
    finally:
        if got:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _resolve(target: str) -> Callable[..., Any]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def run_script(cfg: Config, ctx: Context, name: str, script: Script, lock_dir: Path) -> tuple[str, str]:
    """Run one script under its locks; returns (status, detail) with status ok|skipped|busy|locked|error."""
    try:
        fn = _resolve(script.target)
    except (ImportError, AttributeError) as exc:
        if script.optional:
            return "skipped", f"{script.target} not available: {exc}"
        return "error", f"cannot load {script.target}: {exc}"
    with host_lock(lock_dir, name) as mine:
        if not mine:
            return "busy", "running in another process on this host"
        try:
            with contextlib.ExitStack() as stack:
                if script.sync and cfg.daemon.cluster_lock:
                    if not stack.enter_context(cluster_lock(ctx.conn, name)):
                        return "locked", "running on another host"
                takes_ctx = len(inspect.signature(fn).parameters) >= 2
                result = fn(cfg, ctx) if takes_ctx else fn(cfg)
            return "ok", str(result)
        except Exception as exc:
            log.exception("daemon script %s failed", name)
            ctx.reset()
            return "error", f"{type(exc).__name__}: {exc}"


def counted_run(cfg: Config, ctx: Context, name: str, script: Script, lock_dir: Path) -> tuple[str, str]:
    """``run_script``, counted in ``pandaes_daemon_script_runs`` (in a worker: its multiprocess files)."""
    status, detail = run_script(cfg, ctx, name, script, lock_dir)
    metrics.DAEMON_RUNS.labels(name, status).inc()
    return status, detail


MAX_WAIT = 1.0       # seconds the master waits for a result between two looks at the schedule and the workers
WORKER_WAIT = 5.0    # seconds an idle worker waits for a task before it looks at its lifetime (stop: a None task)


def _warm_up(ctx: Context, scripts: dict[str, Script]) -> None:
    """Import every script's module and open the worker's database connection at its start.

    Why: the master hands each run to whichever worker is free, so each worker imported each script's module
    and opened its connection at its own first run of it, one at a time in the minutes after start, amid the
    idle system's wake-ups. Done once here, at start, that work is what it is: startup."""
    for script in scripts.values():
        with contextlib.suppress(ImportError, AttributeError):   # run_script reports it, as before
            _resolve(script.target)
    try:
        ctx.conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - the database away: the first script connects (or reports it)
        log.debug("daemon worker: no database connection yet: %s", exc)
        ctx.reset()


def _worker(cfg_data: dict, scripts: dict[str, Script], lock_dir: str, tasks: Any, results: Any,
            lifetime: float) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s daemon-worker %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    cfg = Config(cfg_data)
    ctx = Context(cfg)
    born = time.monotonic()
    try:
        _warm_up(ctx, scripts)
        while time.monotonic() - born < lifetime:
            try:
                name = tasks.get(timeout=WORKER_WAIT)
            except queue.Empty:
                continue
            if name is None:
                break
            started = time.time()
            status, detail = counted_run(cfg, ctx, name, scripts[name], Path(lock_dir))
            results.put((name, status, started, time.time(), detail, os.getpid()))
    finally:
        ctx.close()


# ------------------------------------------------------------------------------------ worker metrics
MULTIPROC_ENV = metrics.MULTIPROC_ENV
_spawn_env = threading.Lock()


class WorkerMetrics:
    """The worker processes' metrics, shown on the master's ``/metrics`` (``core.metrics.EXPOSED``).

    Why multiprocess mode: a worker is a spawned process with its own registry that nobody scrapes, and it
    retires after ``proc_lifetime``. prometheus_client's multiprocess mode has each worker write its values
    to files in one folder, and ``MultiProcessCollector`` reads them all at scrape time (counters of dead
    workers included). The folder is this master's own, ``<lock dir>/worker-metrics/<pid>.<n>``: emptied
    at start, removed at close, and folders left by masters whose process is gone are removed too.

    The variable is put in the environment only while a worker is spawned (a spawned child reads it at
    birth, before it imports prometheus_client); the master itself keeps ordinary in-memory metrics.
    """

    def __init__(self, lock_dir: Path):
        parent = lock_dir / "worker-metrics"
        parent.mkdir(parents=True, exist_ok=True)
        for old in parent.iterdir():
            pid = old.name.split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not metrics.pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        self.path = parent / f"{os.getpid()}.{id(self):x}"
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir()
        self.collector = multiprocess.MultiProcessCollector(None, path=str(self.path))
        metrics.EXPOSED.add(self.collector)

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """The environment of a worker being spawned: the folder it writes its metrics to."""
        with _spawn_env:
            before = os.environ.get(MULTIPROC_ENV)
            os.environ[MULTIPROC_ENV] = str(self.path)
            try:
                yield
            finally:
                if before is None:
                    os.environ.pop(MULTIPROC_ENV, None)
                else:
                    os.environ[MULTIPROC_ENV] = before

    def dead(self, pid: int | None) -> None:
        """A worker is gone: its live gauges go (its counters stay, as counters must)."""
        if pid:
            multiprocess.mark_process_dead(pid, str(self.path))

    def close(self) -> None:
        metrics.EXPOSED.remove(self.collector)
        shutil.rmtree(self.path, ignore_errors=True)


# -------------------------------------------------------------------------------------------- master
@dataclass
class Run:
    name: str
    status: str
    started: float
    ended: float
    detail: str
    pid: int


@dataclass
class DaemonMaster:
    """Schedules scripts onto a bounded pool of worker processes."""

    cfg: Config
    scripts: dict[str, Script] | None = None
    n_proc: int | None = None
    lock_dir: Path | None = None
    history: list[Run] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scripts = self.scripts if self.scripts is not None else scripts_from_config(self.cfg)
        self.n_proc = self.n_proc or int(self.cfg.daemon.n_proc)
        self.lock_dir = self.lock_dir or self.cfg.state_dir / "daemon"
        ctx = mp.get_context("spawn")   # no inherited Kafka/DB sockets or threads in the workers
        self._ctx = ctx
        self.tasks = ctx.Queue()
        self.results = ctx.Queue()
        self.workers: list[Any] = []
        self.in_flight: set[str] = set()
        self.next_run: dict[str, float] = {name: 0.0 for name in self.scripts}
        self.worker_metrics = WorkerMetrics(self.lock_dir)

    def _spawn(self) -> None:
        p = self._ctx.Process(
            target=_worker, name="pandaes-daemon-worker", daemon=True,
            args=(self.cfg.as_dict(), self.scripts, str(self.lock_dir), self.tasks, self.results,
                  float(self.cfg.daemon.proc_lifetime)))
        with self.worker_metrics.spawning():
            p.start()
        self.workers.append(p)

    def _keep_workers(self) -> None:
        alive = [p for p in self.workers if p.is_alive()]
        for p in self.workers:
            if p not in alive:
                self.worker_metrics.dead(p.pid)
        if len(alive) < len(self.workers):
            # a worker died, maybe mid-script, and will never report: forget what was in flight (the
            # per-host flock still keeps a script that is really running from starting twice)
            self.in_flight.clear()
        self.workers = alive
        while len(self.workers) < self.n_proc:
            self._spawn()

    def _collect(self, timeout: float) -> None:
        try:
            item = self.results.get(timeout=timeout)
        except queue.Empty:
            return
        run = Run(*item)
        self.history.append(run)
        self.in_flight.discard(run.name)
        if run.status in ("error",):
            log.warning("daemon: %s %s: %s", run.name, run.status, run.detail)
        else:
            log.debug("daemon: %s %s in %.2fs: %s", run.name, run.status, run.ended - run.started, run.detail)

    def step(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._keep_workers()
        for name, script in self.scripts.items():
            if name in self.in_flight or now < self.next_run[name]:
                continue
            self.in_flight.add(name)
            self.next_run[name] = now + script.period
            self.tasks.put(name)
        self._collect(self._wait(now))

    def _wait(self, now: float) -> float:
        """How long the next step may wait for results: until the next script is due, at most ``MAX_WAIT``. An
        idle daemon wakes once a second instead of five times (a finished script still ends the wait at once)."""
        due = [t for name, t in self.next_run.items() if name not in self.in_flight]
        return max(0.01, min(MAX_WAIT, min(due, default=now + MAX_WAIT) - now))

    def run(self, stop: threading.Event) -> None:
        log.info("daemon: %d worker(s), scripts %s", self.n_proc,
                 ", ".join(f"{n} every {s.period:g}s{' (sync)' if s.sync else ''}" for n, s in self.scripts.items()))
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.close()

    def close(self) -> None:
        for _ in self.workers:
            self.tasks.put(None)
        deadline = time.monotonic() + 10
        for p in self.workers:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
        while True:   # drain what finished meanwhile
            try:
                self.history.append(Run(*self.results.get_nowait()))
            except (queue.Empty, OSError, ValueError):
                break
        self.worker_metrics.close()


def run_component(cfg: Config, stop: threading.Event) -> None:
    """`pandaes run daemon`."""
    DaemonMaster(cfg).run(stop)


def run_scripts_once(cfg: Config, names: list[str]) -> list[tuple[str, str, str]]:
    """Run some scripts once in this process (``pandaes daemon --once``), under the same locks."""
    scripts = scripts_from_config(cfg.replace(daemon={"scripts": names}))
    ctx = Context(cfg)
    try:
        return [(n, *run_script(cfg, ctx, n, s, cfg.state_dir / "daemon")) for n, s in scripts.items()]
    finally:
        ctx.close()
