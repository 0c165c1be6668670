"""Components as separate processes, so each one's CPU time can be read and charged per job.

A component runs exactly as under ``pandaes run`` (``python -m cli.main component NAME``), with the
workload's topics and database in its environment. CPU time is user + system time of the process and
its children from /proc (via psutil); the broker and PostgreSQL are measured the same way when their
processes are on this machine, so "CPU per job" covers the whole system, not just our Python.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.env import child_env
from cli.components import projections_apart
from core.config import Config

REPO = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (0 if it is gone)."""
    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
        return total
    except psutil.Error:
        return 0.0


#: the embedded broker's process, set by ``bench.env.BenchEnv`` when it started one; None: an outside broker,
#: whose CPU this machine cannot see (the table says "broker not measured")
BROKER_PID: int | None = None


def set_broker_pid(pid: int | None) -> None:
    global BROKER_PID
    BROKER_PID = pid


def infra_groups() -> dict[str, list[int]]:
    """The broker (when embedded) and PostgreSQL as CPU groups, beside a workload's components: CPU per job
    is the whole machine's, not only our Python's."""
    groups = {"postgres": postgres_pids()}
    if BROKER_PID is not None:
        groups["broker"] = [BROKER_PID]
    return groups


def database_backends(dbname: str) -> list[int]:
    """The live PostgreSQL backends connected to database ``dbname``: what one system costs the server when
    other databases share it. A backend's title is ``postgres: [cluster:] user database host state``."""
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if (p.info["name"] or "").startswith("postgres"):
            words = " ".join(p.info["cmdline"] or ()).split()
            if not words or words[0] != "postgres:":
                continue
            words = words[1:]
            if words and words[0].endswith(":"):   # the cluster name, e.g. "15/main:"
                words = words[1:]
            if len(words) >= 2 and words[1] == dbname:
                out.append(p.pid)
    return out


def postgres_pids() -> list[int]:
    """The postmaster(s) of this machine: a PostgreSQL process whose parent is not one."""
    pids = []
    for p in psutil.process_iter(["name", "ppid"]):
        if (p.info["name"] or "").startswith("postgres"):
            with contextlib.suppress(psutil.Error):
                if not (psutil.Process(p.info["ppid"]).name() or "").startswith("postgres"):
                    pids.append(p.pid)
    return pids


def server_cpu_seconds(pid: int) -> float:
    """CPU of a forking server: itself, its live children and the children it has already reaped
    (PostgreSQL backends exit with their connection; the postmaster's children_* times keep them)."""
    try:
        t = psutil.Process(pid).cpu_times()
        return cpu_seconds(pid) + t.children_user + t.children_system
    except psutil.Error:
        return 0.0


class CpuMeter:
    """CPU seconds of named process groups between ``start()`` and ``stop()``."""

    def __init__(self, groups: dict[str, list[int]] | None = None):
        self.groups = dict(groups or {})
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pids in self.groups.items():
            read = server_cpu_seconds if name == "postgres" else cpu_seconds
            out[name] = sum(read(p) for p in pids)
        return out

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        self.used = {k: max(0.0, end[k] - self._start.get(k, 0.0)) for k in end}
        return self.used


class Components:
    """Starts named components as processes for one workload; stops them all at the end."""

    def __init__(self, cfg: Config, names: list[str], log_dir: Path, extra_env: dict[str, str] | None = None):
        self.cfg = cfg
        self.names = names
        self.log_dir = log_dir
        self.extra_env = extra_env or {}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> Components:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = child_env(self.cfg)
        env.update(self.extra_env)
        env = projections_apart(self.names, env)
        for name in self.names:
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "cli.main", "component", name],
                                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        return self

    def pids(self) -> dict[str, list[int]]:
        return {name: [p.pid] for name, p in self.procs.items()}

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"component {name} exited with {p.returncode}; see {self.log_dir / name}.log")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 15
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> Components:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
