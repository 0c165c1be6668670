"""Code names a job state through ``core.states.JobStatus`` (or a group of core/states.py), never by a bare string.

The check reads the AST of every module under core/, services/, projections/ and plugins/ except
core/states.py, and flags each string constant whose whole value is a job state: text that merely contains
one (a docstring, a log message, SQL) does not count. What a pilot reports is spelled ``PilotState``.
Some other vocabularies of PanDA share words with the job states; their uses are allowed below, one
(file, value) at a time, so a job state written as a bare string in the same file still has to be one of
them to pass unnoticed, and each new use of a shared word has to be argued here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from core.states import JobStatus

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("core", "services", "projections", "plugins")
EXEMPT = "core/states.py"   # the table itself is written in strings

ALLOWED: dict[tuple[str, str], str] = {
    # file statuses (FileSpec.status, dataset_files.status)
    ("services/clock/finisher.py", "transferring"): "an output file still being transferred",
    ("services/reactors/adder.py", "transferring"): "the status the adder gives an output that must move",
    ("services/reactors/adder.py", "merging"): "the status the adder gives an output of a merge job",
    ("services/reactors/setupper.py", "pending"): "an input file waiting for its dispatch block",
    ("projections/files.py", "failed"): "an output file of a job that ended badly",
    # block statuses (datasets.status) and the closer's file statuses
    ("services/reactors/closer.py", "closed"): "a closed sub or destination block",
    ("services/reactors/closer.py", "failed"): "a failed block or file",
    ("services/reactors/closer.py", "defined"): "a destination block not closed yet",
    # updateWorkerPilotStatus: a Harvester worker's status (started/finished)
    ("services/gateway/legacy.py", "finished"): "the worker status the handler accepts",
    ("services/gateway/openapi.py", "finished"): "the same, in the API description",
    # Harvester's WorkSpec statuses (a worker's, not a job's)
    ("services/harvester/store.py", "finished"): "a worker that is over",
    ("services/harvester/store.py", "failed"): "the same",
    ("services/harvester/store.py", "cancelled"): "the same",
    # an event range's statuses (JEDI_Events), not a job's
    **{("services/eventservice/ranges.py", s): "an event range's status"
       for s in ("sent", "running", "finished", "failed", "cancelled")},
    # a counter's name in the dispatcher's statistics
    ("services/gateway/dispatcher.py", "sent"): "the number of jobs handed to pilots",
}


def bare_states(source: str) -> Iterator[tuple[int, str]]:
    """(line, value) of every string constant in ``source`` that equals a job state."""
    states = set(JobStatus)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in states:
            yield node.lineno, node.value


def _modules() -> Iterator[tuple[str, str]]:
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name != EXEMPT:
                yield name, path.read_text()


def test_the_check_sees_bare_states_and_only_them():
    code = 'if job.status == "running" and spec["jobStatus"] in ("sent", JobStatus.STARTING):\n    log("running")\n'
    assert sorted(bare_states(code)) == [(1, "running"), (1, "sent"), (2, "running")]
    code = 'if job.status == JobStatus.RUNNING:\n    log("running late", "SELECT 1 WHERE status = \'sent\'")\n'
    assert list(bare_states(code)) == []


def test_no_bare_job_state_outside_the_state_table():
    found, used = [], set()
    for name, source in _modules():
        for line, value in bare_states(source):
            if (name, value) in ALLOWED:
                used.add((name, value))
            else:
                found.append(f"{name}:{line}: {value!r}")
    assert not found, "use JobStatus (or a group of core.states) instead of: " + ", ".join(found)
    assert not set(ALLOWED) - used, f"allowed but no longer used, remove: {sorted(set(ALLOWED) - used)}"
