"""The configurator: loads the queue file into the ``sites`` table and records each change as a version.

PanDA's configurator daemon copies CRIC's schedconfig into the database every 200 s; here the source
is a TOML file (``[sites] file``, default ``core/queues.toml``). Each run diffs the file against the
table and writes, for every queue that changed, the new row plus a ``site_versions`` row saying who,
when and what (field → [old, new]). Unchanged queues are not touched, so running it often is cheap
and the history only holds real changes. A queue removed from the file is deleted (version recorded).

Run it as ``pandaes configure``, as the ``configurator`` component (at start, then every
``[sites] period`` seconds), from ``pandaes daemon`` (``run_once``), or let the setupper do it once at
start when the table is empty.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from core import db
from core.config import Config
from services.sitedata import sites

log = logging.getLogger(__name__)
_LOCK = 0x7369746573  # "sites": one configurator writes at a time


def who_is(default: str) -> str:
    return f"{default}@{socket.gethostname()}:{os.getpid()}"


def diff(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    """field → [old, new] for the fields that differ (all fields for a creation or removal)."""
    old, new = old or {}, new or {}
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def apply(conn: psycopg.Connection, wanted: dict[str, sites.Queue], who: str) -> list[dict]:
    """Make the table equal ``wanted``; returns the changes made, each ``{name, version, change}``."""
    changes: list[dict] = []
    now = dt.datetime.now(dt.UTC)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        current = {r["name"]: r for r in db.fetch_all(conn, "SELECT name, config, version FROM sites")}
        versions = dict(conn.execute("SELECT name, max(version) FROM site_versions GROUP BY name").fetchall())
        for name in sorted(set(current) | set(wanted)):
            old = current[name]["config"] if name in current else None
            new = wanted[name].config() if name in wanted else None
            change = diff(old, new)
            if not change:
                continue
            version = max(versions.get(name, 0), current[name]["version"] if name in current else 0) + 1
            if new is None:
                conn.execute("DELETE FROM sites WHERE name = %s", (name,))
                change = {"removed": True}
            else:
                q = wanted[name]
                conn.execute(
                    "INSERT INTO sites (name, status, site, cloud, vo, type, plugin, maxrss, maxwdir, maxtime,"
                    " corecount, endpoints, config, version, updated_at, updated_by)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET status = EXCLUDED.status, site = EXCLUDED.site,"
                    " cloud = EXCLUDED.cloud, vo = EXCLUDED.vo, type = EXCLUDED.type, plugin = EXCLUDED.plugin,"
                    " maxrss = EXCLUDED.maxrss, maxwdir = EXCLUDED.maxwdir, maxtime = EXCLUDED.maxtime,"
                    " corecount = EXCLUDED.corecount, endpoints = EXCLUDED.endpoints, config = EXCLUDED.config,"
                    " version = EXCLUDED.version, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by",
                    (name, q.status, q.site, q.cloud, q.vo, q.type, q.plugin, q.maxrss, q.maxwdir, q.maxtime,
                     q.corecount, Jsonb(list(q.endpoints)), Jsonb(new), version, now, who),
                )
                if old is None:
                    change = {"created": True, **change}
            conn.execute("INSERT INTO site_versions (name, version, changed_at, changed_by, change, config)"
                         " VALUES (%s, %s, %s, %s, %s, %s)", (name, version, now, who, Jsonb(change), Jsonb(new)))
            changes.append({"name": name, "version": version, "change": change})
    return changes


def configure(cfg: Config, path: str | Path | None = None, who: str | None = None) -> list[dict]:
    """Load the queue file (``path`` or ``[sites] file``) into the table; returns the changes."""
    wanted = sites.load_file(path or sites.file_of(cfg))
    with db.connect(cfg) as conn:
        changes = apply(conn, wanted, who or who_is("configurator"))
    for c in changes:
        log.info("queue %s v%d: %s", c["name"], c["version"], json.dumps(c["change"], default=str))
    return changes


def ensure(cfg: Config, who: str) -> list[dict]:
    """Configure only if the sites table is empty (a service starting before the configurator ran)."""
    with db.connect(cfg) as conn:
        if conn.execute("SELECT EXISTS (SELECT 1 FROM sites)").fetchone()[0]:
            return []
    return configure(cfg, who=who_is(who))


def run_once(cfg: Config) -> int:
    """One pass, for ``pandaes daemon``; returns the number of changed queues."""
    return len(configure(cfg))


def run_component(cfg: Config, stop: threading.Event) -> None:
    """The ``configurator`` component: configure at start, then every ``[sites] period`` seconds."""
    while True:
        try:
            configure(cfg)
        except (sites.QueueConfigError, psycopg.Error) as exc:
            log.error("configurator: %s (the table keeps its previous content)", exc)
        if stop.wait(cfg.sites.period):
            return
