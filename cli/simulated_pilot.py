"""A pilot simulator that speaks the legacy protocol the way pilot3 3.7 does (PANDA-CLIENTS §2).

Each simulated pilot: ``getJob`` (form-encoded, the fields pilot3 sends), ``updateJob`` ``starting``,
``running``, ``running`` heartbeats during the "payload", then the final ``finished`` with an ``xml``
output report ``{lfn: {guid, fsize, adler32, surl}}`` for its outputs and log — or, when a reply says
``tobekilled``, a final ``failed`` with pilotErrorCode 1144 / transExitCode 240 as pilot3 reports it.
Like pilot3's ``send_update`` it resends an update only when the reply is not JSON.

``simulate`` is the async core used by ``pandaes pilot-sim``, the tests and the benchmarks; it records
every PandaID received and the latency of each call so callers can check and measure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import zlib
from typing import Any

import aiohttp
import msgspec
from aiohttp.payload import BytesPayload

from cli.pilot_http import HttpError, PilotConnection
from core.states import PilotState

PILOT_VERSION = "3.7.0.36"
KILLED_CODE, KILLED_EXIT = 1144, 240


#: the headers of every call (besides aiohttp's own and the body's), built once
HEADERS = {"Accept": "application/json", "User-Agent": f"pilot/{PILOT_VERSION} (simulated)"}
FORM_TYPE = "application/x-www-form-urlencoded"
#: quoted form names and short values seen before (site, node, pilotID, states …): most of every call's fields
_QUOTED: dict[str, str] = {}


#: quote_plus as one table: every UTF-8 byte (read as a latin-1 character) → its form text. Why: quote_plus
#: quotes a text that needs any quoting byte by byte in Python (the final update's report: ~500 calls a job)
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_TABLE = {b: chr(b) if b in _SAFE else "+" if b == 0x20 else f"%{b:02X}" for b in range(256)}


def _quote_plus(text: str) -> str:
    """``urllib.parse.quote_plus(text)``, the same text (tests/unit/test_simulated_pilot_wire.py)."""
    return text.encode("utf-8").decode("latin-1").translate(_FORM_TABLE)


def _quoted(text: str) -> str:
    hit = _QUOTED.get(text)
    if hit is None:
        hit = _quote_plus(text)
        if len(text) <= 64 and len(_QUOTED) < 10_000:
            _QUOTED[text] = hit
    return hit


def _decode(raw: bytes) -> Any:
    """The JSON value of a reply; ValueError if it is not JSON (msgspec first, json for what it refuses:
    NaN and the other non-standard values json.loads takes)."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return json.loads(raw)


def form_body(data: dict[str, Any]) -> bytes:
    """``data`` form-encoded, byte for byte what aiohttp's FormData (``urlencode(…, doseq=True)`` of the values
    as text) sends for it, as pilot3's curl posts its fields. Why not FormData: per call it builds a multipart
    writer and quotes every field again — most of the simulated pilots' own CPU in the lifecycle bench."""
    return "&".join(f"{_quoted(k)}={_quoted(v if isinstance(v, str) else str(v))}"
                    for k, v in data.items()).encode()


def form_payload(data: dict[str, Any]) -> BytesPayload:
    """The request body of ``data`` with the Content-Type FormData gives it (the same request on the wire)."""
    return BytesPayload(form_body(data), content_type=FORM_TYPE)


@dataclasses.dataclass
class SimOptions:
    url: str                       # http://host:port of the gateway
    site: str = "LOCAL"
    pilots: int = 1
    jobs: int = 1                  # jobs each pilot runs before it exits
    payload_seconds: float = 1.0
    heartbeat: float = 0.5         # seconds between running heartbeats
    label: str = "managed"
    nojob_retries: int = 0         # further getJob tries after "no job" (pilot3: -x, 60 s apart)
    nojob_sleep: float = 1.0
    update_retries: int = 5        # resends of an update whose reply is not JSON (pilot3: 10, 120 s apart)
    update_sleep: float = 0.5
    headers: dict[str, str] = dataclasses.field(default_factory=dict)   # e.g. a pilot token (Authorization, Origin)


@dataclasses.dataclass
class SimStats:
    received: list[int] = dataclasses.field(default_factory=list)   # PandaIDs, in order of receipt
    finished: int = 0
    killed: int = 0
    no_job: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    getjob_latency: list[float] = dataclasses.field(default_factory=list)
    update_latency: list[float] = dataclasses.field(default_factory=list)
    commands: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    told_to_kill: dict[int, float] = dataclasses.field(default_factory=dict)  # PandaID → time.monotonic()

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float:
            return round(sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else 0.0
        return {"jobs": len(self.received), "unique": len(set(self.received)), "finished": self.finished,
                "killed": self.killed, "no_job_replies": self.no_job, "errors": len(self.errors),
                "getjob_ms_p50": pct(self.getjob_latency, 0.5), "getjob_ms_p95": pct(self.getjob_latency, 0.95),
                "update_ms_p50": pct(self.update_latency, 0.5), "update_ms_p95": pct(self.update_latency, 0.95)}


class _Pilot:
    def __init__(self, session: aiohttp.ClientSession, opts: SimOptions, index: int, stats: SimStats):
        self.s = session
        self.o = opts
        self.stats = stats
        self.node = f"sim-wn{index:04d}"
        self.pilot_id = f"sim{index}|PR|{PILOT_VERSION}"
        self.base = opts.url.rstrip("/") + "/server/panda"
        self.started = ""
        # plain http: the pilot's own kept-alive connection (cli/pilot_http.py), the same requests for a fraction
        # of aiohttp's client CPU; https: the session (its TLS settings are the caller's)
        self.conn = (PilotConnection(self.base, {**session.headers, **HEADERS}, session.timeout.total or 150.0)
                     if self.base.startswith("http://") else None)

    async def _post(self, fn: str, data: dict[str, Any]) -> Any:
        """One form POST; None if the reply is not a JSON object (curl error or non-JSON, as pilot3 sees it)."""
        try:
            if self.conn is not None:
                status, raw = await self.conn.post(f"/{fn}", form_body(data), FORM_TYPE)
            else:
                async with self.s.post(f"{self.base}/{fn}", data=form_payload(data), headers=HEADERS) as resp:
                    status, raw = resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, HttpError) as exc:
            self.stats.errors.append(f"{fn}: {exc!r}")
            return None
        try:   # msgspec: the same values as json.loads for what the gateway sends, in a third of the time
            value = _decode(raw)
        except ValueError:
            text = raw.decode("utf-8", "replace")
            self.stats.errors.append(f"{fn}: HTTP {status} non-JSON reply {text[:80]!r}")
            return None
        return value if isinstance(value, dict) else None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    async def get_job(self) -> dict[str, Any] | None:
        for attempt in range(self.o.nojob_retries + 1):
            t0 = time.monotonic()
            job = await self._post("getJob", {
                "siteName": self.o.site, "computingElement": self.o.site, "prodSourceLabel": self.o.label,
                "diskSpace": 10000, "workingGroup": "", "cpu": 2445.434, "mem": 24103.9, "node": self.node,
                "allowOtherCountry": "False"})
            self.stats.getjob_latency.append(time.monotonic() - t0)
            if job is not None and ("StatusCode" not in job or job["StatusCode"] in (0, "0")):
                return job
            self.stats.no_job += 1
            if attempt < self.o.nojob_retries:
                await asyncio.sleep(self.o.nojob_sleep)
        return None

    async def update(self, job: dict[str, Any], state: PilotState, **extra: Any) -> str:
        """Send one updateJob (resent while the reply is not JSON); the `command` of the reply."""
        data = {"jobId": job["PandaID"], "state": state, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                                                                                 time.gmtime()),
                "siteName": self.o.site, "node": self.node, "attemptNr": job.get("attemptNr", 0),
                "schedulerID": "unknown", "pilotID": self.pilot_id, "startTime": self.started,
                "coreCount": job.get("coreCount", 1), "cpuConsumptionUnit": "s+simulated CPU", **extra}
        for _ in range(self.o.update_retries + 1):
            t0 = time.monotonic()
            reply = await self._post("updateJob", data)
            self.stats.update_latency.append(time.monotonic() - t0)
            if reply is not None:
                command = str(reply.get("command", "NULL"))
                self.stats.commands.setdefault(int(job["PandaID"]), []).append(command)
                if "tobekilled" in command:
                    self.stats.told_to_kill.setdefault(int(job["PandaID"]), time.monotonic())
                return command
            await asyncio.sleep(self.o.update_sleep)
        return "NULL"

    def report(self, job: dict[str, Any], killed: bool) -> str:
        """The `xml` field: every output (only the log when killed) with size and adler32."""
        out_files = [f for f in str(job.get("outFiles") or "").split(",") if f and f != "NULL"]
        log_file = job.get("logFile") or ""
        files = {}
        for lfn in out_files:
            if killed and lfn != log_file:
                continue
            content = f"{lfn} produced by {self.node} for {job['PandaID']}\n".encode()
            files[lfn] = {"guid": job.get("logGUID", "") if lfn == log_file else "", "fsize": len(content),
                          "adler32": f"{zlib.adler32(content):08x}", "surl": f"/sim/output/{job['PandaID']}/{lfn}"}
        return json.dumps(files)

    async def run_job(self, job: dict[str, Any]) -> None:
        self.started = f"{time.time():.7f}"
        commands = [await self.update(job, PilotState.STARTING), await self.update(job, PilotState.RUNNING)]
        deadline = time.monotonic() + self.o.payload_seconds
        while "tobekilled" not in ",".join(commands) and time.monotonic() < deadline:
            await asyncio.sleep(max(0.0, min(self.o.heartbeat, deadline - time.monotonic())))
            if time.monotonic() < deadline:
                extra = {"stdout": "simulated payload output"} if "debug" in ",".join(commands) else {}
                commands.append(await self.update(job, PilotState.RUNNING, **extra))
        killed = "tobekilled" in ",".join(commands)
        final: dict[str, Any] = {"xml": self.report(job, killed), "endTime": f"{time.time():.7f}",
                                 "pilotTiming": "1|0|1|0|0|0", "metaData": json.dumps({"exitCode": 0})}
        if killed:
            final.update(pilotErrorCode=KILLED_CODE, pilotErrorDiag="This job was killed by panda server",
                         transExitCode=KILLED_EXIT, exeErrorCode=0)
            await self.update(job, PilotState.FAILED, **final)
            self.stats.killed += 1
        else:
            final.update(pilotErrorCode=0, transExitCode=0, exeErrorCode=0, exeErrorDiag="OK")
            await self.update(job, PilotState.FINISHED, **final)
            self.stats.finished += 1

    async def run(self) -> None:
        try:
            for _ in range(self.o.jobs):
                job = await self.get_job()
                if job is None:
                    return
                self.stats.received.append(int(job["PandaID"]))
                await self.run_job(job)
        finally:
            self.close()


async def simulate(opts: SimOptions, session: aiohttp.ClientSession | None = None) -> SimStats:
    """Run ``opts.pilots`` pilots concurrently until each has run ``opts.jobs`` jobs or found none."""
    stats = SimStats()
    own = session is None
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=opts.headers,
                                        timeout=aiohttp.ClientTimeout(total=150))
    try:
        await asyncio.gather(*(_Pilot(session, opts, i, stats).run() for i in range(opts.pilots)))
    finally:
        if own:
            await session.close()
    return stats
