"""core.infra without a broker or a database: the endpoints file of a dead process, redacted log lines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from core import config
from devenv.common import redact
from devenv.endpoints import ENDPOINTS_FILE, config_for_running_system, read_endpoints, write_endpoints


def test_endpoints_of_a_dead_process_are_ignored(env: Path):
    cfg = config.load()
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_endpoints(cfg, "127.0.0.1:1", "postgresql://nowhere/x")
    path = cfg.state_dir / ENDPOINTS_FILE
    path.write_text(path.read_text().replace(str(os.getpid()), str(dead.pid)))
    assert read_endpoints(cfg) is None
    assert config_for_running_system(cfg).kafka.bootstrap == ""
    path.write_text("{not json")
    assert read_endpoints(cfg) is None


def test_log_lines_do_not_show_passwords():
    assert redact("postgresql://app:s3cret@db:5432/pandaes") == "postgresql://app:***@db:5432/pandaes"
    assert redact("postgresql://postgres@127.0.0.1:5432/x") == "postgresql://postgres@127.0.0.1:5432/x"
