"""A running system to observe from outside: `pandaes run` (every component, the monitor included) with JSON
logs, three jobs of task 4242 submitted with the CLI, two of them run to finished by simulated pilots, the
third (a user job) left activated. Used by the metrics, log, monitor and browser tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from helpers import gateway_answers, wait_until

from core.ports import free_port
from devenv.endpoints import ENDPOINTS_FILE


@dataclass
class RunningSystem:
    env: dict[str, str]
    url: str
    monitor: str
    log_path: Path
    endpoints: dict
    ids: list[int]

    def cli(self, *args: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, input=stdin)

    def states(self) -> dict[int, str]:
        res = self.cli("status", "--json", *map(str, self.ids))
        return {r["pandaid"]: r["status"] for r in json.loads(res.stdout)}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _job(name: str, label: str = "managed") -> dict:
    files = [{"lfn": f"out.{name}", "type": "output", "dataset": "obs.out", "scope": "test"},
             {"lfn": f"log.{name}", "type": "log", "dataset": "obs.log", "scope": "test"}]
    return {"jobName": name, "transformation": "run.sh", "jobParameters": "x", "prodSourceLabel": label,
            "computingSite": "LOCAL", "attemptNr": 1, "maxAttempt": 1, "jediTaskID": 4242, "Files": files}


def running_system(tmp_path_factory) -> Iterator[RunningSystem]:
    """Start the system, yield it with its jobs run, stop it and drop its database."""
    tmp = tmp_path_factory.mktemp("observed")
    state = tmp / "state"
    port, monitor_port = free_port(), free_port()
    database = f"pandaes_obs_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PANDAES_STATE_DIR": str(state), "PANDAES_HTTP_PORT": str(port),
           "PANDAES_DB_DATABASE": database, "PANDAES_PLUGINS_LOCAL_TRANSFER_DELAY": "0.2",
           "PANDAES_LOG_FORMAT": "json", "PANDAES_MONITOR_PORT": str(monitor_port)}
    for var in ("PANDAES_KAFKA", "PANDAES_DB"):
        env.pop(var, None)
    url = f"http://127.0.0.1:{port}"
    log_path = tmp / "run.log"
    with open(log_path, "w") as out:
        run = subprocess.Popen([sys.executable, "-m", "cli.main", "run"], env=env, stdout=out,
                               stderr=subprocess.STDOUT, text=True)
    db_url = None
    try:
        wait_until(lambda: gateway_answers(url, run), 90, 0.5, "the gateway of `pandaes run`")
        endpoints = wait_until(lambda: (lambda d: d if "metrics" in d else None)(
            json.loads((state / ENDPOINTS_FILE).read_text())), 30, 0.2, "metrics in the endpoints file")
        db_url = endpoints["db"]
        jobs = tmp / "jobs.json"
        jobs.write_text(json.dumps([_job("obs-a"), _job("obs-b"), _job("obs-c", "user")]))
        sys_ = RunningSystem(env, url, f"http://127.0.0.1:{monitor_port}", log_path, endpoints, [])
        out = sys_.cli("submit", str(jobs))
        assert out.returncode == 0, out.stdout + out.stderr
        sys_.ids = [int(line.split()[0]) for line in out.stdout.splitlines()]
        wait_until(lambda: set(sys_.states().values()) == {"activated"}, 90, 0.5, "jobs activated")
        sim = sys_.cli("pilot-sim", "--site", "LOCAL", "--pilots", "1", "--jobs", "2", "--url", url,
                       "--payload", "0.2", "--heartbeat", "0.2")
        assert sim.returncode == 0, sim.stdout + sim.stderr
        wait_until(lambda: sorted(sys_.states().values()).count("finished") == 2, 90, 0.5, "two jobs finished")
        yield sys_
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(60)
        except subprocess.TimeoutExpired:
            run.kill()
        if db_url:
            with psycopg.connect(db_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


