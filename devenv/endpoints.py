"""The endpoints file: where a running system's broker and database are, for commands run from another shell."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.config import Config
from devenv.common import pid_alive

ENDPOINTS_FILE = "endpoints.json"

def endpoints_path(cfg: Config) -> Path:
    return cfg.state_dir / ENDPOINTS_FILE


def write_endpoints(cfg: Config, kafka: str, db: str) -> Path:
    """Record where the running system is, atomically (readers never see half a file)."""
    path = endpoints_path(cfg)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"kafka": kafka, "db": db, "pid": os.getpid()}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def add_to_endpoints(cfg: Config, **extra: Any) -> Path | None:
    """Add keys (e.g. ``metrics`` = {component: url}) to the endpoints file this process wrote; None if
    there is no such file (a system on an explicit broker and database writes none)."""
    path = endpoints_path(cfg)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    data.update(extra)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_endpoints(cfg: Config) -> dict[str, Any] | None:
    """{"kafka", "db", "pid"} of a running system on this state dir, or None if there is none (no file,
    unreadable file, or the process that wrote it is gone: its embedded broker died with it)."""
    try:
        data = json.loads(endpoints_path(cfg).read_text())
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if pid_alive(pid) else None


def config_for_running_system(cfg: Config) -> Config:
    """``cfg`` with an empty kafka.bootstrap / db.url taken from a running system's endpoints file.

    Values set explicitly (PANDAES_KAFKA, PANDAES_DB, a config file) always win.
    """
    found = read_endpoints(cfg)
    if not found:
        return cfg
    changes: dict[str, dict[str, str]] = {}
    if not cfg.kafka.bootstrap and found.get("kafka"):
        changes["kafka"] = {"bootstrap": found["kafka"]}
    if not cfg.db.url and found.get("db"):
        changes["db"] = {"url": found["db"]}
    return cfg.replace(**changes) if changes else cfg


