"""`pandaes chaos`: the whole system under load, components killed with SIGKILL, then the invariants checked.

It starts what `pandaes run` starts (the embedded broker and database or the configured ones, every
component under the same supervisor) in its own state directory and database, submits ``--jobs`` jobs in
batches while ``--pilots`` simulated pilots run them (cli/chaos_load.py), and meanwhile kills ``--kills``
times one of ``--targets`` at random moments of ``--duration`` seconds (cli/chaos_faults.py: components,
and the broker and database where this run started them). Then it waits for the work to finish and checks
the invariants (cli/chaos_checks.py), one PASS/FAIL line each; the exit code is 0 only if all pass.

Timeouts that the faults legitimately leave to the clock are shortened for the run, and said so at start:
a gateway killed between a dispatch and its answer leaves the job ``sent`` to no pilot, which the watcher
fails after ``--sent-timeout`` (PanDA: 30 minutes) and the retrier resubmits; the notes count such jobs.
Everything else runs on the defaults. docs/reliability.md describes the short run `make test` does and the
long one.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
import time
import urllib.request
from pathlib import Path

import psycopg

from cli import chaos_faults as faults
from cli import components
from cli.chaos_checks import run_checks
from cli.chaos_load import Gate, Pilots, Submitter
from core import config, db
from core.ports import free_port
from core.states import FINAL_STATES
from devenv import stack
from projections import invariant_queries, queries
from services import migrations

# what a job needs to get from submission to finished (the watcher in the daemon: a lost dispatch's timeout),
# the reactors either hosted together (`reactors`, with the projections unless [reactors] projector = false) or
# each alone (then the projector too)
FLOW = ("ledger", "gateway", "daemon")
FLOW_REACTORS = ("setupper", "activator", "adder")


class Chaos:
    def __init__(self, args: argparse.Namespace, log=print):
        self.args = args
        self.log = log
        self.rng = random.Random(args.seed)
        self.stop = threading.Event()
        self.gate = Gate()
        self.system: stack.Infra | None = None
        self.sup: components.Supervisor | None = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.done: list[str] = []       # the target of each kill made, in order
        self.skipped: list[str] = []
        self.t0 = time.monotonic()
        self._last_progress = 0.0
        base = config.load()
        self.names = [n.strip() for n in args.components.split(",") if n.strip()] if args.components \
            else components.default_components(base)
        for name in self.names:
            components.resolve(name)   # a typo stops the run before anything starts
        missing = [n for n in FLOW if n not in self.names]
        if "reactors" not in self.names:
            missing += [n for n in FLOW_REACTORS if n not in self.names]
        if "projector" not in self.names and not ("reactors" in self.names and base.reactors.projector):
            missing.append("projector")
        if missing:
            raise SystemExit(f"--components: jobs cannot finish without {', '.join(missing)}")

    # ----------------------------------------------------------------------------------- set-up
    def environment(self) -> Path:
        """The run's own settings, through the environment so that every component sees the same."""
        a = self.args
        base = config.load()
        state = Path(a.state_dir) if a.state_dir else base.state_dir / "chaos"
        tag = f"{os.getpid()}"
        env = {"PANDAES_STATE_DIR": str(state), "PANDAES_HTTP_HOST": "127.0.0.1",
               "PANDAES_HTTP_PORT": str(free_port()), "PANDAES_MONITOR_PORT": str(free_port()),
               "PANDAES_METRICS_ENABLED": "false", "PANDAES_DAEMON_N_PROC": "1",
               "PANDAES_WATCHER_PERIOD": "5", "PANDAES_WATCHER_SENT_TIMEOUT": str(a.sent_timeout),
               "PANDAES_PLUGINS_LOCAL_TRANSFER_DELAY": "0", "PANDAES_DB_DATABASE": f"pandaes_chaos_{tag}"}
        if base.kafka.bootstrap:   # a shared cluster: topics and groups of this run only
            env.update({"PANDAES_KAFKA_COMMANDS_TOPIC": f"chaos{tag}.job-commands",
                        "PANDAES_KAFKA_EVENTS_TOPIC": f"chaos{tag}.job-events",
                        "PANDAES_KAFKA_REJECTED_TOPIC": f"chaos{tag}.job-commands.rejected",
                        "PANDAES_KAFKA_REPLIES_TOPIC": f"chaos{tag}.job-replies",
                        "PANDAES_KAFKA_GROUP_PREFIX": f"chaos{tag}"})
        if base.db.url:
            raise SystemExit("pandaes chaos makes its own database: unset PANDAES_DB / [db] url "
                             "(it uses the server on 127.0.0.1:5432 or starts the embedded one)")
        os.environ.update(env)
        state.mkdir(parents=True, exist_ok=True)
        return state

    def targets(self) -> list[str]:
        assert self.system is not None
        wanted = self.args.targets.split(",") if self.args.targets else [*self.names, faults.BROKER, faults.DATABASE]
        out = []
        for t in (w.strip() for w in wanted if w.strip()):
            if t == faults.BROKER and self.system.tansu is None:
                self.log("chaos: the broker was not started by this run (PANDAES_KAFKA): it is not killed")
            elif t == faults.DATABASE and not (self.system.postgres and self.system.postgres.origin == "started"):
                self.log("chaos: the database server was not started by this run (it answered on 127.0.0.1:5432); "
                         "it is not killed — PANDAES_FORCE_EMBEDDED_DB=1 or --embedded-db starts one to kill")
            elif t in (faults.BROKER, faults.DATABASE) or t in self.names:
                out.append(t)
            else:
                raise SystemExit(f"--targets: {t!r} is not one of the run's components, broker or database: "
                                 f"{', '.join([*self.names, faults.BROKER, faults.DATABASE])}")
        return out

    def start_watch(self) -> None:
        assert self.sup is not None
        self._watch_stop = threading.Event()
        self._watcher = threading.Thread(target=self.sup.watch, args=(self._watch_stop,), name="chaos-supervisor",
                                         daemon=True)
        self._watcher.start()

    def stop_watch(self) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(60)

    def wait_gateway(self, url: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/api/v1/system/is_alive", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"chaos: the gateway did not answer on {url} within {timeout:.0f}s")

    # -------------------------------------------------------------------------------------- faults
    def kill(self, target: str) -> None:
        if target == faults.BROKER:
            self.kill_broker()
        elif target == faults.DATABASE:
            self.kill_database()
        else:
            self.kill_component(target)

    def kill_component(self, name: str) -> None:
        assert self.sup is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:   # a component waiting for its restart is killed once it is back
            proc = self.sup.procs.get(name)
            if proc is not None and proc.poll() is None:
                pids = faults.kill_tree(proc)
                if pids:
                    self.done.append(name)
                    self.log(f"chaos: KILL -9 {name} (pid {', '.join(map(str, pids))})")
                    return
            time.sleep(0.5)
        self.skipped.append(f"{name} (not running for 60 s)")

    def kill_database(self) -> None:
        assert self.system is not None
        pids = self.system.kill_database()
        self.log(f"chaos: KILL -9 database (postmaster and backends: {len(pids)} processes)")
        time.sleep(self.args.db_outage)
        for attempt in range(5):
            try:
                self.system.restart_database()
                break
            except Exception as exc:  # noqa: BLE001 - e.g. the old shared memory not released yet
                self.log(f"chaos: database restart failed ({str(exc).splitlines()[0][:160]}); again")
                time.sleep(1 + attempt)
        else:
            raise SystemExit("chaos: the database did not come back")
        self.done.append(faults.DATABASE)
        self.log(f"chaos: database back on its port after {self.args.db_outage:g}s (recovered from its WAL)")

    def kill_broker(self) -> None:
        """Kill at a quiet point, then an operator's recovery: empty broker, `pandaes restore`, components."""
        assert self.system is not None and self.sup is not None and self.system.tansu is not None
        from cli.restore import restore

        cfg = self.system.config()
        self.gate.close()
        try:
            deadline = time.monotonic() + 60
            while self.gate.inside and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.gate.inside or not faults.wait_quiet(cfg, self.sup.names, self.args.quiet_timeout, self.log):
                self.skipped.append("broker (no quiet point)")
                return
            pid = self.system.tansu.pid
            self.system.tansu.kill()
            self.log(f"chaos: KILL -9 broker (pid {pid}): its log is gone; stopping the components to restore it")
            self.stop_watch()
            for proc in self.sup.procs.values():   # their state is in-flight only: no need to wait for a SIGTERM
                faults.kill_tree(proc)
            self.system.restart_broker(kill=True)
            result = restore(cfg, log=self.log, show_progress=False)
            self.sup.start()
            self.start_watch()
            self.submitter.generation += 1
            self.done.append(faults.BROKER)
            self.log(f"chaos: broker back empty, {result.published} events restored, components started again")
        finally:
            self.gate.open()

    # ------------------------------------------------------------------------------------ progress
    def status(self, cfg) -> dict[str, int] | None:
        try:
            with db.connect(cfg) as conn:
                return queries.count_by_status(conn)
        except psycopg.Error:
            return None

    def progress(self, cfg, force: bool = False) -> dict[str, int] | None:
        now = time.monotonic()
        if not force and now - self._last_progress < self.args.progress:
            return None
        self._last_progress = now
        by = self.status(cfg)
        if by is None:
            states = "database unreachable"
        else:
            final = sum(n for s, n in by.items() if s in FINAL_STATES)
            live = " ".join(f"{s}={n}" for s, n in sorted(by.items()) if s not in FINAL_STATES)
            states = f"final {final}/{sum(by.values())}" + (f" ({live})" if live else "")
        print(f"chaos t={now - self.t0:5.0f}s  submitted {len(self.submitter.sent)}/{self.args.jobs}  {states}  "
              f"pilots got {len(self.pilots.received)}  kills {len(self.done)}/{self.args.kills}", flush=True)
        return by

    def finished(self, cfg) -> bool:
        if not self.submitter.done.is_set():
            return False
        by = self.status(cfg)
        if by is None or any(s not in FINAL_STATES for s in by):
            return False
        try:
            with db.connect(cfg) as conn:
                return not invariant_queries.missing(conn, self.submitter.sent)
        except psycopg.Error:
            return False

    # ----------------------------------------------------------------------------------------- run
    def run(self) -> int:
        a = self.args
        state = self.environment()
        cfg = config.load()
        self.system = stack.Infra(cfg, log=self.log, prefer_local=False if a.embedded_db else None).start()
        database = cfg.db.database
        shared_server = self.system.postgres is None   # the run's database is on a server it did not start
        ok = False
        try:
            cfg = self.system.config()
            migrations.migrate(cfg)
            targets = self.targets()
            url = f"http://{cfg.http.host}:{cfg.http.port}"
            self.log(f"chaos: state {state} (component logs in {state / 'logs'}), database {database}, gateway {url}; "
                     f"sent timeout {a.sent_timeout:g}s "
                     f"(watcher every 5 s), seed {a.seed}")
            self.sup = components.Supervisor(self.names, components.child_env(cfg), log=self.log,
                                            log_dir=state / "logs")
            self.sup.start()
            self.start_watch()
            self.wait_gateway(url)
            from services.gateway.auth import dev

            # by default the submissions are spread over most of the kill window: the faults meet work in every state
            every = a.submit_every if a.submit_every is not None else \
                max(0.1, 0.8 * a.duration * a.batch / max(a.jobs, 1))
            self.submitter = Submitter(cfg, a.jobs, a.batch, every, self.gate, self.stop, self.log)
            self.pilots = Pilots(url, a.pilots, dev.headers(cfg, "chaos-pilot", ("pilot",)), self.gate, self.stop,
                                 payload=a.payload)
            plan = faults.schedule(self.rng, a.kills, targets, a.duration)
            self.log("chaos: plan: " + ", ".join(f"{k.target}@{k.at:.0f}s" for k in plan))
            self.t0 = time.monotonic()
            self.submitter.start()
            self.pilots.start()
            shift = 0.0   # time the kills themselves took (a broker kill waits for a quiet point): kept apart
            for k in plan:
                while time.monotonic() - self.t0 < k.at + shift:
                    self.progress(cfg)
                    time.sleep(0.2)
                began = time.monotonic()
                self.kill(k.target)
                shift += time.monotonic() - began
            deadline = time.monotonic() + a.finish_timeout
            while not self.finished(cfg) and time.monotonic() < deadline:
                self.progress(cfg)
                time.sleep(1.0)
            self.progress(cfg, force=True)
            self.stop.set()
            self.pilots.join(60)
            self.submitter.join(30)
            ok = self.report(cfg)
        finally:
            self.stop.set()
            self.gate.open()
            self.stop_watch()
            if self.sup is not None:
                self.sup.stop()
            self.system.stop()
            if ok and not a.keep and shared_server:
                self.drop(database)
            elif not ok:
                self.log(f"chaos: kept for a look: database {database}"
                         f"{' (embedded, in the state folder)' if not shared_server else ''}, logs in {state / 'logs'}")
        return 0 if ok else 1

    def report(self, cfg) -> bool:
        print(f"chaos: {len(self.done)} kills ({', '.join(self.done) or 'none'})"
              + (f"; skipped: {', '.join(self.skipped)}" if self.skipped else ""), flush=True)
        stats = self.pilots.stats
        print(f"chaos: pilots finished {stats.finished} jobs, {stats.no_job} 'no job' answers, "
              f"{len(stats.errors)} failed calls (resent); submitter sent {len(self.submitter.sent)} "
              f"jobs ({self.submitter.retries} retries)", flush=True)
        checks, notes = run_checks(cfg, self.submitter.sent, self.pilots.received)
        for check in checks:
            for line in check.lines():
                print(line, flush=True)
        for note in notes:
            print(f"note  {note}", flush=True)
        ok = all(c.ok for c in checks)
        print(f"chaos: {'PASS' if ok else 'FAIL'} ({sum(c.ok for c in checks)}/{len(checks)} invariants hold)",
              flush=True)
        return ok

    def drop(self, database: str) -> None:
        """A passing run drops its database from a server it did not start (an embedded one keeps it in the
        run's state folder); a failing one keeps it for a look."""
        assert self.system is not None
        admin = self.system.db_url.rsplit("/", 1)[0] + "/postgres" if self.system.db_url else ""
        if admin:
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            except psycopg.Error as exc:
                self.log(f"chaos: could not drop database {database}: {exc}")


def _interrupted(*_: object) -> None:
    raise KeyboardInterrupt   # SIGTERM as Ctrl-C: the run stops what it started on the way out


def cmd_chaos(args: argparse.Namespace) -> int:
    if args.kills and args.duration <= 0:
        raise SystemExit("--duration must be positive when --kills > 0")
    signal.signal(signal.SIGTERM, _interrupted)
    return Chaos(args, log=lambda line: print(line, flush=True)).run()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chaos", help="kill components (and the embedded broker/database) under load, then check the invariants",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--jobs", type=int, default=1000, help="jobs submitted (default 1000)")
    p.add_argument("--kills", type=int, default=30, help="SIGKILLs during --duration (default 30)")
    p.add_argument("--duration", type=float, default=300,
                   help="seconds over which the kills are spread, plus the time the kills take (default 300)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the kill plan (default 1)")
    p.add_argument("--components", default="",
                   help="comma-separated components to run (default: those `pandaes run` starts); the job "
                   "flow's are required")
    p.add_argument("--targets", default="", help="comma-separated components, 'broker', 'database' "
                   "(default: every component run, and the broker and database where this run started them)")
    p.add_argument("--pilots", type=int, default=20, help="concurrent simulated pilots (default 20)")
    p.add_argument("--batch", type=int, default=25, help="jobs per submission (default 25)")
    p.add_argument("--submit-every", type=float, default=None,
                   help="seconds between submissions (default: spread over 80%% of --duration)")
    p.add_argument("--payload", type=float, default=0.5, help="seconds a simulated payload runs (default 0.5)")
    p.add_argument("--sent-timeout", type=float, default=120,
                   help="watcher's sent timeout for the run (a dispatch whose answer a killed gateway lost)")
    p.add_argument("--db-outage", type=float, default=3, help="seconds the killed database stays down (default 3)")
    p.add_argument("--quiet-timeout", type=float, default=60,
                   help="seconds to wait for a quiet point before killing the broker (default 60)")
    p.add_argument("--finish-timeout", type=float, default=600,
                   help="seconds to wait after the last kill for every job to be final (default 600)")
    p.add_argument("--progress", type=float, default=5, help="seconds between progress lines (default 5)")
    p.add_argument("--embedded-db", action="store_true",
                   help="start an embedded PostgreSQL even if one answers on 127.0.0.1:5432 (so it can be killed)")
    p.add_argument("--state-dir", default="", help="state directory of the run (default: <state dir>/chaos)")
    p.add_argument("--keep", action="store_true", help="keep the run's database even when every invariant holds")
    p.set_defaults(fn=cmd_chaos)

