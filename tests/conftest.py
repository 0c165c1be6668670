"""Fixtures: one real broker and one real PostgreSQL server per test session; fresh topics and a
fresh database per test, so tests cannot see each other's jobs.

The broker is the embedded Tansu (or PANDAES_KAFKA); the database server is 127.0.0.1:5432 if it
answers, else an embedded PostgreSQL (or PANDAES_DB). Each test database is a copy of a migrated
template, which is much faster than migrating every time.

Two floors: tests/unit runs without either (collection refuses a unit test that asks for them, so
``pytest tests/unit`` never starts the broker or touches PostgreSQL); tests/integration uses them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from core import bus, config
from core.ports import free_port
from core.topics import ensure_topics
from devenv.common import FORCE_EMBEDDED_DB_ENV
from devenv.postgres import stop_embedded_postgres
from devenv.stack import Infra
from services import migrations

# Group joins on the embedded broker take about half the session timeout, so keep that short. The poll
# interval does not slow joins; keep it long, or a component starved of CPU on a loaded machine is
# dropped from its group and every rebalance stalls the test.
os.environ.setdefault("PANDAES_KAFKA_MAX_POLL_INTERVAL_MS", "30000")
os.environ.setdefault("PANDAES_KAFKA_SESSION_TIMEOUT_MS", "6000")
os.environ.setdefault("PANDAES_KAFKA_HEARTBEAT_INTERVAL_MS", "1000")   # a third of the session: rebalances seen soon
os.environ.setdefault("PANDAES_KAFKA_TRANSACTION_TIMEOUT_MS", "10000")
# `pandaes run` in a test starts the monitor too: never on its default port (tests run side by side)
os.environ.setdefault("PANDAES_MONITOR_PORT", str(free_port()))

_counter = itertools.count()

UNIT_DIR = Path(__file__).resolve().parent / "unit"
# the session fixtures that start the broker and the database server (``cfg`` and ``kafka_client`` build on them)
INFRASTRUCTURE_FIXTURES = ("base_cfg", "template_db")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A unit test that asks for the broker or the database is an error, not a slow unit test."""
    for item in items:
        if UNIT_DIR in Path(item.path).resolve().parents:
            used = [name for name in INFRASTRUCTURE_FIXTURES if name in getattr(item, "fixturenames", ())]
            if used:
                raise pytest.UsageError(f"{item.nodeid} uses {', '.join(used)}: a test that needs the broker "
                                        "or the database belongs in tests/integration")


@pytest.fixture(scope="session")
def base_cfg(tmp_path_factory) -> Iterator[config.Config]:
    state = tmp_path_factory.mktemp("state")
    cfg = config.load().replace(state={"dir": str(state)},
                                db={"database": f"pandaes_test_{os.getpid()}"})
    system = Infra(cfg, log=lambda *_: None).start()
    try:
        yield system.config()
    finally:
        url = system.config().db.url
        if not os.environ.get("PANDAES_DB"):  # the session's own database on a shared server: drop it
            with contextlib.suppress(psycopg.Error), psycopg.connect(_admin_url(url), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{cfg.db.database}" WITH (FORCE)')
        system.stop()


def _admin_url(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/postgres"


@pytest.fixture(scope="session")
def template_db(base_cfg) -> Iterator[str]:
    name = f"pandaes_tmpl_{os.getpid()}"
    admin = _admin_url(base_cfg.db.url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrations.migrate(admin.rsplit("/", 1)[0] + f"/{name}")
    yield name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Kafka-heavy test modules run with both clients: pytestmark = pytest.mark.parametrize(
# "kafka_client", BOTH_CLIENTS, indirect=True). Without the parameter a test uses the configured client.
BOTH_CLIENTS = ["kafka-python", pytest.param("confluent", marks=pytest.mark.skipif(
    not bus.client_available("confluent"), reason="confluent-kafka not installed (a dependency: pip install -e .)"))]


@pytest.fixture
def kafka_client(request, base_cfg) -> str:
    """The ``[kafka] client`` of the test: its parameter if parametrized, else the configured one."""
    return getattr(request, "param", None) or base_cfg.kafka.client


@pytest.fixture
def cfg(base_cfg, template_db, kafka_client) -> Iterator[config.Config]:
    """A configuration with topics and a database of its own."""
    n = next(_counter)
    tag = f"t{os.getpid()}x{n}"
    admin = _admin_url(base_cfg.db.url)
    dbname = f"pandaes_{tag}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}" TEMPLATE "{template_db}"')
    c = base_cfg.replace(
        kafka={"commands_topic": f"{tag}.job-commands", "events_topic": f"{tag}.job-events",
               "rejected_topic": f"{tag}.job-commands.rejected", "replies_topic": f"{tag}.job-replies",
               "group_prefix": tag, "client": kafka_client},
        db={"url": admin.rsplit("/", 1)[0] + f"/{dbname}"},
    )
    ensure_topics(c)
    yield c
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state dir and no inherited PANDAES_KAFKA / PANDAES_DB: returns the state dir.

    Not under pytest's tmp_path: as root the embedded PostgreSQL runs as another account, and
    pytest resets its own base folder to 0700 whenever a session starts (e.g. parallel workers)."""
    base = Path(tempfile.mkdtemp(prefix="pandaes-test-"))
    base.chmod(0o755)
    state = base / "state"
    monkeypatch.setenv("PANDAES_STATE_DIR", str(state))
    for var in ("PANDAES_KAFKA", "PANDAES_DB", "PANDAES_CONFIG", "PANDAES_PARTITIONS",
                FORCE_EMBEDDED_DB_ENV):
        monkeypatch.delenv(var, raising=False)
    yield state
    if (state / "postgres").exists():
        stop_embedded_postgres(state)
    shutil.rmtree(base, ignore_errors=True)


class Background:
    """Runs components in threads of the test process and stops them at the end of the test.

    ``start`` returns the component's own stop event, so a test can stop one component early.
    """

    def __init__(self) -> None:
        self.running: list[tuple[threading.Event, threading.Thread]] = []
        self.errors: list[BaseException] = []

    def start(self, fn: Callable[[threading.Event], None], name: str = "") -> threading.Event:
        stop = threading.Event()

        def target():
            try:
                fn(stop)
            except BaseException as exc:  # surfaced by the fixture teardown
                self.errors.append(exc)
                raise

        t = threading.Thread(target=target, name=name or f"bg-{uuid.uuid4().hex[:6]}", daemon=True)
        t.start()
        self.running.append((stop, t))
        return stop

    def run(self, component, name: str = "") -> threading.Event:
        """Start ``component.run(stop)`` and ``close()`` it when it stops (ledger, projector, loops)."""
        def target(stop: threading.Event) -> None:
            try:
                component.run(stop)
            finally:
                component.close()

        return self.start(target, name or type(component).__name__)

    def stop(self, stop: threading.Event) -> None:
        for ev, t in self.running:
            if ev is stop:
                ev.set()
                t.join(20)

    def close(self) -> None:
        for ev, _ in self.running:
            ev.set()
        for _, t in self.running:
            t.join(20)


@pytest.fixture
def background() -> Iterator[Background]:
    bg = Background()
    yield bg
    bg.close()
    assert not bg.errors, bg.errors
