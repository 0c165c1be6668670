"""The whole system as an operator starts it: `pandaes run` (what `make run` calls), then jobs submitted
with the CLI and run by simulated pilots over HTTP — both data paths, to finished, blocks closed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from helpers import gateway_answers, wait_until

from core.ports import free_port
from devenv.endpoints import ENDPOINTS_FILE

pytestmark = pytest.mark.slow


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _job(name: str, inputs: list[str]) -> dict:
    files = [{"lfn": f"out.{name}", "type": "output", "dataset": "sys.out", "scope": "test"},
             {"lfn": f"log.{name}", "type": "log", "dataset": "sys.log", "scope": "test"}]
    files += [{"lfn": lfn, "type": "input", "dataset": "sys.in", "scope": "test"} for lfn in inputs]
    return {"jobName": name, "transformation": "run.sh", "jobParameters": "x", "prodSourceLabel": "managed",
            "computingSite": "LOCAL", "attemptNr": 1, "maxAttempt": 1, "Files": files}


def test_make_run_runs_jobs_through_both_data_paths(tmp_path: Path):
    state = tmp_path / "state"
    port = free_port()
    database = f"pandaes_sys_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PANDAES_STATE_DIR": str(state), "PANDAES_HTTP_PORT": str(port),
           "PANDAES_DB_DATABASE": database, "PANDAES_PLUGINS_LOCAL_TRANSFER_DELAY": "0.5"}
    for var in ("PANDAES_KAFKA", "PANDAES_DB"):
        env.pop(var, None)
    # an input that is elsewhere (another storage endpoint): the setupper must dispatch it
    elsewhere = state / "storage" / "REMOTE_DISK" / "sys.in" / "in.remote"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_text("remote input\n")
    url = f"http://127.0.0.1:{port}"
    run = subprocess.Popen([sys.executable, "-m", "cli.main", "run"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    db_url = None
    try:
        wait_until(lambda: gateway_answers(url, run), 90, 0.5, "the gateway of `pandaes run`")
        db_url = json.loads((state / ENDPOINTS_FILE).read_text())["db"]
        jobs = tmp_path / "jobs.json"
        jobs.write_text(json.dumps([_job("local", []), _job("moved", ["in.remote"])]))
        out = _cli(env, "submit", str(jobs))
        assert out.returncode == 0, out.stdout + out.stderr
        ids = [int(line.split()[0]) for line in out.stdout.splitlines()]
        assert len(ids) == 2

        def states() -> dict[int, str]:
            res = _cli(env, "status", "--json", *map(str, ids))
            return {r["pandaid"]: r["status"] for r in json.loads(res.stdout)}

        wait_until(lambda: set(states().values()) == {"activated"}, 90, 0.5, "both jobs activated")
        sim = _cli(env, "pilot-sim", "--site", "LOCAL", "--pilots", "2", "--jobs", "1", "--url", url,
                   "--payload", "0.5", "--heartbeat", "0.3")
        assert sim.returncode == 0, sim.stdout + sim.stderr
        wait_until(lambda: set(states().values()) == {"finished"}, 90, 0.5, "both jobs finished")

        history = json.loads(_cli(env, "history", "--json", str(ids[1])).stdout)
        path = [e["to_state"] for e in history]
        assert path[:3] == ["defined", "assigned", "activated"], path
        assert path[-1] == "finished" and "holding" in path
        assert [e["to_state"] for e in json.loads(_cli(env, "history", "--json", str(ids[0])).stdout)][:2] == [
            "defined", "activated"]
        actors = {e["actor"].split(":")[0] for e in history}
        assert {"user", "service", "pilot"} <= actors, actors

        def blocks() -> dict[str, tuple[str, str]]:
            with psycopg.connect(db_url) as conn:
                return {name: (kind, status) for name, kind, status in conn.execute(
                    "SELECT name, type, status FROM datasets WHERE type IN ('sub', 'destination')")}
        try:
            wait_until(lambda: {s for _, s in blocks().values()} == {"closed"}, 60, 0.5, "output blocks closed")
        finally:
            print(blocks())
        kinds = [kind for kind, _ in blocks().values()]
        assert kinds.count("destination") == 2 and kinds.count("sub") >= 2     # sys.out and sys.log, with subs
    finally:
        run.send_signal(signal.SIGINT)
        try:
            code = run.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()
            code = None
        log = run.stdout.read() if run.stdout else ""
        if db_url:
            with psycopg.connect(db_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert code == 0, log[-3000:]
    assert "pandaes running" in log
