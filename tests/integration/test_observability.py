"""A running system observed from outside: every component's /metrics scraped (the counters moved with the
work) and its JSON log lines parsed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from helpers import wait_until
from observed_system import RunningSystem, _get, running_system
from prometheus_client.parser import text_string_to_metric_families

from core import config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[RunningSystem]:
    yield from running_system(tmp_path_factory)


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
    # the projections applied in the reactors' process: no projector process of its own ([reactors] projector)
    assert set(where) >= {"ledger", "reactors", "daemon", "gateway", "monitor"} and "projector" not in where
    assert where["gateway"] == f"{system.url}/metrics"
    text = system.log_path.read_text()
    assert "metrics: " in text and where["ledger"] in text
    assert f"monitor: {system.monitor}/jobs" in text
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
    claims = int(config.load().gateway.claim_pool_size)   # the system runs on the defaults; opened whole
    assert total(gateway, "pandaes_db_pool_connections", pool="gateway-claims", kind="size") == claims
    assert total(gateway, "pandaes_getjob_claim_wait_seconds_count") >= 2   # each getJob that claimed
    # the reactors' process applied everything to the projections, and says so by position and by lag
    reactors_url = where["reactors"]
    events = total(ledger, "pandaes_ledger_events_total")

    def consumed() -> float:
        return total(scrape(reactors_url), "pandaes_consumer_records_total")
    wait_until(lambda: consumed() >= events, 30, 0.2, "the reactors' consumer read every event")
    reactors = scrape(reactors_url)           # the projections, the setupper and the other reactors, one consumer
    assert total(reactors, "pandaes_projection_position", projection="jobs") >= events
    wait_until(lambda: total(scrape(reactors_url), "pandaes_consumer_lag", group="pandaes-reactors") == 0,
               30, 0.5, "reactors lag 0")
    assert total(reactors, "pandaes_service_commands_total", service="setupper") >= 3
    assert total(reactors, "pandaes_consumer_position", group="pandaes-reactors") >= events - 20


def test_component_logs_are_json_lines_with_context(system: RunningSystem):
    lines = [ln for ln in system.log_path.read_text().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]          # every component line parses
    assert {"ledger", "reactors", "gateway"} <= {r["component"] for r in records}
    dispatched = [r for r in records if r["component"] == "gateway" and "dispatched" in r["message"]]
    assert len(dispatched) == 2
    for r in dispatched:
        assert r["PandaID"] in system.ids and r["command_id"] and r["level"] == "INFO"
