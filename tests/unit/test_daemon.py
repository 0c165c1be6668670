"""`pandaes daemon` without processes or a database: the scripts of the configuration, the cache clean-up
and the advisory-lock keys."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from core import config
from services.clock.daemon import cleanup_cache, lock_key, scripts_from_config


def test_scripts_cache_cleanup_and_lock_keys(tmp_path):
    cfg = config.load().replace(state={"dir": str(tmp_path)}, daemon={"cache_lifetime": 60})
    cache = Path(cfg.state_dir) / "cache"
    cache.mkdir()
    old, new = cache / "old.tgz", cache / "new.tgz"
    old.write_text("x")
    new.write_text("y")
    past = time.time() - 3600
    import os

    os.utime(old, (past, past))
    assert cleanup_cache(cfg) == 1 and not old.exists() and new.exists()
    assert set(scripts_from_config(cfg)) == {"watcher", "finisher", "closer", "configurator", "cache_cleanup",
                                             "dispatch_sweep"}
    assert lock_key("watcher") == lock_key("watcher") != lock_key("finisher")
    assert -(2**63) <= lock_key("x") < 2**63


def test_a_workers_sender_makes_its_producer_only_at_the_first_send(monkeypatch):
    from core import bus
    from services.clock import daemon

    made: list[FakeProducer] = []

    class FakeProducer:
        def __init__(self) -> None:
            self.sent: list[bytes] = []
            self.flushed = self.closed = 0

        def send(self, topic, value, *, key=None, partition=None):
            self.sent.append(value)

        def flush(self, timeout=None):
            self.flushed += 1

        def close(self):
            self.closed += 1

    monkeypatch.setattr(bus, "producer", lambda cfg, **kw: made.append(FakeProducer()) or made[-1])
    ctx = daemon.Context(config.load())
    sender = ctx.sender
    sender.flush()
    ctx.close()                    # nothing was sent: no producer was ever made
    assert made == []
    ctx = daemon.Context(config.load())
    ctx.sender.send_encoded(SimpleNamespace(PandaID=7), b"{}")   # the first send makes it
    ctx.sender.flush()
    ctx.close()
    assert len(made) == 1 and made[0].sent == [b"{}"] and made[0].flushed == 1 and made[0].closed == 1
