"""`pandaes`: run the system, submit jobs, send commands, and look at what happened.

Commands that talk to a running system find it through the endpoints file `make run` writes in the
state directory, or through PANDAES_KAFKA / PANDAES_DB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import signal
import sys
import threading
from pathlib import Path

import msgspec

from cli import components, listen_check, ready
from cli.restore import RestoreError, check_at_start
from core import bus, config, db, logs, metrics
from core.bus import CommandSender, OutcomeWaiter
from core.states import SUBMIT_TRIGGERS, JobStatus
from devenv import endpoints, stack
from projections import queries
from schemas.jobspec import JobSpec, SpecError, job_from_dict, jobs_from_client_json
from schemas.messages import Command, Kill, Rejected, Submit, decode_command
from services import migrations

# Modules that add subcommands: each has ``register(subparsers)``; its commands set ``fn``.
EXTENSIONS: list[str] = ["cli.daemon", "cli.configure", "cli.pilot_sim", "cli.replay", "cli.token", "cli.deadletters",
                         "cli.chaos", "bench.command"]


def cfg_for_clients() -> config.Config:
    cfg = endpoints.config_for_running_system(config.load())
    if not cfg.kafka.bootstrap or not cfg.db.url:
        raise SystemExit("no running pandaes found: start it with `make run` (or `pandaes run`), "
                         "or set PANDAES_KAFKA and PANDAES_DB")
    return cfg


# ------------------------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    names = args.components or components.default_components(config.load())
    for name in names:
        components.resolve(name)
    held = listen_check.held_ports(config.load(), names)
    if held:
        for line in held:
            print(f"pandaes run: {line}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    system = stack.Infra(config.load(), log=print).start()
    sup = None
    try:
        cfg = system.config()
        for version in migrations.migrate(cfg):
            print(f"migration {version} applied")
        # a broker that lost its log under non-empty projections: restore it (embedded) or stop, never diverge
        check_at_start(cfg, embedded=system.tansu is not None, log=print)
        ports = metrics.metrics_ports(cfg, names) if cfg.metrics.enabled else {}
        sup = components.Supervisor(names, components.child_env(cfg), log=print, metrics_ports=ports)
        sup.start()
        ready.start(cfg, names, stop)   # one line once the ledger and the services hold their partitions
        print(f"pandaes running: kafka={cfg.kafka.bootstrap} db={cfg.db.url}")
        if cfg.metrics.enabled:
            where = metrics.urls(cfg, ports, names)
            endpoints.add_to_endpoints(cfg, metrics=where)
            print("metrics: " + "  ".join(f"{n}={u}" for n, u in where.items()))
        if "gateway" in names:
            base = f"http://{cfg.http.host}:{cfg.http.port}"
            print(f"gateway: {base}  (pilots: {base}/server/panda, panda-client: PANDA_URL_SSL={base}/server/panda,"
                  f" queuedata: {base}/cache/schedconfig/LOCAL.all.json)")
        if "monitor" in names:
            print(f"monitor: http://{cfg.monitor.host}:{cfg.monitor.port}/jobs")
        if "gateway" in names:
            importlib.import_module("cli.token").announce(cfg)
        print(f"state: {cfg.state_dir}   other shells: .venv/bin/pandaes status|history|submit …")
        print(f"components: {', '.join(names)}   (Ctrl-C stops everything)")
        sup.watch(stop)
    finally:
        print("stopping …")
        if sup:
            sup.stop()
        system.stop()
    return 0


def cmd_component(args: argparse.Namespace) -> int:
    cfg = config.load()
    logs.configure(cfg, args.name)   # [log] format = "text" | "json" (PANDAES_LOG_FORMAT)
    bus.name_clients(args.name)
    components.run_in_process(args.name, cfg)
    return 0


# ---------------------------------------------------------------------------------------- writes
def _load_jobs(path: str) -> list[JobSpec]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{path}: not JSON: {exc}") from None
    if isinstance(data, dict) and "jobs" in data:
        data = data["jobs"]
    if isinstance(data, str) or (isinstance(data, list) and data and isinstance(data[0], list)):
        return jobs_from_client_json(data if isinstance(data, str) else json.dumps(data))
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise SystemExit(f"{path}: expected a job object or a non-empty list of them")
    jobs = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise SystemExit(f"{path}: job {i} is not an object")
        try:
            jobs.append(job_from_dict(item))
        except SpecError as exc:
            raise SystemExit(f"{path}: job {i}: {exc}") from None
    return jobs


def allocate_panda_ids(cfg: config.Config, n: int) -> list[int]:
    with db.connect(cfg) as conn:
        return queries.next_pandaids(conn, n)


def send_and_wait(cfg: config.Config, cmds: list[Command], timeout: float) -> dict[str, object]:
    """Send commands and collect the ledger's answer to each (None where none came in time)."""
    waiter = OutcomeWaiter(cfg)
    sender = CommandSender(cfg)
    try:
        futures = {c.id: waiter.expect(c.id) for c in cmds}
        sender.send_many(cmds)
        sender.flush()
        out: dict[str, object] = {}
        for cid, fut in futures.items():
            try:
                out[cid] = fut.result(timeout)
            except Exception:
                out[cid] = None
        return out
    finally:
        sender.close()
        waiter.close()


def _print_outcomes(cmds: list[Command], outcomes: dict[str, object]) -> int:
    bad = 0
    for c in cmds:
        out = outcomes.get(c.id)
        if out is None:
            print(f"{c.PandaID}\tno answer from the ledger in time (is `pandaes run` up?)")
            bad += 1
        elif isinstance(out, Rejected):
            print(f"{c.PandaID}\trejected ({out.code}): {out.reason}")
            bad += 1
        else:
            print(f"{c.PandaID}\t{out.from_state} -> {out.to_state}\tseq {out.seq}")
    return 1 if bad else 0


def cmd_submit(args: argparse.Namespace) -> int:
    jobs = _load_jobs(args.file)
    cfg = cfg_for_clients()
    ids = allocate_panda_ids(cfg, len(jobs))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    cmds: list[Command] = [
        Submit(PandaID=pid, actor=f"user:{args.user}", to=args.to,
               job=msgspec.structs.replace(job, PandaID=pid, creationTime=job.creationTime or now))
        for pid, job in zip(ids, jobs, strict=True)
    ]
    return _print_outcomes(cmds, send_and_wait(cfg, cmds, args.timeout))


def cmd_send(args: argparse.Namespace) -> int:
    """Send raw commands (JSON objects, one per line or a list) — for scripts, tests and operators."""
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    text = text.strip()
    items = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line]
    cmds = []
    for i, item in enumerate(items):
        item.setdefault("actor", f"user:{args.user}")
        try:
            cmds.append(decode_command(json.dumps(item).encode()))
        except msgspec.ValidationError as exc:
            raise SystemExit(f"command {i}: {exc}") from None
    return _print_outcomes(cmds, send_and_wait(cfg_for_clients(), cmds, args.timeout))


def cmd_kill(args: argparse.Namespace) -> int:
    cmds: list[Command] = [Kill(PandaID=pid, code=args.code, actor=f"user:{args.user}") for pid in args.ids]
    return _print_outcomes(cmds, send_and_wait(cfg_for_clients(), cmds, args.timeout))


# ----------------------------------------------------------------------------------------- reads
def cmd_status(args: argparse.Namespace) -> int:
    cfg = cfg_for_clients()
    with db.connect(cfg) as conn:
        rows = queries.jobs(conn, args.ids, ("status", "seq", "attempt_nr", "computing_site", "command_to_pilot",
                                             "modification_time"))
    if args.json:
        print(json.dumps([rows.get(i) or {"pandaid": i, "status": "notfound"} for i in args.ids], default=str))
        return 0 if len(rows) == len(set(args.ids)) else 1
    print(f"{'PandaID':>10}  {'status':<12} {'seq':>4} {'attempt':>7}  {'site':<14} modified")
    for pid in args.ids:
        r = rows.get(pid)
        if r is None:
            print(f"{pid:>10}  {'notfound':<12}")
            continue
        print(f"{pid:>10}  {r['status']:<12} {r['seq']:>4} {r['attempt_nr']:>7}  "
              f"{(r['computing_site'] or '-'):<14} {r['modification_time']:%Y-%m-%d %H:%M:%S}")
    return 0 if len(rows) == len(set(args.ids)) else 1


def _summary(body: dict) -> str:
    parts = []
    if body.get("type") == "submitted":
        job = body.get("job", {})
        parts.append(f"site={job.get('computingSite')} files={len(job.get('Files', []))}")
    for key in ("attrs",):
        if body.get(key):
            parts.append(" ".join(f"{k}={v}" for k, v in list(body[key].items())[:6]))
    for key in ("files",):
        if body.get(key):
            parts.append(f"{len(body[key])} file(s)")
    for key in ("kill_code", "pilot_state", "reply", "reason"):
        if body.get(key) not in (None, ""):
            parts.append(f"{key}={body[key]}")
    return "; ".join(parts)


def cmd_history(args: argparse.Namespace) -> int:
    cfg = cfg_for_clients()
    with db.connect(cfg) as conn:
        rows = queries.history(conn, args.id)
    if not rows:
        print(f"no events for PandaID {args.id}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r["body"] for r in rows]))
        return 0
    print(f"{'seq':>4}  {'time (UTC)':<23} {'actor':<28} {'action':<18} transition")
    for r in rows:
        arrow = f"{r['from_state']} -> {r['to_state']}"
        print(f"{r['seq']:>4}  {r['time']:%Y-%m-%d %H:%M:%S.%f}"[:-3] + f" {r['actor'][:28]:<28} "
              f"{(r['action'] or r['type']):<18} {arrow:<26} {_summary(r['body'])}")
    return 0


# ------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pandaes", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="start broker, database and components (the default set without names)")
    p.add_argument("components", nargs="*", help=f"any of: {', '.join(components.COMPONENTS)} "
                   f"(default: {' '.join(components.DEFAULT)}, the projector only with [reactors] projector = "
                   "false)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("component")  # internal: `pandaes run` starts each component this way (no help: hidden)
    p.add_argument("name")
    p.set_defaults(fn=cmd_component)

    p = sub.add_parser("submit", help="submit jobs from a JSON file (job object, list, or panda-client format)")
    p.add_argument("file", help="path, or - for standard input")
    # .value: the plain string, which a Submit leaves out of the message as its default
    p.add_argument("--to", choices=list(SUBMIT_TRIGGERS), default=JobStatus.DEFINED.value)
    p.add_argument("--user", default="cli")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(fn=cmd_submit)

    p = sub.add_parser("send", help="send raw commands (JSON) and print the ledger's verdicts")
    p.add_argument("file", help="path, or - for standard input")
    p.add_argument("--user", default="cli")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(fn=cmd_send)

    p = sub.add_parser("kill", help="kill jobs (PanDA kill codes with --code)")
    p.add_argument("ids", nargs="+", type=int)
    p.add_argument("--code", type=int, default=None)
    p.add_argument("--user", default="cli")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(fn=cmd_kill)

    p = sub.add_parser("status", help="current state of jobs")
    p.add_argument("ids", nargs="+", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("history", help="every event of a job, in order, with actor and time")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_history)

    for module in EXTENSIONS:
        importlib.import_module(module).register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except RestoreError as exc:   # `make run` restoring a lost embedded log, or `pandaes restore`: say why, no trace
        print(f"pandaes {args.command}: restore refused: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from cli import outage
        line = outage.describe(exc)
        if line is None:
            raise
        print(f"pandaes {args.command}: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
