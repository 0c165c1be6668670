"""A running system observed from outside: `pandaes run` with JSON logs, real jobs run by simulated pilots,
then every component's /metrics scraped (the counters moved with the work) and the log lines parsed."""

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
import pytest
from helpers import wait_until
from prometheus_client.parser import text_string_to_metric_families

from devenv.common import free_port
from devenv.endpoints import ENDPOINTS_FILE

pytestmark = pytest.mark.slow


@dataclass
class RunningSystem:
    env: dict[str, str]
    url: str
    log_path: Path
    endpoints: dict
    ids: list[int]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def states(self) -> dict[int, str]:
        res = self.cli("status", "--json", *map(str, self.ids))
        return {r["pandaid"]: r["status"] for r in json.loads(res.stdout)}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _alive(url: str) -> bool:
    try:
        return bool(_get(f"{url}/api/v1/system/is_alive"))
    except OSError:
        return False


def _job(name: str, label: str = "managed") -> dict:
    files = [{"lfn": f"out.{name}", "type": "output", "dataset": "obs.out", "scope": "test"},
             {"lfn": f"log.{name}", "type": "log", "dataset": "obs.log", "scope": "test"}]
    return {"jobName": name, "transformation": "run.sh", "jobParameters": "x", "prodSourceLabel": label,
            "computingSite": "LOCAL", "attemptNr": 1, "maxAttempt": 1, "jediTaskID": 4242, "Files": files}


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[RunningSystem]:
    tmp = tmp_path_factory.mktemp("observed")
    state = tmp / "state"
    port = free_port()
    database = f"pandaes_obs_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PANDAES_STATE_DIR": str(state), "PANDAES_HTTP_PORT": str(port),
           "PANDAES_DB_DATABASE": database, "PANDAES_PLUGINS_LOCAL_TRANSFER_DELAY": "0.2",
           "PANDAES_LOG_FORMAT": "json"}
    for var in ("PANDAES_KAFKA", "PANDAES_DB"):
        env.pop(var, None)
    url = f"http://127.0.0.1:{port}"
    log_path = tmp / "run.log"
    with open(log_path, "w") as out:
        run = subprocess.Popen([sys.executable, "-m", "cli.main", "run"], env=env, stdout=out,
                               stderr=subprocess.STDOUT, text=True)
    db_url = None
    try:
        wait_until(lambda: _alive(url), 90, 0.5, "the gateway of `pandaes run`")
        endpoints = wait_until(lambda: (lambda d: d if "metrics" in d else None)(
            json.loads((state / ENDPOINTS_FILE).read_text())), 30, 0.2, "metrics in the endpoints file")
        db_url = endpoints["db"]
        jobs = tmp / "jobs.json"
        jobs.write_text(json.dumps([_job("obs-a"), _job("obs-b"), _job("obs-c", "user")]))
        sys_ = RunningSystem(env, url, log_path, endpoints, [])
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


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of one /metrics page."""
    out = {}
    for family in text_string_to_metric_families(_get(url)):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def test_run_prints_and_records_every_components_metrics(system: RunningSystem):
    where = system.endpoints["metrics"]
    assert {"ledger", "projector", "setupper", "activator", "adder", "closer", "retrier", "daemon",
            "gateway"} <= set(where)
    assert where["gateway"] == f"{system.url}/metrics"
    text = system.log_path.read_text()
    assert "metrics: " in text and where["ledger"] in text
    for name, url in where.items():
        assert total(scrape(url), "process_cpu_seconds_total") >= 0, name   # every one answers


def test_counters_move_with_the_work(system: RunningSystem):
    where = system.endpoints["metrics"]
    ledger = scrape(where["ledger"])
    assert total(ledger, "pandaes_ledger_events_total", trigger="submit", to_state="defined") == 3
    assert total(ledger, "pandaes_ledger_events_total", to_state="finished") == 2
    assert total(ledger, "pandaes_ledger_events_total", trigger="dispatch", to_state="sent") == 2
    assert total(ledger, "pandaes_ledger_batch_commands_count") > 0
    assert total(ledger, "pandaes_ledger_transaction_seconds_count") == total(ledger,
                                                                              "pandaes_ledger_batch_commands_count")
    # the third job's pilot asked again and got nothing (user job on a managed pilot) or it was never asked:
    gateway = scrape(where["gateway"])
    assert total(gateway, "pandaes_getjob_total", outcome="job") == 2
    assert total(gateway, "pandaes_http_request_seconds_count", route="/server/panda/getJob", status="200") >= 2
    assert total(gateway, "pandaes_command_verdict_seconds_count", command="PilotUpdate") > 0
    assert total(gateway, "pandaes_db_pool_connections", pool="gateway", kind="size") >= 1
    # the projector applied everything, and says so by position and by lag
    projector_url = where["projector"]
    events = total(ledger, "pandaes_ledger_events_total")

    def projected() -> float:
        return total(scrape(projector_url), "pandaes_consumer_records_total")
    wait_until(lambda: projected() >= events, 30, 0.2, "projector consumed every event")
    projector = scrape(projector_url)
    assert total(projector, "pandaes_projection_position", projection="jobs") >= events
    wait_until(lambda: total(scrape(projector_url), "pandaes_consumer_lag", group="pandaes-projector") == 0,
               30, 0.5, "projector lag 0")
    setupper = scrape(where["setupper"])
    assert total(setupper, "pandaes_service_commands_total", service="setupper") >= 3
    assert total(setupper, "pandaes_consumer_position", group="pandaes-setupper") >= events - 20


def test_component_logs_are_json_lines_with_context(system: RunningSystem):
    lines = [ln for ln in system.log_path.read_text().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]          # every component line parses
    assert {"ledger", "projector", "gateway"} <= {r["component"] for r in records}
    dispatched = [r for r in records if r["component"] == "gateway" and "dispatched" in r["message"]]
    assert len(dispatched) == 2
    for r in dispatched:
        assert r["PandaID"] in system.ids and r["command_id"] and r["level"] == "INFO"
