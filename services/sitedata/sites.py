"""PanDA queues (schedconfig): the ``Queue`` model, the queue file format, and reads of the ``sites`` table.

The table is written only by ``services.sitedata.configurator`` from a TOML file (``core/queues.toml`` by
default); everyone else reads it through here: brokerage and setupper (``SitesCache``), the gateway
(``queuedata`` for pilots). Every row carries the version that produced it, so a brokerage reason
that names ``QUEUE v3`` can be explained later from ``site_versions``.
"""

from __future__ import annotations

import threading
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import psycopg

from core import db
from core.config import Config

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "core" / "queues.toml"
STATUSES = ("online", "offline", "test", "brokeroff")
TEST_LABELS = frozenset({"test", "ptest", "prod_test", "rc_test"})
_INT_KEYS = ("maxrss", "maxwdir", "maxtime", "corecount", "weight")
_KEYS = {"status", "site", "cloud", "vo", "type", "plugin", "endpoints", "queuedata", *_INT_KEYS}


class QueueConfigError(ValueError):
    """A queue file entry that cannot be used."""


class Queue(msgspec.Struct, frozen=True, kw_only=True):
    """One PanDA queue as brokerage, setupper and the pilot see it."""

    name: str
    status: str = "online"
    site: str = ""
    cloud: str | None = None
    vo: str | None = None
    type: str = "production"
    plugin: str | None = None
    endpoints: tuple[str, ...] = ()
    maxrss: int = 0
    maxwdir: int = 0
    maxtime: int = 0
    corecount: int = 0
    weight: int = 0
    queuedata: dict[str, Any] = {}
    version: int = 0

    @property
    def endpoint(self) -> str:
        """The storage endpoint the queue's jobs read from and write to."""
        return self.endpoints[0]

    def config(self) -> dict[str, Any]:
        """The entry as stored in ``sites.config`` (no version: that is the row's)."""
        out = msgspec.to_builtins(self)
        out.pop("version", None)
        out["endpoints"] = list(self.endpoints)
        return out


def parse(data: Mapping[str, Any], origin: str = "queue file") -> dict[str, Queue]:
    """Queues from the file format (``[defaults]`` + ``[queues.NAME]``), validated."""
    unknown = set(data) - {"defaults", "queues"}
    if unknown:
        raise QueueConfigError(f"{origin}: unknown top-level keys {sorted(unknown)} (use [defaults], [queues.X])")
    defaults = dict(data.get("defaults", {}))
    out: dict[str, Queue] = {}
    for name, entry in (data.get("queues") or {}).items():
        if not isinstance(entry, Mapping):
            raise QueueConfigError(f"{origin}: [queues.{name}] must be a table")
        merged = {**defaults, **entry}
        bad = set(merged) - _KEYS
        if bad:
            raise QueueConfigError(f"{origin}: [queues.{name}] unknown keys {sorted(bad)}; known: {sorted(_KEYS)}")
        if merged.get("status", "online") not in STATUSES:
            raise QueueConfigError(f"{origin}: [queues.{name}] status {merged['status']!r} not in {STATUSES}")
        for key in _INT_KEYS:
            value = merged.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise QueueConfigError(f"{origin}: [queues.{name}] {key} = {value!r} must be an integer >= 0")
        endpoints = merged.get("endpoints") or [f"{name}_DATADISK"]
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not all(isinstance(e, str) and e and "/" not in e for e in endpoints):
            raise QueueConfigError(f"{origin}: [queues.{name}] endpoints must be names, got {endpoints!r}")
        merged["endpoints"] = tuple(endpoints)
        merged.setdefault("site", name)
        try:
            out[name] = msgspec.convert({**merged, "name": name}, Queue)
        except msgspec.ValidationError as exc:
            raise QueueConfigError(f"{origin}: [queues.{name}] {exc}") from None
    return out


def load_file(path: str | Path | None = None) -> dict[str, Queue]:
    path = Path(path) if path else DEFAULT_FILE
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise QueueConfigError(f"queue file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise QueueConfigError(f"queue file {path}: {exc}") from None
    return parse(data, str(path))


def file_of(cfg: Config) -> Path:
    return Path(cfg.sites.file).expanduser() if cfg.sites.file else DEFAULT_FILE


# ------------------------------------------------------------------------------------------ reads
def _from_row(row: Mapping[str, Any]) -> Queue:
    return msgspec.convert({**row["config"], "name": row["name"], "version": row["version"]}, Queue)


def queues(conn: psycopg.Connection) -> dict[str, Queue]:
    """Every configured queue."""
    return {r["name"]: _from_row(r) for r in db.fetch_all(conn, "SELECT name, config, version FROM sites")}


def queue(conn: psycopg.Connection, name: str) -> Queue | None:
    rows = db.fetch_all(conn, "SELECT name, config, version FROM sites WHERE name = %s", (name,))
    return _from_row(rows[0]) if rows else None


def make_queuedata(q: Queue) -> dict[str, Any]:
    """The pilot3 queuedata dict (PANDA-CLIENTS §3.3) for a queue; ``queuedata`` keys override."""
    data: dict[str, Any] = {
        "nickname": q.name, "panda_resource": q.name, "atlas_site": q.site, "name": q.name, "siteid": q.name,
        "gstat": q.site, "cloud": q.cloud or "", "vo_name": q.vo or "",
        "state": "ACTIVE", "status": q.status, "type": q.type, "resource_type": "SCORE" if q.corecount <= 1
        else "MCORE", "maxwdir": q.maxwdir, "maxrss": q.maxrss, "maxtime": q.maxtime,
        "corecount": q.corecount or 1, "timefloor": 0, "pledgedcpu": 0, "is_cvmfs": False,
        "copytools": {"mv": {"setup": ""}}, "acopytools": {"pr": ["mv"], "pw": ["mv"], "pl": ["mv"]},
        "astorages": {}, "aprotocols": {}, "params": {}, "catchall": "", "container_type": "",
        "container_options": "", "direct_access_lan": False, "direct_access_wan": False, "cmtconfig": "",
        "default_ddm_endpoint": "",
        # not read by the pilot: what pandaes itself knows about the queue
        "pandaes": {"plugin": q.plugin, "endpoints": list(q.endpoints), "version": q.version},
    }
    data.update(q.queuedata)
    return data


def queuedata(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    """The pilot3 queuedata of queue ``name``, or None if there is no such queue (the gateway's call)."""
    q = queue(conn, name)
    return make_queuedata(q) if q else None


def history(conn: psycopg.Connection, name: str | None = None) -> list[dict]:
    """Versions of one queue (or all), oldest first: who changed what when."""
    sql = "SELECT name, version, changed_at, changed_by, change FROM site_versions"
    if name:
        return db.fetch_all(conn, sql + " WHERE name = %s ORDER BY version", (name,))
    return db.fetch_all(conn, sql + " ORDER BY changed_at, name, version")


class SitesCache:
    """Queues for a service, re-read at most every ``[sites] cache_ttl`` seconds (thread-safe)."""

    def __init__(self, cfg: Config, ttl: float | None = None):
        self.cfg = cfg
        self.ttl = cfg.sites.cache_ttl if ttl is None else ttl
        self._lock = threading.Lock()
        self._data: dict[str, Queue] = {}
        self._until = 0.0

    def get(self) -> dict[str, Queue]:
        with self._lock:
            if time.monotonic() >= self._until:
                with db.connect(self.cfg, autocommit=True) as conn:
                    self._data = queues(conn)
                self._until = time.monotonic() + self.ttl
            return self._data

    def invalidate(self) -> None:
        with self._lock:
            self._until = 0.0
