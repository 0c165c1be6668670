"""History in the output datasets: the per-file cost of the data path with 10 and with 100,000 files already there.

A task's outputs all go to one destination dataset, which over the task's life holds tens of thousands of
files; a cost that grows with them makes a running system slower as it ages. Two destination blocks are
pre-filled straight in the database (``datasets.load_history``: generate_series, counters set as the
services would have left them):
``small`` with ``prefill_small`` registered files, ``large`` with ``prefill_large``, each also with its
open sub block holding as many registered files (the tail of one long job set) and a closed sub block per
hundred files (earlier job sets). One after the other: ``small`` is filled and measured on an almost empty
database, then ``large`` is filled and measured, as a young and an aged system.

For each, ``prefill_jobs`` new jobs of two files each (an output and a log) go through the services'
own calls, poll by poll (``prefill_poll`` jobs):
- *record*: the setupper's write (``datasets.record``: the files expected in the sub and destination);
- *register*: the adder's write of a poll (``SqlAdderView.settle``: files ready, pending rows dropped);
- *close*: the closer's event path for the poll's jobs (``SqlCloserView.blocks_of_jobs`` → ``plan`` →
  ``apply``); the last poll closes the sub block, then the destination.

Reported per block: the database buffers the step's statements touched (shared hit + read, from
``auto_explain`` on the services' own connections: a count a loaded machine does not blur) and the median
wall time, per file (record, register) and per job (close), and whether the sub and destination blocks
ended closed with the counters right. The ratio large/small is the figure: 1 means the cost does not
grow with history. Data plugin calls are not included (the
``local`` plugin appends one line per file whatever the dataset holds).
"""

from __future__ import annotations

import collections
import json
import statistics
import time
from pathlib import Path
from typing import Any

from core import db
from core.config import Config
from plugins.base import OutputFile
from services.reactors import closer, datasets
from services.reactors.adder import SqlAdderView

BASE_PANDAID = 10_000_000    # the new jobs; the pre-filled files use ids below it


def missing() -> str:
    return ""


class Buffers:
    """Buffers touched per label, from the plans ``auto_explain`` sends to the client of each attached
    connection (``LOAD`` needs a superuser: without one, no count and ``ok`` False)."""

    def __init__(self) -> None:
        self.label: str | None = None
        self.total: collections.Counter[str] = collections.Counter()
        self.ok = True

    def attach(self, conn) -> None:
        try:
            conn.execute("LOAD 'auto_explain'")
        except Exception:
            self.ok = False
            return
        for setting in ("auto_explain.log_min_duration = 0", "auto_explain.log_analyze = on",
                        "auto_explain.log_buffers = on", "auto_explain.log_timing = off",
                        "auto_explain.log_format = json", "client_min_messages = log"):
            conn.execute(f"SET {setting}")
        conn.add_notice_handler(self._notice)

    def _notice(self, diag) -> None:
        msg = diag.message_primary or ""
        if self.label is None or "plan:" not in msg:
            return
        plan = json.loads(msg.split("plan:", 1)[1])["Plan"]
        self.total[self.label] += plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)


def run(cfg: Config, size: dict[str, Any], log_dir: Path, log=print) -> dict[str, Any]:
    sizes = {"small": size.get("prefill_small", 10), "large": size.get("prefill_large", 100_000)}
    n_jobs, poll = size.get("prefill_jobs", 200), size.get("prefill_poll", 50)
    blocks: dict[str, tuple[str, str]] = {}
    adder_view = SqlAdderView(cfg)
    closer_view = closer.SqlCloserView(cfg)
    times: dict[str, dict[str, list[float]]] = {c: {"record": [], "register": [], "close": []} for c in sizes}
    closed_at: dict[str, int | None] = dict.fromkeys(sizes)
    try:
        with db.connect(cfg, autocommit=True) as conn:
            meter = Buffers()
            for c in (conn, adder_view.conn, closer_view.conn):
                meter.attach(c)
            polls = [(start, min(start + poll, n_jobs)) for start in range(0, n_jobs, poll)]
            for j, (case, n) in enumerate(sizes.items()):
                t0 = time.perf_counter()
                dest = f"bench.prefilled.{case}"
                blocks[case] = (dest, sub := datasets.load_history(conn, dest, n, j * 1_000_000, "bench"))
                log(f"  {case}: pre-filled {n:,} files in {time.perf_counter() - t0:.1f}s")

                def job_files(start: int, end: int, j=j, dest=dest) -> tuple[list[int], list[tuple[int, str, str]]]:
                    pids = [BASE_PANDAID + j * 1_000_000 + k for k in range(start, end)]
                    return pids, [(pid, f"{dest}.{pid}.{kind}", kind) for pid in pids for kind in ("output", "log")]

                # the setupper: every job of the job set is set up (its files expected) before any finishes
                for start, end in polls:
                    pids, files = job_files(start, end)
                    rows = [datasets.BlockFile(dataset=b, pandaid=pid, lfn=lfn, type=kind, status="unknown")
                            for pid, lfn, kind in files for b in (sub, dest)]
                    meter.label, t = f"{case}.record", time.perf_counter()
                    datasets.record(conn, [], rows, "bench")
                    times[case]["record"].append((time.perf_counter() - t) / len(files))
                for start, end in polls:
                    pids, files = job_files(start, end)
                    # the adder: a poll's registrations in one transaction
                    reg = [(pid, OutputFile(lfn=lfn, type=kind, dataset=dest, block=sub, destination="X"))
                           for pid, lfn, kind in files]
                    meter.label, t = f"{case}.register", time.perf_counter()
                    adder_view.settle(reg, pids)
                    times[case]["register"].append((time.perf_counter() - t) / len(files))
                    # the closer: the poll's jobs reached a final state
                    meter.label, t = f"{case}.close", time.perf_counter()
                    b = closer_view.blocks_of_jobs(pids)
                    b.final_jobs |= set(pids)
                    p = closer.plan(b)
                    if p:
                        closer_view.apply(p)
                    times[case]["close"].append((time.perf_counter() - t) / len(pids))
                    meter.label = None
                    if sub in p.close_subs and closed_at[case] is None:
                        closed_at[case] = end
            for c in (conn, adder_view.conn, closer_view.conn):
                c.execute("SET client_min_messages = notice")
            out: dict[str, Any] = {"jobs": n_jobs, "poll": poll, "files_per_job": 2, "buffers_counted": meter.ok}
            for case, n in sizes.items():
                dest, sub = blocks[case]
                st = datasets.statuses(conn, [dest, sub])
                row = datasets.get(conn, sub) or {}
                counts = (row.get("nfiles"), row.get("nfiles_done"))
                out[case] = {
                    "prefilled_files": n,
                    "record_us_per_file": statistics.median(times[case]["record"]) * 1e6,
                    "register_us_per_file": statistics.median(times[case]["register"]) * 1e6,
                    "close_us_per_job": statistics.median(times[case]["close"]) * 1e6,
                    "record_buffers_per_file": meter.total[f"{case}.record"] / (2 * n_jobs) if meter.ok else None,
                    "register_buffers_per_file": meter.total[f"{case}.register"] / (2 * n_jobs) if meter.ok else None,
                    "close_buffers_per_job": meter.total[f"{case}.close"] / n_jobs if meter.ok else None,
                    "sub_closed_after_jobs": closed_at[case],
                    "sub_status": st.get(sub), "destination_status": st.get(dest),
                    "sub_counters_right": tuple(counts) == (n + 2 * n_jobs, n + 2 * n_jobs),
                }
    finally:
        adder_view.close()
        closer_view.close()
    for step, unit in (("record", "file"), ("register", "file"), ("close", "job")):
        us, buf = f"{step}_us_per_{unit}", f"{step}_buffers_per_{unit}"
        out[f"{step}_ratio_large_small"] = out["large"][us] / out["small"][us]
        line = (f"  {step:9s} per {unit}: {out['small'][us]:6.0f} µs / {out['large'][us]:6.0f} µs"
                f" (ratio {out[f'{step}_ratio_large_small']:.2f})")
        if meter.ok:
            out[f"{step}_buffers_ratio_large_small"] = out["large"][buf] / max(out["small"][buf], 1e-9)
            line += (f"; buffers {out['small'][buf]:6.1f} / {out['large'][buf]:6.1f}"
                     f" (ratio {out[f'{step}_buffers_ratio_large_small']:.2f})")
        log(line + f"   [{sizes['small']:,} / {sizes['large']:,} files before]")
    for case in sizes:
        log(f"  {case}: sub {out[case]['sub_status']} after {out[case]['sub_closed_after_jobs']} jobs, destination"
            f" {out[case]['destination_status']}, counters right: {out[case]['sub_counters_right']}")
    return out
