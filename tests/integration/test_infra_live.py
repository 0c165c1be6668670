"""core.infra against a real broker and a real PostgreSQL server: no mocks.

Every test gets its own state directory (tmp_path) and stops what it started. The database server is
127.0.0.1:5432 when it answers (databases made here are dropped again), else the embedded one; the
embedded path is also exercised on its own, even where 5432 answers.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from helpers import wait_until

from core import bus, config
from core.ports import FORBIDDEN_PORTS, free_port
from core.topics import TopicError, ensure_topics
from devenv import stack as stack_module
from devenv.broker import Tansu, start_tansu
from devenv.common import FORCE_EMBEDDED_DB_ENV, InfraError, pid_alive
from devenv.endpoints import ENDPOINTS_FILE, config_for_running_system, read_endpoints
from devenv.postgres import (
    LOCAL_PG_PORT,
    local_postgres,
    pg_url,
    same_server_socket,
    start_embedded_postgres,
    stop_embedded_postgres,
)
from devenv.stack import Infra

_names = itertools.count()


def _quiet(_msg: str) -> None:
    pass


def _database_name() -> str:
    return f"pandaes_infra_test_{os.getpid()}_{next(_names)}"


def _drop_database(db_url: str) -> None:
    """Drop a test database again (matters on a shared 127.0.0.1:5432, not in a tmp embedded server)."""
    server, _, name = db_url.rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def lines() -> list[str]:
    """What Infra logged."""
    return []


@pytest.fixture
def system(env: Path, lines: list[str]) -> Iterator[Infra]:
    """An Infra with an embedded broker and whatever database server this machine offers."""
    cfg = config.load().replace(db={"database": _database_name()})
    started = Infra(cfg, log=lines.append).start()
    url = started.db_url
    try:
        yield started
    finally:
        started.stop()
        if started.postgres is None and not cfg.db.url.strip():   # the database it made on the local server
            _drop_database(url)


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[Tansu]:
    broker = start_tansu(tmp_path)
    try:
        yield broker
    finally:
        broker.stop()


def _partitions(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = bus.admin(config.load(), bootstrap=bootstrap)
    try:
        return admin.partition_counts(topics)
    finally:
        admin.close()


def _read_all(cfg: config.Config, topic: str) -> list:
    """Every record of ``topic`` now (read_committed, as everything in pandaes reads)."""
    return [rec for p in bus.partitions(cfg, topic) for rec in bus.read_partition(cfg, topic, p, 0)]


def _send(cfg: config.Config, value: bytes, *, key: bytes | None = None, partition: int = 0) -> bus.Delivered:
    producer = bus.producer(cfg)
    try:
        return producer.send(cfg.kafka.events_topic, value, key=key, partition=partition).result(10)
    finally:
        producer.close()


# ------------------------------------------------------------------------------- the whole thing
def test_embedded_broker_topics_and_database(system: Infra, lines: list[str]):
    cfg = system.config()
    n = cfg.kafka.partitions
    assert system.tansu is not None and system.tansu.alive()
    assert cfg.kafka.bootstrap == system.tansu.bootstrap
    assert cfg.kafka.bootstrap.startswith("127.0.0.1:")
    assert int(cfg.kafka.bootstrap.rsplit(":", 1)[1]) not in FORBIDDEN_PORTS
    assert (cfg.state_dir / "kafka" / "tansu.log").is_file()
    topics = [cfg.kafka.commands_topic, cfg.kafka.events_topic, cfg.kafka.rejected_topic]
    assert _partitions(cfg.kafka.bootstrap, topics) == {t: n for t in topics}

    meta = _send(cfg, b"hello", key=b"job-1", partition=n - 1)
    got = [(r.partition, r.offset, r.key, r.value) for r in _read_all(cfg, cfg.kafka.events_topic)]
    assert got == [(n - 1, meta.offset, b"job-1", b"hello")]

    with psycopg.connect(cfg.db.url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select current_database()").fetchone() == (cfg.db.database,)
    assert any(line.startswith("kafka: embedded Tansu broker at") for line in lines)


def test_endpoints_file_lets_another_shell_find_the_system(system: Infra, monkeypatch):
    fresh = config.load()  # what `pandaes status` in another shell would load
    assert fresh.state_dir == system.cfg.state_dir
    assert read_endpoints(fresh) == {"kafka": system.kafka_bootstrap, "db": system.db_url,
                                           "pid": os.getpid()}
    found = config_for_running_system(fresh)
    assert (found.kafka.bootstrap, found.db.url) == (system.kafka_bootstrap, system.db_url)

    monkeypatch.setenv("PANDAES_KAFKA", "elsewhere:9092")  # an explicit setting wins
    found = config_for_running_system(config.load())
    assert (found.kafka.bootstrap, found.db.url) == ("elsewhere:9092", system.db_url)

    tansu = system.tansu
    system.stop()
    assert not (fresh.state_dir / ENDPOINTS_FILE).exists()
    assert tansu is not None and not tansu.alive()
    assert read_endpoints(fresh) is None


def test_given_kafka_and_db_are_used_untouched(env: Path, tansu: Tansu, monkeypatch):
    database = _database_name()
    url, _why = local_postgres(database)
    server = None
    if url is None:
        server = start_embedded_postgres(env.parent / "given", database)
        url = server.url(database)
    given_db = url + "?application_name=infra-test"
    try:
        monkeypatch.setenv("PANDAES_KAFKA", tansu.bootstrap)
        monkeypatch.setenv("PANDAES_DB", given_db)
        with Infra(config.load(), log=_quiet) as system:
            assert system.tansu is None and system.postgres is None
            cfg = system.config()
            assert (cfg.kafka.bootstrap, cfg.db.url) == (tansu.bootstrap, given_db)
            assert _partitions(tansu.bootstrap, [cfg.kafka.events_topic]) == {
                cfg.kafka.events_topic: cfg.kafka.partitions}
        assert tansu.alive()  # not ours: left alone
    finally:
        if server is not None:
            server.stop()
        else:
            _drop_database(url)


def test_unreachable_given_kafka_is_a_clear_error(env: Path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("PANDAES_KAFKA", f"127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(InfraError, match=rf"Kafka at 127.0.0.1:{port} did not answer"):
        Infra(config.load(), log=_quiet, kafka_timeout=1).start()
    assert time.monotonic() - start < 10
    assert not (env / ENDPOINTS_FILE).exists()


# ------------------------------------------------------------------------------------------ topics
def _topic_cfg(bootstrap: str, partitions: int = 4) -> config.Config:
    tag = uuid.uuid4().hex[:8]
    return config.load().replace(kafka={"bootstrap": bootstrap, "partitions": partitions,
                                        "commands_topic": f"{tag}.cmd", "events_topic": f"{tag}.evt",
                                        "rejected_topic": f"{tag}.rej", "replies_topic": f"{tag}.rep",
                                        "reply_partitions": 3})


def test_ensure_topics_is_idempotent_and_race_safe(env: Path, tansu: Tansu):
    cfg = _topic_cfg(tansu.bootstrap)
    errors: list[BaseException] = []

    def create() -> None:
        try:
            ensure_topics(cfg)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ensure_topics(cfg)
    names = [cfg.kafka.commands_topic, cfg.kafka.events_topic, cfg.kafka.rejected_topic]
    assert _partitions(tansu.bootstrap, [*names, cfg.kafka.replies_topic]) == {
        **{name: 4 for name in names}, cfg.kafka.replies_topic: 3}


def test_partition_count_mismatch_is_an_error(env: Path, tansu: Tansu):
    cfg = _topic_cfg(tansu.bootstrap, partitions=4)
    ensure_topics(cfg)
    with pytest.raises(TopicError, match=r"has 4 partitions but \[kafka\] partitions = 6"):
        ensure_topics(cfg.replace(kafka={"partitions": 6}))

    odd = _topic_cfg(tansu.bootstrap, partitions=4)  # only the events topic exists, with another count
    admin = bus.admin(odd)
    admin.create_topics({odd.kafka.events_topic: 3})
    admin.close()
    with pytest.raises(TopicError, match=rf"'{odd.kafka.events_topic}' has 3 partitions"):
        ensure_topics(odd)


def test_events_topic_is_created_forever_and_finite_retention_is_refused(env: Path, tansu: Tansu):
    """ensure_topics creates the events topic with retention.ms=-1 and refuses one that deletes events.
    The embedded Tansu reports no topic configuration: then the check can only warn (the decision
    itself is tested in tests/unit/test_retention.py)."""
    cfg = _topic_cfg(tansu.bootstrap)
    finite = _topic_cfg(tansu.bootstrap)
    admin = bus.admin(finite)
    try:
        week = {finite.kafka.events_topic: {"retention.ms": "604800000"}}
        admin.create_topics({finite.kafka.events_topic: 4}, configs=week)
        ensure_topics(cfg)
        configs = admin.topic_configs(cfg.kafka.events_topic)
        if configs is None:
            warned: list[str] = []
            ensure_topics(finite, log=warned.append)
            assert any("reports no configuration" in w for w in warned)
            pytest.skip("the embedded Tansu reports no topic configuration: refusal tested as a pure function")
        assert configs["retention.ms"] == "-1" and configs["retention.bytes"] == "-1"
        with pytest.raises(TopicError, match="(?s)retention.ms=604800000.*kafka-configs"):
            ensure_topics(finite)
    finally:
        admin.close()


def test_run_refuses_to_start_on_an_events_topic_with_finite_retention(env: Path, tansu: Tansu, monkeypatch, capsys):
    """`pandaes run` against a broker whose events topic deletes after 7 days: one line, exit 2, nothing started."""
    from cli import main as cli_main
    finite = _topic_cfg(tansu.bootstrap)
    admin = bus.admin(finite)
    try:
        week = {finite.kafka.events_topic: {"retention.ms": "604800000"}}
        admin.create_topics({finite.kafka.events_topic: 4}, configs=week)
        if admin.topic_configs(finite.kafka.events_topic) is None:
            pytest.skip("the embedded Tansu reports no topic configuration")
    finally:
        admin.close()
    monkeypatch.setenv("PANDAES_KAFKA", tansu.bootstrap)
    monkeypatch.setenv("PANDAES_PARTITIONS", "4")
    for key in ("commands_topic", "events_topic", "rejected_topic"):
        monkeypatch.setenv(f"PANDAES_KAFKA_{key.upper()}", str(getattr(finite.kafka, key)))
    assert cli_main.main(["run", "ledger"]) == 2
    err = capsys.readouterr().err
    assert "would lose events" in err and "kafka-configs.sh" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ broker
def test_broker_kill_and_restart_on_the_same_port(system: Infra):
    cfg = system.config()
    _send(cfg, b"before")
    old = system.tansu
    assert old is not None

    new = system.restart_broker(kill=True)
    assert not old.alive() and old.proc.returncode == -9
    assert new.bootstrap == old.bootstrap == cfg.kafka.bootstrap and new.alive()
    assert _partitions(cfg.kafka.bootstrap, [cfg.kafka.events_topic]) == {
        cfg.kafka.events_topic: cfg.kafka.partitions}
    assert _read_all(cfg, cfg.kafka.events_topic) == []  # log lost
    assert _send(cfg, b"after").offset == 0


def test_the_embedded_broker_runs_the_configured_worker_threads(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TOKIO_WORKER_THREADS", "7")       # a stray setting does not reach the broker
    for n, want in ((1, "1"), (2, "2"), (0, None)):          # 0: the runtime's own default (no setting)
        broker = start_tansu(tmp_path, cfg=config.load().replace(kafka={"embedded_threads": n}))
        try:
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{broker.pid}/environ").read_text().split("\0") if kv)
            assert env.get("TOKIO_WORKER_THREADS") == want
            admin = bus.admin(config.load(), bootstrap=broker.bootstrap)
            try:
                assert isinstance(admin.topics(), set)              # it answers
            finally:
                admin.close()
        finally:
            broker.stop()


def test_broker_that_cannot_bind_fails_fast_with_its_log(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: only the broker's own bind fails
        port = taken.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(InfraError, match="Address in use"):
            start_tansu(tmp_path, port=port, timeout=15)
        assert time.monotonic() - start < 10
        taken.listen()
        with pytest.raises(InfraError, match="something listens there"):
            start_tansu(tmp_path, port=port)


# ---------------------------------------------------------------------------------------- postgres
def test_the_local_server_is_reached_through_its_unix_socket_when_it_has_one():
    admin = pg_url(LOCAL_PG_PORT, "postgres")
    url, why = local_postgres(_database_name())
    if url is None:
        pytest.skip(f"no local server: {why}")
    try:
        host = same_server_socket(admin, LOCAL_PG_PORT)
        with psycopg.connect(url) as conn:
            over_tcp = conn.execute("SELECT inet_server_addr() IS NOT NULL").fetchone()[0]
        if host is None:    # a server without a socket directory we can use: TCP, as before
            assert over_tcp and url.startswith(pg_url(LOCAL_PG_PORT, ""))
        else:
            assert not over_tcp and url.startswith(f"postgresql://postgres@{host}:{LOCAL_PG_PORT}/")
        # a socket of another port number is not this server's
        assert same_server_socket(admin, LOCAL_PG_PORT + 1) is None
    finally:
        _drop_database(url)


def test_embedded_postgres_even_when_5432_answers(env: Path, monkeypatch):
    cfg = config.load().replace(db={"database": "pandaes_embedded"})
    first = Infra(cfg, log=_quiet, prefer_local=False).start()
    try:
        assert first.postgres is not None and first.postgres.origin == "started"
        port = first.postgres.port
        assert first.db_url == f"postgresql://postgres@127.0.0.1:{port}/pandaes_embedded"
        assert first.postgres.data_dir == env / "postgres" / "data"
        with psycopg.connect(first.db_url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            conn.execute("create table kept (x int)")
        pid = first.postgres.pid()
        assert pid is not None
    finally:
        first.stop()
    assert not pid_alive(pid), "the embedded server must stop with its owner"

    # again, chosen through the environment: the data folder is reused, not initialised anew
    monkeypatch.setenv(FORCE_EMBEDDED_DB_ENV, "1")
    with Infra(cfg, log=_quiet) as again:
        assert again.postgres is not None
        with psycopg.connect(again.db_url) as conn:
            assert conn.execute("select count(*) from kept").fetchone() == (0,)

    keep = Infra(cfg, log=_quiet, keep_running=True).start()
    url = keep.db_url
    keep.stop()
    try:
        with psycopg.connect(url) as conn:  # still running ...
            assert conn.execute("select 1").fetchone() == (1,)
        server = start_embedded_postgres(env, "pandaes_embedded")
        assert server.url("pandaes_embedded") == url
        assert server.origin == "shared"  # ... its owner (this process) is alive, so not ours to stop
    finally:
        assert stop_embedded_postgres(env)
    assert not stop_embedded_postgres(env)


OWNER = """
import sys, time
from pathlib import Path
from devenv.broker import start_tansu
from devenv.postgres import start_embedded_postgres
state = Path(sys.argv[1])
broker = start_tansu(state)
server = start_embedded_postgres(state, "pandaes_embedded")
print(broker.pid, server.pid(), server.port, flush=True)
time.sleep(120)
"""


def test_servers_of_an_owner_killed_with_sigkill(env: Path):
    """Its broker dies with it (memory only, nothing to keep); its PostgreSQL is adopted by the next owner."""
    env.mkdir(parents=True, exist_ok=True)
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(env)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(stack_module.__file__).parents[1],
                             env={**os.environ, "PYTHONPATH": str(Path(stack_module.__file__).parents[1])})
    try:
        broker_pid, pg_pid, pg_port = map(int, owner.stdout.readline().split())
    finally:
        owner.kill()
        owner.wait()
    wait_until(lambda: not pid_alive(broker_pid), 5, 0.05, "the broker to die with its owner")
    assert pid_alive(pg_pid)

    cfg = config.load().replace(db={"database": "pandaes_embedded"})
    with Infra(cfg, log=_quiet, prefer_local=False) as system:
        assert system.postgres is not None and system.postgres.origin == "adopted"
        assert system.postgres.port == pg_port
    assert not pid_alive(pg_pid)
