"""The monitor's HTML: plain server-rendered pages (pure functions of what was read), one stylesheet and
one small script served by the monitor itself — nothing is loaded from anywhere else.

Every view is a GET with its filters in the query string, so a URL can be shared as it is.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

from core.states import EC_RETRIED, FINAL_STATES, JobStatus
from schemas.jobspec import JOB_ATTRIBUTES
from services.reactors.retrier import from_jedi

STATES = [s.value for s in JobStatus]
NAV = (("Jobs", "/jobs"), ("Queues", "/queues"), ("Tasks", "/tasks"), ("Live", "/live"))


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return e(value)


def link(path: str, params: Mapping[str, Any]) -> str:
    clean = {k: v for k, v in params.items() if v not in (None, "")}
    return e(path + ("?" + urlencode(clean) if clean else ""))


def layout(title: str, body: str, *, script: bool = False) -> str:
    nav = " ".join(f'<a href="{href}">{name}</a>' for name, href in NAV)
    js = '<script src="/static/monitor.js"></script>' if script else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} · pandaes monitor</title>'
            f'<link rel="stylesheet" href="/static/monitor.css"></head><body><header><b>pandaes monitor</b> {nav}'
            f'</header><main><h1>{e(title)}</h1>{body}</main>{js}</body></html>')


def state_badge(state: str) -> str:
    return f'<span class="state s-{e(state)}">{e(state)}</span>'


def counts_bar(counts: Mapping[str, int], href) -> str:
    """Jobs by state, each a link (``href(state)``); the total first."""
    items = [f'<a class="count" href="{href(None)}">all <b>{sum(counts.values())}</b></a>']
    items += [f'<a class="count" data-state="{e(s)}" href="{href(s)}">{state_badge(s)} <b>{counts[s]}</b></a>'
              for s in STATES if counts.get(s)]
    return f'<div class="counts" id="counts">{"".join(items)}</div>'


FILTERS = (("status", "state"), ("queue", "queue"), ("owner", "owner"), ("task", "jediTaskID"),
           ("label", "prodSourceLabel"), ("error", "error code"), ("since", "modified since"),
           ("until", "modified before"))


def jobs_page(params: Mapping[str, str], rows: Sequence[Mapping[str, Any]], counts: Mapping[str, int],
              has_next: bool, elapsed_ms: float) -> str:
    p = dict(params)
    page = int(p.get("page") or 1)
    inputs = []
    for name, label in FILTERS:
        if name == "status":
            opts = "".join(f'<option value="{s}"{" selected" if p.get("status") == s else ""}>{s}</option>'
                           for s in ["", *STATES])
            inputs.append(f'<label>{label} <select name="status" id="f-status">{opts}</select></label>')
        else:
            kind = ' type="datetime-local" step="1"' if name in ("since", "until") else ""
            inputs.append(f'<label>{label} <input name="{name}" id="f-{name}" value="{e(p.get(name))}"{kind}>'
                          f'</label>')
    hidden = "".join(f'<input type="hidden" name="{k}" value="{e(p[k])}">' for k in ("sort", "desc") if p.get(k))
    form = (f'<form class="filters" method="get" action="/jobs">{"".join(inputs)}{hidden}'
            f'<button id="apply" type="submit">filter</button> <a href="/jobs">clear</a></form>')

    def with_(**changes: Any) -> dict[str, Any]:
        return {**p, **changes}

    bar = counts_bar(counts, lambda s: link("/jobs", with_(status=s, page=None)))
    sort, desc = p.get("sort") or "pandaid", (p.get("desc") or "1") != "0"

    def head(key: str, label: str) -> str:
        arrow = (" ▼" if desc else " ▲") if sort == key else ""
        flip = "0" if (sort == key and desc) else "1"
        return f'<th><a href="{link("/jobs", with_(sort=key, desc=flip, page=None))}">{label}{arrow}</a></th>'

    cols = (head("pandaid", "PandaID") + head("status", "state") + head("queue", "queue") + "<th>owner</th>"
            + head("task", "jediTaskID") + "<th>label</th>" + head("priority", "priority") + "<th>attempt</th>"
            + "<th>errors</th>" + head("created", "created") + head("modified", "modified"))
    body_rows = []
    for r in rows:
        errors = " ".join(f"{k[:-9]}:{r[k]}" for k in r if k.endswith("ErrorCode") and r[k] not in (None, "0", "NULL"))
        body_rows.append(
            f'<tr data-pandaid="{r["pandaid"]}"><td><a href="/job/{r["pandaid"]}">{r["pandaid"]}</a></td>'
            f'<td>{state_badge(r["status"])}</td><td>{e(r["computing_site"])}</td><td>{e(r["owner"])}</td>'
            f'<td>{_task_link(r["jedi_task_id"])}</td><td>{e(r["prod_source_label"])}</td>'
            f'<td>{e(r["current_priority"])}</td><td>{e(r["attempt_nr"])}</td><td>{e(errors)}</td>'
            f'<td>{when(r["creation_time"])}</td><td>{when(r["modification_time"])}</td></tr>')
    table = (f'<table id="jobs"><thead><tr>{cols}</tr></thead><tbody>{"".join(body_rows)}</tbody></table>'
             if rows else '<p id="nojobs">no jobs match</p>')
    prev = f'<a id="prev" href="{link("/jobs", with_(page=page - 1))}">« previous</a>' if page > 1 else ""
    nxt = f'<a id="next" href="{link("/jobs", with_(page=page + 1))}">next »</a>' if has_next else ""
    pager = f'<div class="pager">{prev} page {page} {nxt} <small>({elapsed_ms:.0f} ms)</small></div>'
    return layout("Jobs", form + bar + pager + table + pager)


def _task_link(task: Any) -> str:
    return f'<a href="/task/{e(task)}">{e(task)}</a>' if task is not None else ""


def _payload_summary(body: Mapping[str, Any]) -> str:
    parts = []
    if body.get("type") == "submitted":
        job = body.get("job", {})
        parts.append(f"site={job.get('computingSite')} task={job.get('jediTaskID')} files={len(job.get('Files', []))}")
    if body.get("attrs"):
        parts.append(" ".join(f"{k}={v}" for k, v in list(body["attrs"].items())[:6]))
    if body.get("files"):
        parts.append(f"{len(body['files'])} file(s)")
    for key in ("kill_code", "pilot_state", "reply", "reason"):
        if body.get(key) not in (None, ""):
            parts.append(f"{key}={body[key]}")
    return "; ".join(parts)


def actions_box(pandaid: int, gateway: str, *, kill: bool, retry: bool) -> str:
    """Sign in (a bearer token kept in the browser's sessionStorage, never sent here), the kill button (a job
    still running) or the retry button (a failed job not retried yet); signed in, the log links use the token.

    The browser sends these to the gateway itself (``gateway``/api/v1/job/kill and job/retry, GET /cache/…,
    allowed across origins for this monitor only: services/gateway/cors.py); the gateway decides who may,
    and its answer is shown. No <form>: a form would send the token to the monitor when scripts are off.
    """
    buttons = ('<button id="kill" type="button">kill job</button> ' if kill else "") + (
        '<button id="retry" type="button">retry job</button> ' if retry else "")
    return (f'<div id="actions" class="actions" data-gateway="{e(gateway)}" data-pandaid="{pandaid}">'
            '<span id="signed-out"><label>token <input id="token" type="password" autocomplete="off" '
            'placeholder="bearer token (pandaes token)"></label> <button id="sign-in" type="button">sign in'
            f'</button></span><span id="signed-in" hidden>signed in {buttons}<button id="sign-out" type="button">'
            'sign out</button></span> <output id="action-result"></output></div>')


def logs_section(names: Sequence[str], gateway: str | None) -> str:
    """Links to the job's log files that are in the gateway's file cache (``/cache/<name>``); signed in, the
    page reads them with the token and shows text logs below the list."""
    if not names or not gateway:
        return ('<h2>Logs</h2><p id="nologs" class="note">no log file of this job is in the gateway\'s file '
                'cache</p>')
    items = "".join(f'<li><a class="log" href="{e(gateway)}/cache/{e(n)}" data-name="{e(n)}">{e(n)}</a></li>'
                    for n in names)
    return f'<h2>Logs</h2><ul id="logs">{items}</ul><pre id="log-view" hidden></pre>'


def retried_as(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The PandaID a failed job was retried as (the reason of its ``mark_retried`` event), if it was."""
    for h in reversed(history):
        if h.get("action") == "mark_retried":
            found = re.search(r"retried as (\d+)", str(h["body"].get("reason") or ""))
            return int(found.group(1)) if found else None
    return None


def job_page(pandaid: int, current: Mapping[str, Any] | None, history: Sequence[Mapping[str, Any]],
             at: int | None, folded: Mapping[str, Any] | None, files_now: Sequence[Mapping[str, Any]] = (),
             rejections: Sequence[Mapping[str, Any]] = (), gateway: str | None = None,
             logs: Sequence[str] = ()) -> str:
    if not history:
        return layout(f"Job {pandaid}", f"<p>no events for PandaID {pandaid}</p>")
    last_seq = history[-1]["seq"]
    shown_seq = at if at is not None else last_seq
    spec = (folded or {}).get("job") or (current or {}).get("spec") or {}
    files = folded["files"] if folded else files_now
    state = spec.get("jobStatus") or (current or {}).get("status")
    travel = (f'<form class="travel" method="get" action="/job/{pandaid}"><label>as at event '
              f'<input id="at" name="at" type="range" min="1" max="{last_seq}" value="{shown_seq}" '
              f'data-autosubmit="1"> <output id="at-value">{shown_seq}</output> of {last_seq}</label>'
              f' <a id="now" href="/job/{pandaid}">latest</a></form>')
    retry_id = retried_as(history)
    retried = f' · retried as <a id="retried-as" href="/job/{retry_id}">{retry_id}</a>' if retry_id else ""
    heading = (f'<p id="job-state">{state_badge(state or "?")} '
               f'{"as it was at seq " + str(shown_seq) if at is not None else "now"} · '
               f'queue {e(spec.get("computingSite"))} · task {_task_link(spec.get("jediTaskID"))}{retried}</p>')
    attrs = "".join(f"<tr><th>{a}</th><td>{e(spec[a])}</td></tr>" for a in JOB_ATTRIBUTES
                    if spec.get(a) not in (None, "NULL", ""))
    spec_table = f'<details open><summary>JobSpec</summary><table id="spec">{attrs}</table></details>'
    frows = "".join(f"<tr><td>{e(f.get('type'))}</td><td>{e(f.get('lfn'))}</td><td>{e(f.get('status'))}</td>"
                    f"<td>{e(f.get('dataset'))}</td><td>{e(f.get('destinationDBlock'))}</td><td>{e(f.get('GUID'))}</td>"
                    f"</tr>" for f in files)
    files_table = ('<details open><summary>Files</summary><table id="files"><thead><tr><th>type</th><th>lfn</th>'
                   f'<th>status</th><th>dataset</th><th>destination</th><th>GUID</th></tr></thead>{frows}</table>'
                   '</details>')
    trows = []
    for h in history:
        cls = ' class="current"' if h["seq"] == shown_seq else (' class="future"' if h["seq"] > shown_seq else "")
        trows.append(f'<tr{cls} data-seq="{h["seq"]}"><td><a href="/job/{pandaid}?at={h["seq"]}">{h["seq"]}</a></td>'
                     f'<td>{when(h["time"])}</td><td>{e(h["actor"])}</td><td>{e(h["type"])}</td>'
                     f'<td>{e(h["action"] or "")}</td><td>{e(h["from_state"])} → {e(h["to_state"])}</td>'
                     f'<td class="summary">{e(_payload_summary(h["body"]))}</td></tr>')
    timeline = ('<h2>Timeline</h2><table id="timeline"><thead><tr><th>seq</th><th>time (UTC)</th><th>actor</th>'
                '<th>type</th><th>action</th><th>transition</th><th>payload</th></tr></thead>'
                f'<tbody>{"".join(trows)}</tbody></table>'
                '<p class="note">Kill and retry are sent by your browser to the gateway with your token, and '
                'the gateway decides who may; the monitor itself is read-only.</p>')
    rrows = "".join(f'<tr><td>{e(r["time"])}</td><td>{e(r["command"])}</td>'
                    f'<td>{e(r["state"])}</td><td>{e(r["code"])}</td><td>{e(r["reason"])}</td></tr>'
                    for r in rejections)
    timeline += ('<h2>Rejected commands</h2>' + (
        '<table id="rejections"><thead><tr><th>time (UTC)</th><th>command</th><th>state then</th>'
        f'<th>code</th><th>reason</th></tr></thead><tbody>{rrows}</tbody></table>' if rejections else
        '<p id="norejections" class="note">none on the rejections topic (as far back as the broker keeps it)</p>'))
    body = (f'<div class="cols"><div>{spec_table}</div><div>{files_table}{logs_section(logs, gateway)}{timeline}'
            '</div></div>')
    status = (current or {}).get("status")
    kill = current is not None and status not in FINAL_STATES
    now_spec = (current or {}).get("spec") or {}
    # the gateway would refuse a JEDI job's retry (JEDI makes its next attempts): no button for one
    retry = (status == JobStatus.FAILED and retry_id is None and not from_jedi(now_spec)
             and str(now_spec.get("taskBufferErrorCode")) != str(EC_RETRIED))
    box = actions_box(pandaid, gateway, kill=kill, retry=retry) if gateway and (kill or retry or logs) else ""
    return layout(f"Job {pandaid}", heading + box + travel + body, script=True)


def as_of_form(action: str, at: str | None) -> str:
    """The "as of" control: the same view as it was at a past moment (folded from the archived events)."""
    note = (f'<span id="as-of">as it was at {e(at)} UTC</span> <a href="{e(action)}">now</a>' if at
            else '<span id="as-of">now</span>')
    return (f'<form class="filters" method="get" action="{e(action)}"><label>as of <input id="at-time" name="at" '
            f'type="datetime-local" step="1" value="{e(at)}"></label><button id="as-of-apply" type="submit">show'
            f'</button> {note}</form>')


def matrix_page(title: str, rows: Mapping[Any, Mapping[str, int]], key_name: str, href,
                prefix: str = "") -> str:
    """Jobs by state per queue or task: one row per key, one column per state that occurs."""
    used = [s for s in STATES if any(s in r for r in rows.values())]
    head = f"<tr><th>{e(key_name)}</th><th>total</th>" + "".join(f"<th>{state_badge(s)}</th>" for s in used) + "</tr>"
    body = []
    for key in sorted(rows, key=lambda k: str(k)):
        r = rows[key]
        cells = "".join(f'<td><a href="{href(key, s)}">{r[s]}</a></td>' if r.get(s) else "<td></td>" for s in used)
        body.append(f'<tr data-key="{e(key)}"><th><a href="{href(key, None)}">{e(key)}</a></th>'
                    f"<td>{sum(r.values())}</td>{cells}</tr>")
    return layout(title, prefix + f'<table id="matrix"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>')


def task_page(task_id: int, counts: Mapping[str, int], at: str | None = None) -> str:
    bar = counts_bar(counts, lambda s: link("/jobs", {"task": task_id, "status": s}))
    jobs = f'<p><a href="{link("/jobs", {"task": task_id})}">all jobs of the task</a></p>'
    return layout(f"Task {task_id}", as_of_form(f"/task/{task_id}", at) + bar + jobs)


def live_page(params: Mapping[str, str], recent: Sequence[Mapping[str, Any]]) -> str:
    form = (f'<form class="filters" method="get" action="/live"><label>queue <input name="queue" '
            f'value="{e(params.get("queue"))}"></label><label>jediTaskID <input name="task" '
            f'value="{e(params.get("task"))}"></label><button type="submit">filter</button></form>')
    src = link("/events", {"queue": params.get("queue"), "task": params.get("task")})
    rows = "".join(_live_row(r) for r in recent)
    return layout("Live", form + f'<p id="live-status">connecting…</p><table id="live" data-source="{src}">'
                  "<thead><tr><th>time (UTC)</th><th>PandaID</th><th>seq</th><th>actor</th><th>action</th>"
                  f"<th>transition</th></tr></thead><tbody>{rows}</tbody></table>", script=True)


def _live_row(r: Mapping[str, Any]) -> str:
    return (f'<tr data-pandaid="{r["PandaID"]}" data-seq="{r["seq"]}"><td>{e(r["time"])}</td>'
            f'<td><a href="/job/{r["PandaID"]}">{r["PandaID"]}</a></td><td>{r["seq"]}</td><td>{e(r["actor"])}</td>'
            f'<td>{e(r["action"])}</td><td>{e(r["from"])} → {e(r["to"])}</td></tr>')


def recent_row(r: Mapping[str, Any]) -> dict[str, Any]:
    """A job_events row in the live feed's shape."""
    return {"PandaID": r["pandaid"], "seq": r["seq"], "actor": r["actor"], "action": r["action"] or "submit",
            "from": r["from_state"], "to": r["to_state"], "time": when(r["time"]), "type": r["type"]}


def sse(item: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(item, default=str)}\n\n".encode()


def bars_svg(series: Mapping[str, Mapping[int, int]], start: int, end: int, bucket_s: int) -> str:
    """Jobs per time bucket as grouped bars, one colour per state: inline SVG, no plotting library."""
    colours = {JobStatus.FINISHED.value: "#4caf50", JobStatus.FAILED.value: "#e53935"}
    buckets = list(range(start - start % bucket_s, end, bucket_s))
    top = max([1, *(n for s in series.values() for n in s.values())])
    width, height, pad = 760, 160, 24
    slot = (width - pad) / max(1, len(buckets))
    bar = max(1.0, slot / max(1, len(series)) - 1)
    parts = [f'<svg id="throughput" width="{width}" height="{height + 20}" role="img" '
             f'aria-label="jobs finished and failed per {bucket_s // 60} minutes">',
             f'<text x="0" y="12" font-size="11">{top}</text><line x1="{pad}" y1="{height}" x2="{width}" '
             f'y2="{height}" stroke="#999"/>']
    for i, b in enumerate(buckets):
        for k, (state, counts) in enumerate(series.items()):
            n = counts.get(b, 0)
            if n:
                h = (height - 16) * n / top
                x = pad + i * slot + k * bar
                parts.append(f'<rect class="bar-{e(state)}" x="{x:.1f}" y="{height - h:.1f}" width="{bar:.1f}" '
                             f'height="{h:.1f}" fill="{colours.get(state, "#888")}"><title>{e(state)} {n} at '
                             f'{when(b)}</title></rect>')
    for i, anchor in ((0, "start"), (len(buckets) - 1, "end")):
        if buckets:
            parts.append(f'<text x="{pad + (i + (anchor == "end")) * slot:.0f}" y="{height + 14}" font-size="11" '
                         f'text-anchor="{anchor}">{when(buckets[i])[11:16]}</text>')
    legend = " ".join(f'<span style="color:{colours.get(s, "#888")}">■ {e(s)}</span>' for s in series)
    return "".join(parts) + "</svg><div>" + legend + "</div>"


def queue_page(queue: str, counts: Mapping[str, int], plot: str, hours: int, errors: Sequence[Mapping]) -> str:
    bar = counts_bar(counts, lambda s: link("/jobs", {"queue": queue, "status": s}))
    rows = []
    for r in errors:
        code = f"{r['kind']}:{r['code']}"
        rows.append(f'<tr data-code="{e(code)}"><td>{e(code)}</td>'
                    f'<td><a href="{link("/jobs", {"queue": queue, "error": code})}">{r["jobs"]}</a></td>'
                    f'<td><a href="/job/{r["example"]}">{r["example"]}</a></td><td>{e(r["diag"])}</td></tr>')
    table = ('<h2>Top error codes of failed jobs</h2><table id="errors"><thead><tr><th>code</th><th>jobs</th>'
             f'<th>example</th><th>diag</th></tr></thead><tbody>{"".join(rows)}</tbody></table>' if errors
             else '<p id="noerrors">no failed job with an error code</p>')
    hours_links = " ".join(f'<a href="{link(f"/queue/{queue}", {"hours": h})}">{h} h</a>' for h in (1, 6, 24, 72))
    return layout(f"Queue {queue}", bar + f"<h2>Finished and failed over the last {hours} h</h2><p>{hours_links}</p>"
                  + plot + table)
