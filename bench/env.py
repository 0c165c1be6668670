"""An isolated place to measure in: own topics and own database per workload, on whatever infrastructure.

The broker and PostgreSQL server are the embedded defaults or PANDAES_KAFKA / PANDAES_DB, started (or
found) once per run through ``devenv.stack.Infra``. Every workload gets fresh topics and a fresh database
(a copy of one migrated template, as the tests do), so no workload sees another's jobs or offsets, and
the run leaves nothing behind but its results.

A workload's topics and database are dropped as soon as it ends (``release``), not at the end of the run: the
embedded broker keeps every topic's description in one metadata document that it rewrites on every
transactional or idempotent write, so topics left over from earlier workloads made each later workload's
ledger transaction cost the broker more (a five-partition transaction: ~770 µs of its CPU with the
workload's own four topics, ~1,200 µs with forty more; docs/performance.md, thirteenth session). A system
as `make run` starts it has only its own four.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any

import psycopg

from core import bus, config
from core.config import Config
from core.topics import ensure_topics
from devenv import stack
from services import migrations

# Production client settings: shorter poll intervals (as the tests use) get busy services kicked out of
# their group when the machine is loaded.
BENCH_KAFKA: dict[str, Any] = {}


def _admin_url(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/postgres"


class BenchEnv:
    """Starts the infrastructure once; hands out fresh (topics, database) configurations."""

    def __init__(self, log=print):
        self.log = log
        self.run_tag = f"b{os.getpid()}{uuid.uuid4().hex[:4]}"
        base = config.load()
        base = base.replace(db={"database": f"pandaes_{self.run_tag}"}, kafka=BENCH_KAFKA)
        self.infra = stack.Infra(base, log=lambda *_: None)
        self.base: Config | None = None
        self.template = f"pandaes_{self.run_tag}_tmpl"
        self.databases: list[str] = []
        self.topics: list[str] = []
        self._n = 0

    def start(self) -> BenchEnv:
        self.infra.start()
        self.base = self.infra.config()
        from bench import procs  # (procs imports this module)

        procs.set_broker_pid(self.embedded_broker_pid)   # the broker's CPU is charged to every workload
        own = f"pandaes_{self.run_tag}"
        if self.base.db.url.rsplit("/", 1)[-1].split("?", 1)[0] == own:
            # made for this run by the infrastructure's start (no [db] url given): dropped at close like the
            # others; a database named by a given url is the operator's and stays
            self.databases.append(own)
        with psycopg.connect(_admin_url(self.base.db.url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.template}"')
        migrations.migrate(self.base.db.url.rsplit("/", 1)[0] + f"/{self.template}")
        self.databases.append(self.template)
        return self

    @property
    def kafka(self) -> str:
        assert self.base is not None
        return self.base.kafka.bootstrap

    @property
    def embedded_broker_pid(self) -> int | None:
        return self.infra.tansu.pid if self.infra.tansu else None

    def fresh(self, name: str, **changes: dict[str, Any]) -> Config:
        """A configuration with its own topics (created) and its own migrated database."""
        assert self.base is not None, "start() first"
        self._n += 1
        tag = f"{self.run_tag}{name}{self._n}"
        dbname = f"pandaes_{tag}"
        with psycopg.connect(_admin_url(self.base.db.url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}" TEMPLATE "{self.template}"')
        self.databases.append(dbname)
        kafka = {"commands_topic": f"{tag}.job-commands", "events_topic": f"{tag}.job-events",
                 "rejected_topic": f"{tag}.job-commands.rejected", "replies_topic": f"{tag}.job-replies",
                 "group_prefix": tag}
        kafka.update(changes.pop("kafka", {}))
        cfg = self.base.replace(kafka=kafka, db={"url": self.base.db.url.rsplit("/", 1)[0] + f"/{dbname}"},
                                **changes)
        ensure_topics(cfg)
        self.topics += [cfg.kafka.commands_topic, cfg.kafka.events_topic, cfg.kafka.rejected_topic,
                        cfg.kafka.replies_topic]
        return cfg

    def release(self, cfg: Config) -> None:
        """Drop one workload's topics and database (made by ``fresh``) once its figures are taken."""
        assert self.base is not None, "start() first"
        k = cfg.kafka
        topics = [t for t in (k.commands_topic, k.events_topic, k.rejected_topic, k.replies_topic)
                  if t in self.topics]
        if topics:
            self._drop_topics(topics)
            self.topics = [t for t in self.topics if t not in topics]
        dbname = cfg.db.url.rsplit("/", 1)[-1].split("?", 1)[0]
        if dbname in self.databases and dbname != self.template:
            self._drop_databases([dbname])
            self.databases.remove(dbname)

    def _drop_topics(self, topics: list[str]) -> None:
        assert self.base is not None
        admin = bus.admin(self.base)
        try:
            admin.delete_topics(topics)
        finally:
            admin.close()

    def _drop_databases(self, names: list[str]) -> None:
        assert self.base is not None
        with psycopg.connect(_admin_url(self.base.db.url), autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        """Drop what the run created (databases; topics too on a real cluster), stop what it started."""
        if self.base is not None:
            with contextlib.suppress(Exception):
                self._drop_databases(list(reversed(self.databases)))
            if self.infra.tansu is None and self.topics:
                with contextlib.suppress(Exception):
                    self._drop_topics(self.topics)
        self.infra.stop()


def child_env(cfg: Config) -> dict[str, str]:
    """Environment for a component process that must see exactly ``cfg`` (topics, database, timeouts)."""
    env = dict(os.environ)
    for section in ("kafka", "db", "http", "sites", "plugins", "adder", "closer"):
        for key, value in getattr(cfg, section).as_dict().items():
            if isinstance(value, list):
                value = ",".join(map(str, value))
            env[f"PANDAES_{section.upper()}_{key.upper()}"] = str(value)
    env.pop("PANDAES_KAFKA", None)
    env.pop("PANDAES_DB", None)
    return env
