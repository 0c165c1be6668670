"""The three outputs of a run: a table on stdout, a JSON file and a PNG plot under bench/results/."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers ran on (they mean little without it)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_gb, 1), "python": platform.python_version(),
            "kernel": platform.release(), "load_avg_at_start": os.getloadavg()}


def _ms(lat: dict[str, Any]) -> str:
    return f"{lat.get('p50_ms', 0):.0f}/{lat.get('p95_ms', 0):.0f}/{lat.get('p99_ms', 0):.0f} ms"


def _times(value: float | None, floor: float | None, what: str) -> str:
    return f"{value / floor:,.0f}× {what}" if value and floor else ""


def _pct(value: float | None, ceiling: float | None, what: str) -> str:
    return f"{value / ceiling:.1%} of {what}" if value and ceiling else ""


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(workload, figure, value, vs ceiling, target) lines of the table.

    Rates are shown as a fraction of the matching ceiling of the same run, latencies as a multiple of the
    matching floor (one broker round trip; one database commit)."""
    out: list[tuple[str, str, str, str, str]] = []
    ceil = results.get("ceilings", {})
    client = results.get("kafka_client", "confluent")
    prod = ceil.get("produce", {}).get("per_s")
    cons = ceil.get("consume", {}).get("per_s")
    copy = ceil.get("db_insert", {}).get("copy", {}).get("per_s")
    rtt = ceil.get("broker_rtt", {}).get("p50_ms")
    commit = ceil.get("db_commit", {}).get("p50_ms")
    if ceil:
        out.append(("ceiling", f"broker produce ({client}, acks=all, idempotent)", f"{prod:,.0f} rec/s", "", ""))
        out.append(("ceiling", "broker consume (read_committed)", f"{cons:,.0f} rec/s", "", ""))
        out.append(("ceiling", "PostgreSQL COPY, 2k rows/txn", f"{copy:,.0f} rows/s", "", ""))
        out.append(("ceiling", "PostgreSQL executemany, 2k rows/txn",
                    f"{ceil['db_insert']['executemany']['per_s']:,.0f} rows/s", "", ""))
        if rtt:
            out.append(("floor", "broker round trip send → read_committed poll (p50/p95/p99)",
                        _ms(ceil["broker_rtt"]), "", ""))
        if commit:
            out.append(("floor", "PostgreSQL one-row commit (p50/p95/p99)", _ms(ceil["db_commit"]), "", ""))
        growth = ceil.get("fetch_growth", {})
        if growth.get("measured"):
            steps = growth["steps"]
            out.append(("floor", "broker CPU per record fetched alone, by batches in its partition",
                        ", ".join(f"{s['batches']:,}: {s['broker_us_per_record']:,.0f} µs" for s in steps)
                        + f" (×{growth['growth']:.1f})", "", "flat (a cost that does not grow with history)"))
    for name, c in results.get("ceilings_alt", {}).items():
        out.append(("ceiling", f"broker produce ({name})", f"{c['produce']['per_s']:,.0f} rec/s", "", ""))
        out.append(("ceiling", f"broker consume ({name})", f"{c['consume']['per_s']:,.0f} rec/s", "", ""))
    rb = results.get("rebuild")
    if rb:
        # the jobs projection writes about one row per job, i.e. per 8 events of this workload
        frac = ", ".join(x for x in (_pct(rb["events_per_s"], cons, "consume"),
                                     _pct(rb["events_per_s"] / 8, copy, "COPY (1 row / 8 events)")) if x)
        out.append(("rebuild", f"jobs projection from {rb['events']:,} events", f"{rb['events_per_s']:,.0f} ev/s",
                    frac, "≥ 200,000 ev/s"))
    kl = results.get("kill")
    if kl:
        lat = kl["latency"]
        out.append(("kill", f"kill → event at {kl['offered_per_s']:g}/s offered (p50/p95/p99)", _ms(lat),
                    _times(lat.get("p50_ms"), rtt, "broker RTT (p50)"), "p99 ≤ 25 ms at 1,000/s"))
    dp = results.get("dispatch")
    if dp:
        for level in dp.get("levels", []):
            lat = level["latency"]
            what = (f"getJob, {level['offered_per_s']:g} req/s offered (open loop, {level['pilots']} pilots): "
                    f"{level['requests_per_s']:,.0f} answered/s" if level.get("offered_per_s") else
                    f"getJob, {level['pilots']} pilots: {level['requests_per_s']:,.0f} req/s")
            out.append(("dispatch", f"{what} (p50/p95/p99)", _ms(lat),
                        _times(lat.get("p50_ms"), rtt, "broker RTT (p50)"), "p99 ≤ 20 ms at 500 req/s"))
            windows = [w for w in level.get("latency_by_window", []) if w.get("n")]
            if level.get("offered_per_s") and windows:   # the level's latency from its first fifth to its last
                out.append(("dispatch", f"getJob, {level['offered_per_s']:g} req/s offered: p99 by fifth of the level",
                            " → ".join(f"{w['p99_ms']:,.0f}" for w in windows) + " ms", "", "p99 ≤ 20 ms at 500 req/s"))
    lc = results.get("lifecycle")
    if lc:
        # every transition is one command and one event produced (plus the outcome the caller reads)
        out.append(("lifecycle", f"{lc['finished']:,}/{lc['jobs']:,} jobs submit → finished, {lc['pilots']} pilots",
                    f"{lc['jobs_per_s']:,.1f} jobs/s (steady {lc.get('steady_jobs_per_s', 0):,.1f})", "",
                    "≥ 250 jobs/s"))
        steady = lc.get("steady_transitions_per_s") or lc.get("transitions_per_s", 0)
        out.append(("lifecycle", "validated transitions (events)",
                    f"{lc.get('transitions_per_s', 0):,.0f} ev/s (steady {steady:,.0f})",
                    _pct(2 * steady, prod, "produce (command + event)"), ""))
        lat = lc.get("latency", {})
        if lat.get("n"):
            out.append(("lifecycle", "submit → finished (p50/p95/p99)",
                        f"{lat['p50_ms'] / 1000:.1f}/{lat['p95_ms'] / 1000:.1f}/{lat['p99_ms'] / 1000:.1f} s",
                        _times(lat.get("p50_ms"), rtt, "broker RTT (p50)"), ""))
        stages = lc.get("stages") or {}
        if stages:
            slow = sorted(((k, v) for k, v in stages.items() if v.get("n")), key=lambda kv: -kv[1]["p50_ms"])[:3]
            out.append(("lifecycle", "slowest steps (p50 wait before the event)",
                        ", ".join(f"{k.split(' (')[0]} {v['p50_ms'] / 1000:.1f} s" for k, v in slow), "", ""))
    hv = results.get("harvester")
    if hv:   # the bulk workload, beside the single-pilot lifecycle
        got = f", {hv['jobs_per_acquire']:.0f} handed out" if "jobs_per_acquire" in hv else ""
        out.append(("harvester", f"{hv['finished']:,}/{hv['jobs']:,} jobs bulk (batches of {hv['batch']}{got}, "
                    f"{hv['instances']} instances)", f"{hv['jobs_per_s']:,.1f} jobs/s", "", "≥ 1,000 jobs/s"))
        calls = hv.get("call_latency") or {}
        if calls:   # where a cycle's time goes
            out.append(("harvester", "cycle: p50 of each call", ", ".join(
                f"{step.split('/', 1)[-1]} {p['p50_ms']:.0f} ms" for step, p in calls.items() if p.get("n")), "", ""))
        kc = hv.get("kill_to_command") or {}
        if kc.get("n"):
            out.append(("harvester", "kill → kill-worker command (p50/p95/p99)", _ms(kc), "", ""))
    for wl, key, unit in (("lifecycle", "cpu_us_per_job", "job"), ("harvester", "cpu_us_per_job", "job"),
                          ("kill", "cpu_us_per_kill", "kill"),
                          ("dispatch", "cpu_us_per_request", "getJob"), ("rebuild", "cpu_us_per_event", "event")):
        per = (results.get(wl) or {}).get(key)
        if per:
            total = sum(per.values())
            text = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
            top = max(per, key=per.get)
            cores = (results.get("machine") or {}).get("nproc") or 1
            bound = f"; {cores} cores / total → ≤ {cores * 1e6 / total:,.0f} {unit}s/s" if total else ""
            if "broker" not in per:
                text += ", broker not measured (outside this machine's view)"
            out.append((wl, f"CPU µs per {unit} (total {total:,.0f})", text,
                        f"top: {top.split(' ')[0]} {per[top] / total:.0%}{bound}" if total else "", ""))
    idle = results.get("idle")
    if idle:
        pct = idle["cpu_pct_of_core"]
        text = ", ".join(f"{k} {v:.2f}" for k, v in sorted(pct.items(), key=lambda kv: -kv[1]))
        if not idle.get("broker_measured"):
            text += ", broker not measured"
        out.append(("idle", f"CPU % of one core, whole system idle {idle['seconds']:.0f} s "
                    f"(total {idle['total_pct']:.2f}%)", text, "postgres: this system's sessions", "< 2%"))
    pf = results.get("prefilled")
    if pf:
        small, large = pf["small"], pf["large"]
        key = "buffers_ratio_large_small" if pf.get("buffers_counted") else "ratio_large_small"
        text = ", ".join(f"{step} ×{pf[f'{step}_{key}']:.2f}" for step in ("record", "register", "close"))
        text += " (DB buffers)" if pf.get("buffers_counted") else " (wall time)"
        out.append(("prefilled", f"data path cost, {large['prefilled_files']:,} vs {small['prefilled_files']:,} files "
                    f"already in the dataset (large/small)", text,
                    f"register {large['register_us_per_file']:.0f} µs/file, close {large['close_us_per_job']:.0f} "
                    f"µs/job", "×1"))
    return out


def table(results: dict[str, Any]) -> str:
    lines = rows(results)
    widths = [max(len(r[i]) for r in lines + [("workload", "figure", "value", "vs ceiling", "target")])
              for i in range(5)]
    head = ("workload", "figure", "value", "vs ceiling", "target")
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in lines])


def save(results: dict[str, Any], tag: str, directory: Path = RESULTS) -> tuple[Path, Path | None]:
    """``<stamp>-<tag>.json`` and ``.png``, plus ``latest-<tag>.json`` (the one docs/performance.md quotes)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"{stamp}-{tag}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    (directory / f"latest-{tag}.json").write_text(json.dumps(results, indent=1, default=str))
    return path, plot(results, directory / f"{stamp}-{tag}.png")


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Throughput over time of each workload, and latency percentiles side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, label in (("lifecycle", "lifecycle: jobs finished/s"), ("rebuild", "rebuild: events/s"),
                        ("kill", "kill: answers/s")):
        series = (results.get(name) or {}).get("timeline") or []
        if series:
            ax1.plot([t for t, _ in series], [r for _, r in series], label=label)
    for level in (results.get("dispatch") or {}).get("levels", []):
        series = level.get("timeline") or []
        if series:
            ax1.plot([t for t, _ in series], [r for _, r in series], label=_level_name(level, "getJob/s, "))
    ax1.set_xlabel("seconds since start of the workload")
    ax1.set_ylabel("per second")
    ax1.set_yscale("log")
    ax1.set_title("throughput over time")
    ax1.legend(fontsize=8)
    groups: list[tuple[str, dict]] = []
    if results.get("kill"):
        groups.append(("kill → event", results["kill"]["latency"]))
    for level in (results.get("dispatch") or {}).get("levels", []):
        groups.append((_level_name(level, "getJob "), level["latency"]))
    if (results.get("lifecycle") or {}).get("latency", {}).get("n"):
        groups.append(("submit → finished", results["lifecycle"]["latency"]))
    if groups:
        width = 0.25
        for i, pct in enumerate(("p50_ms", "p95_ms", "p99_ms")):
            ax2.bar([x + i * width for x in range(len(groups))], [g[1].get(pct, 0) for g in groups], width,
                    label=pct[:-3])
        ax2.set_xticks([x + width for x in range(len(groups))], [g[0] for g in groups], fontsize=8)
        ax2.set_yscale("log")
        ax2.set_ylabel("milliseconds")
        ax2.set_title("latency percentiles")
        ax2.legend(fontsize=8)
    m = results.get("machine", {})
    fig.suptitle(f"pandaes bench ({results.get('mode')}) — {m.get('nproc')} cores, {m.get('cpu')}, "
                 f"kafka client {results.get('kafka_client')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _level_name(level: dict[str, Any], prefix: str) -> str:
    """A dispatch level's short name: its offered rate (open loop) or its number of pilots (closed loop)."""
    if level.get("offered_per_s"):
        return f"{prefix}{level['offered_per_s']:g}/s offered"
    return f"{prefix}×{level['pilots']} pilots"
