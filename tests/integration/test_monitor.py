"""The monitor over a running system (`pandaes run`, real jobs), read over HTTP: filters, the timeline
against `pandaes history`, time travel, queues and tasks, and a live event over server-sent events."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from helpers import wait_until
from observed_system import RunningSystem, _get, running_system

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[RunningSystem]:
    yield from running_system(tmp_path_factory)


def _rows(html: str, table: str) -> list[str]:
    body = html.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr[^>]* data-\w+="([^"]+)"', body)


def test_jobs_page_filters_and_counts(system: RunningSystem):
    page = _get(f"{system.monitor}/jobs")
    assert sorted(map(int, _rows(page, "jobs"))) == sorted(system.ids)
    finished = _get(f"{system.monitor}/jobs?status=finished")
    states = system.states()
    assert sorted(map(int, _rows(finished, "jobs"))) == sorted(p for p, s in states.items() if s == "finished")
    assert _rows(_get(f"{system.monitor}/jobs?label=user"), "jobs") == [str(system.ids[2])]
    assert len(_rows(_get(f"{system.monitor}/jobs?task=4242&queue=LOCAL"), "jobs")) == 3
    assert "no jobs match" in _get(f"{system.monitor}/jobs?task=1")
    assert 'data-state="finished"' in page and "all <b>3</b>" in page
    one = _get(f"{system.monitor}/jobs?size=1&sort=pandaid&desc=0")
    assert _rows(one, "jobs") == [str(min(system.ids))] and 'id="next"' in one


def test_job_timeline_matches_history_and_time_travel(system: RunningSystem):
    pid = system.ids[0]
    history = json.loads(system.cli("history", "--json", str(pid)).stdout)
    page = _get(f"{system.monitor}/job/{pid}")
    assert _rows(page, "timeline") == [str(e["seq"]) for e in history]
    for e in history:
        assert f'{e["from_state"]} → {e["to_state"]}' in page
    as_json = json.loads(_get(f"{system.monitor}/job/{pid}/history.json"))
    assert [e["seq"] for e in as_json] == [e["seq"] for e in history]
    then = _get(f"{system.monitor}/job/{pid}?at=1")
    assert 'id="job-state"><span class="state s-defined">' in then and "as it was at seq 1" in then
    now = _get(f"{system.monitor}/job/{pid}")
    assert 'id="job-state"><span class="state s-finished">' in now
    # a command the ledger refuses is not an event: the job page lists it from the rejections topic
    refused = system.cli("send", "-", timeout=60, stdin=json.dumps(
        {"type": "transition", "PandaID": pid, "action": "activate", "actor": "user:tester"}))
    assert "rejected" in refused.stdout, refused.stdout + refused.stderr
    page = wait_until(lambda: (lambda h: h if 'id="rejections"' in h else None)(_get(f"{system.monitor}/job/{pid}")),
                      30, 0.3, "the rejection on the job page")
    rows = page.split('id="rejections"', 1)[1].split("</table>", 1)[0]
    assert "illegal_transition" in rows and "activate is not allowed from finished" in rows, rows


def test_queues_tasks_and_static(system: RunningSystem):
    assert 'data-key="LOCAL"' in _get(f"{system.monitor}/queues")
    assert 'data-key="4242"' in _get(f"{system.monitor}/tasks")
    assert "finished" in _get(f"{system.monitor}/task/4242")
    assert "EventSource" in _get(f"{system.monitor}/static/monitor.js")


def test_queue_page_plots_and_views_as_of_a_past_moment(system: RunningSystem):
    queue = _get(f"{system.monitor}/queue/LOCAL?hours=1")
    assert queue.count('class="bar-finished"') >= 1 and 'id="noerrors"' in queue
    first = json.loads(system.cli("history", "--json", str(system.ids[0])).stdout)[0]
    then = dt.datetime.fromtimestamp(first["time"], dt.UTC).replace(tzinfo=None).isoformat()
    past = _get(f"{system.monitor}/task/4242?at={then}")
    assert 'data-state="defined"' in past and 'data-state="finished"' not in past
    assert f"as it was at {then}" in past
    assert 'data-state="finished"' in _get(f"{system.monitor}/task/4242")
    past_queues = _get(f"{system.monitor}/queues?at={then}")
    assert 'data-key="LOCAL"' in past_queues and "s-finished" not in past_queues
    before_all = _get(f"{system.monitor}/queues?at=2000-01-01T00:00:00")
    assert 'data-key="LOCAL"' not in before_all


def test_live_event_over_server_sent_events(system: RunningSystem):
    got: list[dict] = []
    connected = threading.Event()

    def listen() -> None:
        with urllib.request.urlopen(f"{system.monitor}/events?task=4242", timeout=60) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if line.startswith(":"):
                    connected.set()
                elif line.startswith("data: "):
                    got.append(json.loads(line[6:]))
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    wait_until(connected.is_set, 30, 0.1, "the event stream connected")
    target = system.ids[2]      # the user job, still activated: kill it and watch the event arrive
    out = system.cli("kill", str(target))
    assert out.returncode == 0, out.stdout + out.stderr
    t.join(60)
    assert got and got[0]["PandaID"] == target and got[0]["to"] == "cancelled", got
