"""What `pandaes run` and the bench wait for before the system judges: every commands partition held by a ledger
and every events partition read by each reader group on this host (their links), or nothing observable."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from cli import ready
from core import readiness
from core.bus import TopicPartition
from core.config import load
from core.local_commands import CommandIntake
from core.local_events import FedConsumer


class _Inner:
    def subscribe(self, topics, *, on_assign=None, on_revoke=None):
        self.callbacks = (on_assign, on_revoke)

    def pause(self, *tps):
        pass

    def resume(self, *tps):
        pass

    def close(self):
        pass


@pytest.fixture
def state_dir():
    path = Path(tempfile.mkdtemp(prefix="rd", dir="/tmp"))   # short: socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_missing_names_what_is_not_held_until_everything_is(state_dir):
    cfg = load({"PANDAES_STATE_DIR": str(state_dir), "PANDAES_PARTITIONS": "2"})
    assert readiness.missing(cfg) == ["the ledger does not hold commands partitions [0, 1] yet"]   # no reader yet
    intake = CommandIntake(cfg, "0", threading.Event())
    inner = _Inner()
    reader = FedConsumer(inner, cfg, "svc", gather_s=0.0, look_s=60.0)
    try:
        assert readiness.missing(cfg) == ["the ledger does not hold commands partitions [0, 1] yet",
                                          "no reader of the events topic has its partitions yet"]
        intake.link(0)
        reader.subscribe([cfg.kafka.events_topic])
        inner.callbacks[0]({TopicPartition(cfg.kafka.events_topic, 1)})
        assert readiness.missing(cfg) == ["the ledger does not hold commands partitions [1] yet",
                                          "svc does not read events partitions [0] yet"]
        assert readiness.missing(cfg, readers=False) == ["the ledger does not hold commands partitions [1] yet"]
        intake.link(1)
        inner.callbacks[0]({TopicPartition(cfg.kafka.events_topic, 0)})
        assert readiness.missing(cfg) == []
        lines: list[str] = []
        ready.announce(cfg, ["ledger", "reactors"], threading.Event(), 0.0, lines.append)
        assert len(lines) == 1 and lines[0].startswith("ready: ")
    finally:
        reader.close()
        intake.close()
    off = cfg.replace(ledger={"local_commands": False, "local_events": False})
    assert readiness.missing(off) is None                    # nothing to see: no verdict either way
    lines = []
    ready.announce(off, ["ledger", "reactors"], threading.Event(), 0.0, lines.append)
    assert lines == []                                       # and no line rather than a wrong one
    deep = load({"PANDAES_STATE_DIR": str(state_dir / ("d" * 120))})
    assert readiness.missing(deep) is None                   # too long a path for the sockets: nothing links


def test_wait_gives_up_at_its_timeout_saying_once_what_is_missing(state_dir):
    cfg = load({"PANDAES_STATE_DIR": str(state_dir), "PANDAES_PARTITIONS": "2"})
    lines: list[str] = []
    left, waited = readiness.wait(cfg, timeout=0.5, tell_after=0.0, log=lines.append)
    assert left == ["the ledger does not hold commands partitions [0, 1] yet"] and waited > 0.5
    assert lines == ["not ready yet: the ledger does not hold commands partitions [0, 1] yet"]
    stop = threading.Event()
    stop.set()
    assert readiness.wait(cfg, timeout=60, stop=stop, tell_after=60, log=lines.append)[0] == left   # stopped
