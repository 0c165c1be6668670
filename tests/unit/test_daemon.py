"""`pandaes daemon` without processes or a database: the scripts of the configuration, the cache clean-up
and the advisory-lock keys."""

from __future__ import annotations

import time
from pathlib import Path

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
