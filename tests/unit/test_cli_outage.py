"""A command of the command line answers an outage with one line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cli import outage

ROOT = Path(__file__).resolve().parents[2]


def test_submit_while_the_database_is_down_prints_one_line(tmp_path):
    job = tmp_path / "job.json"
    job.write_text('{"jobName": "x", "computingSite": "LOCAL"}')
    env = {**os.environ, "PANDAES_DB": "postgresql://postgres@127.0.0.1:1/nowhere", "PANDAES_KAFKA": "127.0.0.1:1"}
    out = subprocess.run([sys.executable, "-m", "cli.main", "submit", str(job)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pandaes submit: the database is unreachable"), out.stderr


def test_only_outages_are_turned_into_one_line():
    class KafkaTimeoutError(Exception):   # what the clients raise, known by name
        pass

    assert "broker is unreachable" in outage.describe(KafkaTimeoutError("no answer"))
    assert "connection failed" in outage.describe(ConnectionRefusedError("refused"))
    assert outage.describe(KeyError("a bug keeps its traceback")) is None
