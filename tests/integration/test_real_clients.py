"""The real clients against the gateway: panda-client 2.2.0 and the PanDA pilot 3.7.0.36.

Both are downloaded from PyPI at run time (panda-client through the ``test`` extra of pyproject.toml, the
pilot sdist into the pytest cache) and talk to a gateway on a free loopback port — nothing is faked.

SAFETY: pilot3 kills every process of its user whose parent is pid 1 when a payload ends
(PANDA-CLIENTS §0). ``start_pilot`` is the ONLY way this file starts it, and it always sets
``PILOT_NOKILL=1`` AND runs it in its own PID namespace (``unshare --pid --fork --mount-proc``); if no PID
namespace can be made, the pilot tests are skipped, never run unisolated.

The pilots of this module (one job run to the end, one job killed while running) are started together
by a module fixture and run side by side, on two queues of one system, so the module takes about as long
as the slower pilot (the killed one: a heartbeat interval plus the pilot's ~2 min wait after an aborted
payload) instead of the sum.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Background
from gateway_support import TRF, System, start_system
from helpers import wait_until

from core import db
from core.bus import CommandSender
from core.topics import ensure_topics
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Submit, Transition
from services.gateway.auth import dev

try:  # the adder turns the pilot's final report (holding) into finished / cancelled
    from services.loop import ServiceLoop
    from services.reactors.adder import Adder, SqlAdderView
except ImportError:  # pragma: no cover - a tree without the flow services: the tests stop at holding
    Adder = None

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent / "realclients"
ROOT = HERE.parents[2]
PILOT_VERSION = "3.7.0.36"
QUEUE = "LOCAL_PILOT"          # the job that runs to the end
KILL_QUEUE = "LOCAL_PILOT_KILL"  # the job killed while running
HEARTBEAT = 20                 # pilot.cfg heartbeat (s); the default 1800 would never show a kill
PILOT_TIMEOUT = 330            # hard limit of one pilot run (timeout(1) around unshare)


# ------------------------------------------------------------------------------------------- system
@pytest.fixture(scope="module")
def system(base_cfg, template_db):
    """Ledger + projector + gateway (+ adder if the tree has it) on own topics and database, per module."""
    admin = base_cfg.db.url.rsplit("/", 1)[0] + "/postgres"
    tag = f"rc{os.getpid()}"
    dbname = f"pandaes_{tag}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}" TEMPLATE "{template_db}"')
    cfg = base_cfg.replace(
        kafka={"commands_topic": f"{tag}.job-commands", "events_topic": f"{tag}.job-events",
               "rejected_topic": f"{tag}.job-commands.rejected", "group_prefix": tag},
        db={"url": admin.rsplit("/", 1)[0] + f"/{dbname}"},
        gateway={"default_queues": ["LOCAL", QUEUE, KILL_QUEUE]},
    )
    ensure_topics(cfg)
    bg = Background()
    try:
        sys_ = start_system(cfg, bg)
        if Adder is not None:
            view = SqlAdderView(cfg)
            loop = ServiceLoop(cfg, Adder(cfg.adder.merge_tag), view, tick_every=1.0)

            def run_adder(stop):
                try:
                    loop.run(stop)
                finally:
                    loop.close()
                    view.close()

            bg.start(run_adder, "adder")
        yield sys_
    finally:
        bg.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    assert not bg.errors, bg.errors


def submit_pilot_job(system: System, site: str, sleep: int) -> int:
    """A managed job with one output and a log file, submitted and activated; waits for `activated`."""
    with db.connect(system.cfg) as conn:
        (pid,) = conn.execute("SELECT nextval('pandaid_seq')").fetchone()
    endpoint = f"{site}_DATADISK"   # where the adder registers outputs of a queue without a sites row
    # GUIDs are declared for the outputs as the setupper does (the generic pilot reports only the log's)
    job = JobSpec(computingSite=site, prodSourceLabel="managed", attemptNr=1, transformation=TRF,
                  jobParameters=f"hello {sleep} 0 out.{pid}.txt", jobName=f"pilot.job.{pid}", taskID=77,
                  jobsetID=1, jobDefinitionID=1, currentPriority=1000, coreCount=1,
                  VO=system.cfg.auth.dev_vo,   # production managers act on the jobs of their own VO
                  Files=[FileSpec(lfn=f"out.{pid}.txt", type="output", dataset="test.out",
                                  destinationDBlock="test.out_sub01", scope="test", destinationSE=endpoint,
                                  GUID=f"0e1f2a3b-4c5d-4e6f-8a9b-{pid:012d}"),
                         FileSpec(lfn=f"log.{pid}.tgz", type="log", dataset="test.log",
                                  destinationDBlock="test.log_sub01", scope="test", destinationSE=endpoint,
                                  GUID=f"8b9e1f0c-2a6a-4a43-9a0e-{pid:012d}")])
    sender = CommandSender(system.cfg)
    try:
        sender.send(Submit(PandaID=pid, actor="user:test-submitter", job=job))
        sender.send(Transition(PandaID=pid, action="activate", actor="service:test-activator"))
        sender.flush()
    finally:
        sender.close()
    system.wait_status([pid], "activated")
    return pid


def history(system: System, pid: int) -> str:
    """`pandaes history PID` as an operator runs it."""
    env = {**os.environ, "PANDAES_DB": system.cfg.db.url, "PANDAES_KAFKA": system.cfg.kafka.bootstrap}
    out = subprocess.run([sys.executable, "-m", "cli.main", "history", str(pid)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ------------------------------------------------------------------------------------- panda-client
def run_client(system: System, subject: str, workdir: Path, *args: str,
               roles: tuple[str, ...] | None = ("user",)) -> dict[str, Any]:
    """realclients/client_script.py with panda-client pointed at the gateway, as ``subject`` with ``roles``
    (an OIDC token of the dev issuer, sent as PANDA_AUTH=oidc sends it: Bearer + Origin); roles None: anonymous."""
    pytest.importorskip("pandaclient", reason="panda-client 2.2.0 comes with the test extra: pip install -e '.[test]'")
    server = f"{system.url}/server/panda"
    env = {**os.environ, "PANDA_URL": server, "PANDA_URL_SSL": server, "PANDACACHE_URL": server,
           "PANDA_BEHIND_REAL_LB": "1", "PANDA_CONFIG_ROOT": str(workdir)}
    if roles is not None:
        env.update(PANDA_AUTH="oidc", PANDA_AUTH_VO=system.cfg.auth.dev_vo,
                   PANDA_AUTH_ID_TOKEN=dev.mint(system.cfg, subject, roles))
    proc = subprocess.run([sys.executable, str(HERE / "client_script.py"), *args], env=env, cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(line[len("RESULT "):])


def test_panda_client_submit_query_kill(system, tmp_path):
    t0 = time.monotonic()
    res = run_client(system, "client-tester", tmp_path, "LOCAL")
    elapsed = time.monotonic() - t0
    print(f"panda-client: six calls in {elapsed:.1f}s (incl. interpreter start): {json.dumps(res)[:400]}")

    assert res["hello"] == [0, "alive"]
    status, submitted = res["submitJobs"]
    assert status == 0 and len(submitted) == 2
    ids = [row[0] for row in submitted]
    assert all(isinstance(i, int) and i > 0 for i in ids) and len(set(ids)) == 2
    # analysis/user jobs: [PandaID, jobDefinitionID, {"jobsetID": ...}] as PanDA's storeJobs answers
    assert [row[1] for row in submitted] == [1, 1] and all(isinstance(row[2], dict) for row in submitted)

    for call in ("getJobStatus", "getFullJobStatus"):
        status, specs = res[call]
        assert status == 0, call
        assert specs[2] is None, f"{call}: an unknown PandaID must come back as None"
        for n, (pid, spec) in enumerate(zip(ids, specs[:2], strict=True), start=1):
            assert spec["PandaID"] == pid and spec["jobStatus"] == "defined", spec
            assert spec["jobName"] == f"client.test.job.{n}" and spec["computingSite"] == "LOCAL"
            assert spec["prodUserID"] == "client-tester"
            assert spec["files"] == [[f"log.client.{n}.tgz", "log"]]
    assert res["setDebugMode"][0] == 0
    assert res["killJobs"] == [0, [True]]
    # another user's kill is refused (HTTP 403 naming the owner; panda-client logs the body and answers
    # its communication failure, 255) and changes nothing (the status check below)
    refused = run_client(system, "intruder", tmp_path, "kill", str(ids[1]))["killJobs"]
    assert refused == [255, None], refused
    assert run_client(system, "", tmp_path, "kill", str(ids[1]), roles=None)["killJobs"] == [255, None]  # anonymous

    system.wait_status(ids[:1], "cancelled", 30)
    assert system.status(ids[1:]) == {ids[1]: "defined"}
    events = system.events(ids[0])
    assert [e["to_state"] for e in events] == ["defined", "cancelled"]
    assert all(e["actor"] == "user:client-tester" for e in events), events
    debug = system.events(ids[1])[-1]
    assert debug["actor"] == "user:client-tester" and debug["body"]["attrs"]["specialHandling"] == "dm"
    shown = history(system, ids[0])
    assert "user:client-tester" in shown and "cancelled" in shown, shown


def test_panda_client_task_calls(system, tmp_path):
    """killTask / getPandaIDsWithTaskID as panda-client sends them (task_id): every job of the task killed
    through the ledger; a user may kill only a task of jobs they own."""
    task_id = 6060
    with db.connect(system.cfg) as conn:
        ids = [r[0] for r in conn.execute("SELECT nextval('pandaid_seq') FROM generate_series(1, 2)")]
    sender = CommandSender(system.cfg)
    try:
        for pid in ids:
            sender.send(Submit(PandaID=pid, actor="user:task-owner", job=JobSpec(
                computingSite="LOCAL", prodSourceLabel="user", attemptNr=1, transformation=TRF, jediTaskID=task_id,
                prodUserID="task-owner", jobName=f"task.job.{pid}")))
        sender.flush()
    finally:
        sender.close()
    system.wait_status(ids, "defined")
    refused = run_client(system, "intruder", tmp_path, "task", str(task_id))
    assert refused["killTask"] == [255, None], refused   # HTTP 403: none of the jobs is the intruder's
    assert system.status(ids) == dict.fromkeys(ids, "defined")
    res = run_client(system, "task-owner", tmp_path, "task", str(task_id))
    assert res["getPandaIDsWithTaskID"] == [0, ids], res
    assert res["killTask"] == [0, [True, 0]], res
    system.wait_status(ids, "cancelled", 30)
    assert all(e["body"]["kill_code"] == 50 for e in (system.events(pid)[-1] for pid in ids))


# -------------------------------------------------------------------------------------- real pilot
def _pilot_source(cache_dir: Path) -> Path:
    """The pilot sdist from PyPI, unpacked once into the pytest cache (not part of the tree)."""
    src = cache_dir / f"panda-pilot-{PILOT_VERSION}"
    if (src / "pilot.py").is_file():
        return src
    dl = cache_dir / "download"
    shutil.rmtree(dl, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                           "--disable-pip-version-check", "-q", "-d", str(dl), f"panda-pilot=={PILOT_VERSION}"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"cannot download panda-pilot {PILOT_VERSION} from PyPI: {proc.stderr.strip()[-300:]}")
    (archive,) = dl.glob("panda*pilot-*.tar.gz")
    unpack = cache_dir / f"unpack-{os.getpid()}"
    shutil.rmtree(unpack, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(unpack, filter="data")
    assert (unpack / src.name / "pilot.py").is_file(), f"unexpected sdist layout in {archive}"
    try:  # atomic: another session may unpack at the same time
        (unpack / src.name).rename(src)
    except OSError:
        assert (src / "pilot.py").is_file()
    shutil.rmtree(unpack, ignore_errors=True)
    return src


def _unshare_prefix() -> list[str]:
    """The PID-namespace wrapper that works here; skip (never run unisolated) if none does."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) not found: the pilot is only ever run in its own PID namespace")
    base = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    candidates = [base] if os.geteuid() == 0 else [base[:1] + ["--user", "--map-root-user"] + base[1:], base]
    for prefix in candidates:
        probe = subprocess.run([*prefix, "sh", "-c", "test $$ = 1"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    pytest.skip("cannot create a PID namespace (unshare --pid --fork --mount-proc): the pilot is not run")


# pilot/util/default.cfg lines changed for the local gateway (PANDA-CLIENTS Appendix A)
def _pilot_cfg(default_cfg: str, base: str) -> str:
    changes = {
        "pandaserver: https://pandaserver.cern.ch:25443": f"pandaserver: {base}",
        "iddsserver: https://pandaserver.cern.ch:25443": f"iddsserver: {base}",
        "heartbeat: 1800": f"heartbeat: {HEARTBEAT}",
        "debug_heartbeat: 60": f"debug_heartbeat: {HEARTBEAT}",
        "update_sleep: 120": "update_sleep: 5",
        "queuedata_url: http://pandaserver.cern.ch:25085/cache/schedconfig/{pandaqueue}.all.json":
            f"queuedata_url: {base}/cache/schedconfig/{{pandaqueue}}.all.json",
        "queues_url: https://atlas-cric.cern.ch/cache/schedconfig/{pandaqueue}.json":
            f"queues_url: {base}/cache/schedconfig/{{pandaqueue}}.all.json",
        "storages_url: https://atlas-cric.cern.ch/cache/ddmendpoints.json":
            f"storages_url: {base}/cache/ddmendpoints.json",
        "url: https://rucio-lb-prod.cern.ch/traces/": f"url: {base}/traces/",
    }
    text = default_cfg
    for old, new in changes.items():
        pattern = re.compile(rf"^{re.escape(old)}\s*$", re.M)
        text, n = pattern.subn(new, text)
        assert n == 1, f"pilot/util/default.cfg: expected one line {old!r}, found {n}"
    return text


@dataclasses.dataclass
class PilotRun:
    queue: str
    pid: int
    run_dir: Path
    proc: subprocess.Popen
    started: float

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return "".join((self.run_dir / n).read_text(errors="replace")[-6000:]
                       for n in ("pilot.stdout", "pilot.stderr") if (self.run_dir / n).exists())

    def stop(self) -> None:
        """Ends the pilot if it is still running: its own process group (timeout → unshare → namespace)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)


def start_pilot(src: Path, harness: Path, run_dir: Path, system: System, queue: str, pid: int,
                unshare: list[str]) -> PilotRun:
    """One pilot for one job: PILOT_NOKILL=1 and its own PID namespace, always (see the module docstring).
    It authenticates as ``pilot-<queue>`` with a dev token file (PANDA_AUTH_TOKEN/PANDA_AUTH_ORIGIN)."""
    base = system.url
    port = base.rsplit(":", 1)[1]
    run_dir.mkdir(parents=True)
    (run_dir / "auth").mkdir()
    (run_dir / "auth" / "pilot.token").write_text(dev.mint(system.cfg, f"pilot-{queue}", ("pilot",)))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PANDA", "HARVESTER", "X509", "OIDC", "PILOT"))}
    env.update(PILOT_NOKILL="1", HARVESTER_PILOT_CONFIG=str(harness / "pilot.cfg"),
               LOCAL_AGIS_SCHEDCONF=str(harness / "schedconf.json"), HARVESTER_WORKDIR=str(harness / "trf"),
               PILOT_PYTHON=sys.executable, PILOT_SRC=str(src), RUN=str(run_dir),
               # pilot3 reads the token file from dirname(PANDA_AUTH_DIR) and sends Bearer + Origin
               PANDA_AUTH_TOKEN="pilot.token", PANDA_AUTH_DIR=str(run_dir / "auth" / "pilot.token"),
               PANDA_AUTH_ORIGIN=system.cfg.auth.dev_vo)
    assert env["PILOT_NOKILL"] == "1" and unshare[:1] == ["unshare"] and "--pid" in unshare
    script = (
        '"$PILOT_PYTHON" "$PILOT_SRC/pilot.py" -q "$0" -w generic --pilot-user generic -j managed -d'
        ' --url http://127.0.0.1 -p "$1"'
        ' --queuedata-url "http://127.0.0.1:$1/cache/schedconfig/{pandaqueue}.all.json"'
        ' --storagedata-url "http://127.0.0.1:$1/cache/ddmendpoints.json"'
        ' -a "$RUN/work" --output-dir "$RUN/out" -x 1; echo "pilot exit code: $?"'
    )
    (run_dir / "work").mkdir()
    (run_dir / "out").mkdir()
    with (run_dir / "pilot.stdout").open("w") as out, (run_dir / "pilot.stderr").open("w") as err:
        proc = subprocess.Popen(["timeout", str(PILOT_TIMEOUT), *unshare, "bash", "-c", script, queue, port],
                                cwd=run_dir, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return PilotRun(queue=queue, pid=pid, run_dir=run_dir, proc=proc, started=time.monotonic())


@dataclasses.dataclass
class Pilots:
    system: System
    finish: PilotRun
    kill: PilotRun
    kill_sent: dict[str, float]


@pytest.fixture(scope="module")
def pilots(system, request, tmp_path_factory):
    """Both pilot jobs, started together; panda-client's killJobs is called by a thread once the job runs."""
    unshare = _unshare_prefix()
    src = _pilot_source(Path(request.config.cache.mkdir("panda-pilot")))
    harness = tmp_path_factory.mktemp("pilot-harness")
    (harness / "trf").mkdir()
    shutil.copy(HERE / "payload.sh", harness / "trf" / "payload.sh")
    (harness / "trf" / "payload.sh").chmod(0o755)
    (harness / "pilot.cfg").write_text(_pilot_cfg((src / "pilot" / "util" / "default.cfg").read_text(), system.url))
    schedconf = {}
    for q in (QUEUE, KILL_QUEUE):
        with urllib.request.urlopen(f"{system.url}/cache/schedconfig/{q}.all.json", timeout=10) as resp:
            schedconf[q] = json.loads(resp.read())
    (harness / "schedconf.json").write_text(json.dumps(schedconf))

    finish_pid = submit_pilot_job(system, QUEUE, 5)
    kill_pid = submit_pilot_job(system, KILL_QUEUE, 60)
    runs = tmp_path_factory.mktemp("pilot-runs")
    finish = start_pilot(src, harness, runs / "finish", system, QUEUE, finish_pid, unshare)
    kill = start_pilot(src, harness, runs / "kill", system, KILL_QUEUE, kill_pid, unshare)
    kill_sent: dict[str, Any] = {}
    client_dir = tmp_path_factory.mktemp("kill-client")

    def killer():
        # kill once the payload runs, through the real client
        try:
            wait_until(lambda: any(e["to_state"] == "running" for e in system.events(kill_pid))
                       or kill.proc.poll() is not None, 200, 0.2, "the kill job running")
            if kill.proc.poll() is not None:
                return
            # the payload itself runs (its first line is in the pilot's payload.stdout), not just the job state
            wait_until(lambda: any("hello from payload" in p.read_text(errors="replace")
                                   for p in (kill.run_dir / "work").rglob("payload.stdout"))
                       or kill.proc.poll() is not None, 60, 0.2, "the kill job's payload running")
            kill_sent["at"] = time.monotonic()   # panda-client's killJobs → POST /api/v1/job/kill
            kill_sent["reply"] = run_client(system, "operator", client_dir, "kill", str(kill_pid),
                                            roles=("production",))["killJobs"]
            # the pilot logs the command of each updateJob reply: watch for it (0.2 s resolution)
            wait_until(lambda: "tobekilled" in (kill.run_dir / "pilot.stdout").read_text(errors="replace")
                       or kill.proc.poll() is not None, HEARTBEAT * 3, 0.2, "tobekilled in the pilot log")
            kill_sent["pilot_saw"] = time.monotonic()
        except BaseException as exc:  # reported by the kill test
            kill_sent["error"] = repr(exc)

    t = threading.Thread(target=killer, name="killer", daemon=True)
    t.start()
    try:
        yield Pilots(system=system, finish=finish, kill=kill, kill_sent=kill_sent)
    finally:
        for run in (finish, kill):
            run.stop()
        t.join(5)


def _updates(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["action"], e["to_state"]) for e in events]


def _show(events: list[dict[str, Any]]) -> str:
    return "\n".join(f"{e['seq']} {e['actor']} {e['action']} {e['to_state']} {json.dumps(e['body'])[:1500]}"
                     for e in events)


def _wait_state(system: System, pid: int, states: tuple[str, ...], timeout: float = 60) -> list[dict[str, Any]]:
    """The job's events once the jobs projection shows one of ``states``."""
    try:
        wait_until(lambda: system.status([pid]).get(pid) in states, timeout, 0.2, f"job {pid} in {states}")
    except AssertionError:
        pytest.fail(f"job {pid} not in {states} after {timeout:.0f}s; its events:\n{_show(system.events(pid))}")
    return system.events(pid)


def _wait_pilot(run: PilotRun, timeout: float) -> str:
    try:
        run.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pilot for {run.pid} still running after {timeout:.0f}s:\n{run.output()}")
    out = run.output()
    assert "pilot exit code: 0" in out, f"pilot for {run.pid} did not exit cleanly:\n{out}"
    return (run.run_dir / "pilot.stdout").read_text(errors="replace")


@pytest.mark.timeout(PILOT_TIMEOUT + 240)   # the pilot's own limit, plus download and set-up
def test_real_pilot_runs_job_to_the_end(pilots):
    system, run = pilots.system, pilots.finish
    _wait_pilot(run, PILOT_TIMEOUT + 30)
    pilot_seconds = time.monotonic() - run.started
    pid = run.pid
    events = _wait_state(system, pid, ("finished", "failed") if Adder is not None else ("holding",))
    states = [e["to_state"] for e in events]
    print(f"real pilot, job {pid}: pilot ran {pilot_seconds:.0f}s; {_updates(events)}")
    assert states[:5] == ["defined", "activated", "sent", "starting", "running"], _show(events)
    last_pilot = states.index("holding")
    assert all(s == "running" for s in states[4:last_pilot]) and last_pilot == len(states) - (Adder is not None) - 1
    # actors: the submitter, the activator, then the pilot's token identity for getJob and every update
    assert events[0]["actor"] == "user:test-submitter" and events[1]["actor"] == "service:test-activator"
    pilot_actor = f"pilot:pilot-{QUEUE}"
    assert events[2]["actor"] == pilot_actor and events[2]["action"] == "dispatch", _show(events[:3])
    assert all(e["actor"] == pilot_actor for e in events[3:last_pilot + 1])
    # the final report: both files with the sizes and checksums the pilot measured, and the job report
    body = events[last_pilot]["body"]
    assert body["pilot_state"] == "finished", body
    report = json.loads(body["job_output_report"])
    assert set(report) == {f"out.{pid}.txt", f"log.{pid}.tgz"}, report
    for lfn, entry in report.items():
        assert int(entry["fsize"]) > 0 and re.fullmatch(r"[0-9a-f]{8}", entry["adler32"]), (lfn, entry)
        # mv stage-out: the surl names --output-dir/<scope>/… (the file itself goes to the pilot's work dir)
        assert Path(entry["surl"]).is_relative_to(run.run_dir / "out") and entry["surl"].endswith(lfn), entry
    assert report[f"log.{pid}.tgz"]["guid"] == f"8b9e1f0c-2a6a-4a43-9a0e-{pid:012d}"
    assert json.loads(body["metadata"]) == {"exitCode": 0, "exitMsg": "OK"}
    assert body["attrs"]["pilotErrorCode"] == 0 and str(body["attrs"]["transExitCode"]) == "0"
    shown = history(system, pid)
    for word in ("activated", "sent", "starting", "running", "holding", pilot_actor[:28], "user:test-submitter"):
        assert word in shown, (word, shown)
    if Adder is None:
        return
    # pilot3's generic user reports "" as the GUID of outputs (it knows only the log's, from logGUID): the
    # adder keeps the declared one and registers both files
    assert report[f"out.{pid}.txt"]["guid"] == ""
    last = events[-1]
    assert last["actor"] == "service:adder" and last["to_state"] == "finished", _show(events)
    assert "service:adder" in shown and "finished" in shown
    with db.connect(system.cfg) as conn:
        files = dict(conn.execute("SELECT lfn, spec FROM files WHERE pandaid = %s", (pid,)).fetchall())
    assert files[f"out.{pid}.txt"]["GUID"] == f"0e1f2a3b-4c5d-4e6f-8a9b-{pid:012d}", files
    assert files[f"out.{pid}.txt"]["fsize"] == report[f"out.{pid}.txt"]["fsize"], files


@pytest.mark.timeout(PILOT_TIMEOUT + 240)   # the pilot's own limit, plus download and set-up
def test_real_pilot_obeys_kill(pilots):
    system, run = pilots.system, pilots.kill
    log = _wait_pilot(run, PILOT_TIMEOUT + 30)
    pid = run.pid
    sent = pilots.kill_sent
    assert "error" not in sent and sent.get("reply") == [0, [True]], sent
    events = _wait_state(system, pid, ("cancelled",) if Adder is not None else ("holding",))
    kill = next(e for e in events if e["action"] == "kill_signal")
    assert kill["actor"] == "user:operator" and kill["body"]["attrs"]["commandToPilot"] == "tobekilled"
    assert "tobekilled" in log, "the pilot never received tobekilled"
    after = events[events.index(kill) + 1:]
    # the pilot's next contact is answered tobekilled; it kills the payload and reports failed, 1144
    assert after[0]["actor"].startswith("pilot:") and after[0]["body"].get("reply") == "tobekilled", _show(after)
    holding = next(e for e in after if e["to_state"] == "holding")
    assert holding["body"]["pilot_state"] == "failed"
    assert holding["body"]["attrs"]["pilotErrorCode"] == 1144, holding["body"]["attrs"]
    assert "payload.stdout" in log or holding["body"].get("job_output_report")
    if Adder is not None:
        assert events[-1]["to_state"] == "cancelled" and events[-1]["actor"] == "service:adder", _show(events)
    server_side = after[0]["body"]["time"] - kill["body"]["time"]
    client_side = sent["pilot_saw"] - sent["at"]
    print(f"real pilot, killed job {pid}: {_updates(events)}")
    print(f"kill -> pilot: {server_side:.1f}s from the kill event to the pilot's next update (answered tobekilled);"
          f" {client_side:.1f}s from starting panda-client's killJobs to `tobekilled` in the pilot log"
          f" (heartbeat {HEARTBEAT}s);"
          f" {holding['body']['time'] - kill['body']['time']:.0f}s from the kill to the pilot's final report")
    assert server_side <= HEARTBEAT + 5
