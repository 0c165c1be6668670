"""Reading the core projections (jobs, files, job_events, consumer_positions): the one place that does.

Why: these tables belong to the projections that write them (``projections/migrations/001_core.sql``).
Their readers — the ledger's recovery, the gateway, the dispatcher, the CLI and the bench — ask here by
name ("a job", "the files of a job", "the ledger's snapshot of a partition") instead of each carrying its
own SQL, so a column or index change is made in one folder. The SQL text is module-level and shared
with the asyncio flavour (``projections.aqueries``); the functions here take an open psycopg connection
and leave transactions and reconnecting (``core.db.Reconnecting``) to the caller, except where one
database snapshot is the point (``partition_snapshot``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from core.ledger import CoreRow, PartitionSnapshot
from core.states import PILOT_TRANSFER_DIAG
from projections.wait import wait_position

# the jobs table's columns (001_core.sql), the only names a caller may pick
JOB_COLUMNS = (
    "pandaid", "partition", "seq", "status", "attempt_nr", "computing_site", "prod_source_label",
    "current_priority", "gshare", "resource_type", "core_count", "min_ram_count", "max_disk_count",
    "max_walltime", "jedi_task_id", "command_to_pilot", "special_handling", "creation_time",
    "modification_time", "state_change_time", "last_command_id", "spec",
)

JOB_SQL = "SELECT * FROM jobs WHERE pandaid = %s"
EXISTS_SQL = "SELECT 1 FROM jobs WHERE pandaid = %s"
FILES_SQL = "SELECT spec FROM files WHERE pandaid = %s ORDER BY type, lfn"
FILES_OF_SQL = "SELECT pandaid, spec FROM files WHERE pandaid = ANY(%s) ORDER BY pandaid, type, lfn"
HISTORY_SQL = ("SELECT seq, time, actor, type, action, from_state, to_state, body"
               " FROM job_events WHERE pandaid = %s ORDER BY seq")


def activated_at(pandaid: str, seq: str) -> str:
    """An SQL condition for another table owner's statement: the job ``pandaid`` is activated at ``seq`` in the
    jobs projection (both SQL expressions of that statement, e.g. ``l.pandaid``). Why a fragment: the
    dispatcher's lease sweep drops, in one statement, the leases whose job has moved on; reading them into the
    gateway to ask here cost its event loop milliseconds every sweep. The projection is still queried only
    from this package.

    A correlated aggregate, looked up by primary key for each row of the caller, and not ``EXISTS``: inside an
    OR PostgreSQL may run an ``EXISTS`` as a hashed subplan, reading every activated job to build the hash
    (95,510 rows, 80 ms, every sweep of 500 leases, when the planner believed there were 746)."""
    return (f"COALESCE((SELECT bool_or(j.status = 'activated') FROM jobs j WHERE j.pandaid = {pandaid}"
            f" AND j.seq = {seq}), false)")


POSITION_SQL = ("SELECT next_offset FROM consumer_positions WHERE projection = %s AND topic = %s"
                " AND partition = %s")
POSITIONS_SQL = "SELECT projection, partition, next_offset FROM consumer_positions WHERE topic = %s"
ARCHIVED_SQL = "SELECT count(*) FROM job_events"
CORE_SQL = ("SELECT pandaid, status, seq, attempt_nr, command_to_pilot, special_handling, prod_source_label,"
            " (status = 'transferring' AND COALESCE(spec->>'jobDispatcherErrorDiag', '') LIKE %s) AS pilot_transfer,"
            # a sent job's dispatch, for an undispatch after a rebuild: its latest `dispatch` in the archive
            # (a `set` or kill signal may have come after it), its last command if the archive lacks it
            " CASE WHEN status = 'sent' THEN COALESCE((SELECT e.command_id FROM job_events e"
            "  WHERE e.pandaid = jobs.pandaid AND e.action = 'dispatch' AND e.seq <= jobs.seq"
            "  ORDER BY e.seq DESC LIMIT 1), last_command_id) END AS dispatch_id,"
            # the code of the kill signalled to a sent job's pilot: an undone dispatch becomes that kill
            " CASE WHEN status = 'sent' AND command_to_pilot = 'tobekilled' THEN (SELECT (e.body->>'kill_code')::int"
            "  FROM job_events e WHERE e.pandaid = jobs.pandaid AND e.action = 'kill_signal' AND e.seq <= jobs.seq"
            "  ORDER BY e.seq DESC LIMIT 1) END AS kill_code"
            " FROM jobs")
_PILOT_TRANSFER_LIKE = PILOT_TRANSFER_DIAG + "%"   # PanDA's mark of a job its pilot put into transferring
# the live jobs of a partition: the hot table only, final jobs left out (jobs_live_partition, 060)
LEDGER_STATE_SQL = (CORE_SQL + " WHERE partition = %s AND NOT archived"
                    " AND status NOT IN ('finished', 'failed', 'cancelled', 'closed')")
# jobs by PandaID wherever they live (hot or archived): the ledger's late commands
LEDGER_ROWS_SQL = CORE_SQL + " WHERE pandaid = ANY(%s)"
# PandaIDs are handed out by the database (001_core.sql), as PanDA's JOBSDEFINED4_PANDAID_SEQ
NEXT_PANDAIDS_SQL = "SELECT nextval('pandaid_seq') FROM generate_series(1, %s)"
ARCHIVE_IN_LOG_ORDER_SQL = ("SELECT partition, pandaid, seq, body::text FROM job_events"
                            " ORDER BY partition, kafka_offset, pandaid, seq")


def jobs_sql(columns: Sequence[str] | None = None) -> str:
    """``SELECT <columns> FROM jobs WHERE pandaid = ANY(%s)``; ``pandaid`` is always selected (pure)."""
    cols = list(dict.fromkeys(["pandaid", *(columns or JOB_COLUMNS)]))
    unknown = [c for c in cols if c not in JOB_COLUMNS]
    if unknown:
        raise ValueError(f"not columns of the jobs projection: {', '.join(unknown)}")
    return f"SELECT {', '.join(cols)} FROM jobs WHERE pandaid = ANY(%s)"


def count_by_status_sql(statuses: Sequence[str] | None) -> tuple[str, tuple[Any, ...]]:
    """The number of jobs per status, of every status or only of ``statuses`` (pure)."""
    if statuses is None:
        return "SELECT status, count(*) FROM jobs GROUP BY status", ()
    return "SELECT status, count(*) FROM jobs WHERE status = ANY(%s) GROUP BY status", (list(statuses),)


# ------------------------------------------------------------------------------------------- jobs
def job(conn: psycopg.Connection, pandaid: int) -> dict[str, Any] | None:
    """The job's row (every column; ``spec`` is the whole JobSpec without Files), None if unknown."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(JOB_SQL, (pandaid,)).fetchone()


def jobs(conn: psycopg.Connection, pandaids: Iterable[int],
         columns: Sequence[str] | None = None) -> dict[int, dict[str, Any]]:
    """PandaID → row (``columns`` and pandaid, default every column) of the known ones among ``pandaids``."""
    with conn.cursor(row_factory=dict_row) as cur:
        return {r["pandaid"]: r for r in cur.execute(jobs_sql(columns), (list(pandaids),)).fetchall()}


def next_pandaids(conn: psycopg.Connection, n: int) -> list[int]:
    """``n`` new PandaIDs from the database's sequence."""
    return [r[0] for r in conn.execute(NEXT_PANDAIDS_SQL, (n,)).fetchall()]


def exists(conn: psycopg.Connection, pandaid: int) -> bool:
    return conn.execute(EXISTS_SQL, (pandaid,)).fetchone() is not None


def count_by_status(conn: psycopg.Connection, statuses: Sequence[str] | None = None) -> dict[str, int]:
    """status → number of jobs (statuses without jobs are absent)."""
    sql, params = count_by_status_sql(statuses)
    return dict(conn.execute(sql, params).fetchall())


# ------------------------------------------------------------------------------------------ files
def files(conn: psycopg.Connection, pandaid: int) -> list[dict[str, Any]]:
    """The job's FileSpec dicts (the files projection's ``spec``), in (type, lfn) order."""
    return [r[0] for r in conn.execute(FILES_SQL, (pandaid,)).fetchall()]


def files_of(conn: psycopg.Connection, pandaids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """PandaID → its FileSpec dicts, for the jobs of ``pandaids`` that have files."""
    out: dict[int, list[dict[str, Any]]] = {}
    for pid, spec in conn.execute(FILES_OF_SQL, (list(pandaids),)).fetchall():
        out.setdefault(pid, []).append(spec)
    return out


# ---------------------------------------------------------------------------------------- archive
def history(conn: psycopg.Connection, pandaid: int) -> list[dict[str, Any]]:
    """The job's events from the archive, by seq (seq, time, actor, type, action, from/to state, body)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(HISTORY_SQL, (pandaid,)).fetchall()


def archived_count(conn: psycopg.Connection) -> int:
    return conn.execute(ARCHIVED_SQL).fetchone()[0]


def archive_in_log_order(conn: psycopg.Connection, batch: int = 5000) -> Iterator[tuple[int, int, int, str]]:
    """(partition, PandaID, seq, body JSON) of every archived event, partition by partition in offset order.

    A server-side cursor: the archive is streamed ``batch`` rows at a time, never loaded whole. ``conn``
    must not be in autocommit mode (the cursor lives in the caller's transaction)."""
    with conn.cursor(name="pandaes_archive") as cur:
        cur.itersize = batch
        cur.execute(ARCHIVE_IN_LOG_ORDER_SQL)
        yield from cur


#: up to N archived (PandaID, partition) pairs of each partition, from the start of each: the partitions found by
#: skipping through the position index (a recursive loose scan), not by reading the archive
PARTITION_SAMPLE_SQL = """
WITH RECURSIVE parts(p) AS (
    (SELECT partition FROM job_events ORDER BY partition LIMIT 1)
  UNION ALL
    SELECT (SELECT partition FROM job_events WHERE partition > parts.p ORDER BY partition LIMIT 1)
    FROM parts WHERE parts.p IS NOT NULL
)
SELECT s.pandaid, parts.p FROM parts
CROSS JOIN LATERAL (SELECT pandaid FROM job_events WHERE partition = parts.p ORDER BY kafka_offset LIMIT %s) s
WHERE parts.p IS NOT NULL
"""


def partition_sample(conn: psycopg.Connection, per_partition: int = 64) -> list[tuple[int, int]]:
    """(PandaID, partition) of the first ``per_partition`` archived events of every partition the archive holds:
    enough to tell which partition counts the archive fits (``cli.restore``) before anything is published."""
    return [(int(pid), int(p)) for pid, p in conn.execute(PARTITION_SAMPLE_SQL, (per_partition,)).fetchall()]


def archived_before(conn: psycopg.Connection, partition: int, offset: int,
                    batch: int = 5000) -> Iterator[tuple[int, str]]:
    """(log offset, body JSON) of the archived events of ``partition`` below ``offset``, in offset order:
    what replay tools read where the broker's log starts later than 0. Streamed like
    ``archive_in_log_order`` (``conn`` not in autocommit mode)."""
    with conn.cursor(name=f"pandaes_archived_before_{partition}") as cur:
        cur.itersize = batch
        cur.execute("SELECT kafka_offset, body::text FROM job_events WHERE partition = %s AND kafka_offset < %s"
                    " ORDER BY kafka_offset, pandaid, seq", (partition, offset))
        yield from cur


def stage_seconds(conn: psycopg.Connection) -> list[tuple[str, float]]:
    """(``from → to (action)``, seconds since the job's previous event) for every event but the first."""
    rows = conn.execute(
        "SELECT from_state || ' → ' || to_state || coalesce(' (' || action || ')', ''),"
        " extract(epoch FROM time - lag(time) OVER w)"
        " FROM job_events WINDOW w AS (PARTITION BY pandaid ORDER BY seq)").fetchall()
    return [(stage, float(seconds)) for stage, seconds in rows if seconds is not None]


def finish_latencies(conn: psycopg.Connection) -> list[tuple[float, float]]:
    """(epoch of the job's move to finished, seconds since its submission) per finished job."""
    rows = conn.execute(
        "SELECT extract(epoch FROM f.time), extract(epoch FROM f.time - s.time) FROM job_events f"
        " JOIN job_events s ON s.pandaid = f.pandaid AND s.seq = 1"
        " WHERE f.to_state = 'finished' AND f.from_state <> 'finished'").fetchall()
    return [(float(at), float(seconds)) for at, seconds in rows]


def event_times(conn: psycopg.Connection) -> list[float]:
    """The epoch time of every archived event."""
    return [float(r[0]) for r in conn.execute("SELECT extract(epoch FROM time) FROM job_events")]


# -------------------------------------------------------------------------------------- positions
def positions(conn: psycopg.Connection, topic: str) -> list[tuple[str, int, int]]:
    """(projection, partition, next offset) of every projection on ``topic``."""
    return [tuple(r) for r in conn.execute(POSITIONS_SQL, (topic,)).fetchall()]


def core_rows(conn: psycopg.Connection) -> list[CoreRow]:
    """Every job's core state columns (``CoreRow``), as ``verify`` compares them with the state machine's fold."""
    return [CoreRow._make(r) for r in conn.execute(CORE_SQL, (_PILOT_TRANSFER_LIKE,))]


def jobs_position(conn: psycopg.Connection, topic: str, partition: int) -> int:
    """The jobs projection's next offset in ``partition`` of ``topic`` (0: it has applied nothing there)."""
    row = conn.execute(POSITION_SQL, ("jobs", topic, partition)).fetchone()
    return row[0] if row else 0


def ledger_state_query(partition: int) -> tuple[str, tuple[Any, ...]]:
    """The snapshot's query of the live jobs of ``partition`` and its parameters (pure; the scale bench
    explains it)."""
    return LEDGER_STATE_SQL, (_PILOT_TRANSFER_LIKE, partition)


class PartitionReads:
    """The ledger's reads of the jobs projection (``core.ledger.SnapshotReader``).

    Called, it is the snapshot of a partition the ledger rebuilds from: the *live* jobs (final ones left
    out, archived ones never read) and the position they reflect. ``rows`` and ``position`` serve the
    ledger's commands for jobs it no longer holds in memory (final and evicted, or never seen)."""

    def __call__(self, conn: psycopg.Connection, topic: str, partition: int) -> PartitionSnapshot:
        """The jobs projection's live rows of one partition and its position there, in ONE database snapshot.

        The ledger folds the log's events from ``next_offset`` on top of the rows; read apart, a projector
        batch committed in between would be applied twice or skipped. ``conn`` must not be in a transaction."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            start = jobs_position(conn, topic, partition)
            rows = ([CoreRow._make(r) for r in conn.execute(LEDGER_STATE_SQL, (_PILOT_TRANSFER_LIKE, partition))]
                    if start else [])
        return PartitionSnapshot(start, rows)

    def position(self, conn: psycopg.Connection, topic: str, partition: int) -> int:
        return jobs_position(conn, topic, partition)

    def rows(self, conn: psycopg.Connection, topic: str, pandaids: Iterable[int], *,
             at_least: Mapping[int, int], timeout: float) -> dict[int, CoreRow]:
        """The rows of ``pandaids`` (hot or archived; unknown ones absent), read once the jobs projection has
        applied every event of each partition of ``at_least`` below its offset there
        (``projections.wait.wait_position``; its ``PositionLag`` after ``timeout``)."""
        for partition, offset in at_least.items():
            wait_position(lambda p=partition: jobs_position(conn, topic, p), offset, timeout)
        return {r[0]: CoreRow._make(r)
                for r in conn.execute(LEDGER_ROWS_SQL, (_PILOT_TRANSFER_LIKE, sorted(set(pandaids))))}


#: the ledger's reads (``Ledger(cfg, snapshot=partition_snapshot)``); ``partition_snapshot(conn, topic, p)``
#: is the snapshot itself
partition_snapshot = PartitionReads()


#: who a job belongs to and who holds it: the actor of its submission, its prodUserID and VO, and the actor
#: of its latest ``dispatch`` (the pilot it was sent to); read by the gateway's access checks
#: the jobs of one JEDI task (any state), for the task operations of the gateway (jobs_task index)
TASK_JOBS_SQL = "SELECT pandaid, status FROM jobs WHERE jedi_task_id = %s ORDER BY pandaid"

JOB_BINDINGS_SQL = (
    "SELECT j.pandaid, j.spec->>'prodUserID' AS prod_user, j.spec->>'VO' AS vo,"
    " (SELECT e.actor FROM job_events e WHERE e.pandaid = j.pandaid AND e.seq = 1) AS submitted_by,"
    " (SELECT e.actor FROM job_events e WHERE e.pandaid = j.pandaid AND e.action = 'dispatch'"
    "  ORDER BY e.seq DESC LIMIT 1) AS dispatched_to"
    " FROM jobs j WHERE j.pandaid = ANY(%s)"
)
