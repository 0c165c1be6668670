"""updateJob fields → a core ``PilotUpdate`` (pure translation, no I/O).

pilot3 sends camelCase form fields (PANDA-CLIENTS §2.5), /api/v1 ``pilot/update_job`` sends snake_case
JSON; both land here. The rule that matters is *never lose an update*: only ``jobId`` and ``state`` are
required; an optional field with a wrong type is dropped and named in ``ignored`` (the reply's
errorDialog) instead of failing the state change the pilot is reporting.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from core.states import PILOT_STATES, PilotState
from schemas.jobspec import LIMIT_LENGTH
from schemas.messages import PilotUpdate
from schemas.storable import text_problem

from .params import BadRequest, to_int

# v1 (pilot/update_job) parameter → legacy (updateJob) field
V1_NAMES = {
    "job_id": "jobId", "job_status": "state", "job_output_report": "xml", "meta_data": "metaData",
    "node": "node", "cpu_consumption_time": "cpuConsumptionTime", "cpu_consumption_unit": "cpuConsumptionUnit",
    "scheduler_id": "schedulerID", "pilot_id": "pilotID", "site_name": "siteName", "pilot_log": "pilotLog",
    "cpu_conversion_factor": "cpuConversionFactor", "trans_exit_code": "transExitCode",
    "pilot_error_code": "pilotErrorCode", "pilot_error_diag": "pilotErrorDiag", "exe_error_code": "exeErrorCode",
    "exe_error_diag": "exeErrorDiag", "pilot_timing": "pilotTiming", "start_time": "startTime",
    "end_time": "endTime", "n_events": "nEvents", "n_input_files": "nInputFiles", "batch_id": "batchID",
    "attempt_nr": "attemptNr", "job_metrics": "jobMetrics", "stdout": "stdout", "job_sub_status": "jobSubStatus",
    "core_count": "coreCount", "max_rss": "maxRSS", "max_vmem": "maxVMEM", "max_swap": "maxSWAP",
    "max_pss": "maxPSS", "avg_rss": "avgRSS", "avg_vmem": "avgVMEM", "avg_swap": "avgSWAP", "avg_pss": "avgPSS",
    "tot_rchar": "totRCHAR", "tot_wchar": "totWCHAR", "tot_rbytes": "totRBYTES", "tot_wbytes": "totWBYTES",
    "rate_rchar": "rateRCHAR", "rate_wchar": "rateWCHAR", "rate_rbytes": "rateRBYTES", "rate_wbytes": "rateWBYTES",
    "corrupted_files": "corruptedFiles", "mean_core_count": "meanCoreCount",
    "cpu_architecture_level": "cpu_architecture_level", "grid": "grid", "source_site": "sourceSite",
    "destination_site": "destinationSite", "timeout": "timeout",
}

_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f")
_TOT_CAP = 10**10 - 1
# what both strptime (_TIME_FORMATS) and datetime.fromisoformat read the same way: padded fields, no zone
_ISO_PLAIN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?")


def _text(limit: int | None = None) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if isinstance(v, dict | list):
            v = json.dumps(v)
        text = str(v)
        problem = text_problem(text)
        if problem:   # not storable: the field is dropped and named, the update itself goes on
            raise ValueError(problem)
        return text[:limit] if limit else text
    return conv


def _int(v: Any) -> int:
    return to_int(v, "value")


def _int_from_float(v: Any) -> int:
    """cpuConsumptionTime and friends arrive as '12.5' from some pilots: PanDA keeps whole units."""
    if type(v) is int and abs(v) < 2**63:   # already whole (a JSON number, Harvester's coreCount)
        return v
    number = float(str(v))
    if not math.isfinite(number) or abs(number) >= 2**63:
        raise ValueError(v)
    return int(number)


def _positive_code(v: Any) -> int:
    return abs(_int(v))   # PanDA stores negative pilotErrorCodes as positive


def _kb_capped(v: Any) -> int:
    return min(_int_from_float(v) // 1024, _TOT_CAP)   # totRCHAR… arrive in bytes, stored in kB


def _float(v: Any) -> float:
    number = float(str(v))
    if not math.isfinite(number):
        raise ValueError(v)
    return number


def parse_time(v: Any) -> str:
    """Float epoch seconds (pilot3) or '%Y-%m-%d %H:%M:%S' (v1) → naive-UTC ISO text for the event."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        when = dt.datetime.fromtimestamp(float(v), dt.UTC).replace(tzinfo=None)
        return when.isoformat()
    text = str(v).strip()
    if _ISO_PLAIN.fullmatch(text):
        # the usual text ('%Y-%m-%d %H:%M:%S', Harvester's and v1's): the C parser gives what strptime's first
        # matching format would, for a fraction of its cost (strptime checks the locale on every call)
        try:
            return dt.datetime.fromisoformat(text).isoformat()
        except ValueError:
            pass   # a month 13 and the like: refused below with the usual message
    try:
        return dt.datetime.fromtimestamp(float(text), dt.UTC).replace(tzinfo=None).isoformat()
    except (ValueError, OverflowError, OSError):
        pass
    for fmt in _TIME_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).isoformat()
        except ValueError:
            continue
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text[:40]!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed.isoformat()


# legacy field → (JobSpec attribute, converter)
FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "pilotErrorCode": ("pilotErrorCode", _positive_code),
    "pilotErrorDiag": ("pilotErrorDiag", _text(LIMIT_LENGTH["pilotErrorDiag"])),
    "exeErrorCode": ("exeErrorCode", _int),
    "exeErrorDiag": ("exeErrorDiag", _text(LIMIT_LENGTH["exeErrorDiag"])),
    "transExitCode": ("transExitCode", _text(128)),
    "cpuConsumptionTime": ("cpuConsumptionTime", _int_from_float),
    "cpuConsumptionUnit": ("cpuConsumptionUnit", _text(128)),
    "cpuConversionFactor": ("cpuConversion", _float),
    "startTime": ("startTime", parse_time),
    "endTime": ("endTime", parse_time),
    "nEvents": ("nEvents", _int_from_float),
    "nInputFiles": ("nInputFiles", _int_from_float),
    "batchID": ("batchID", _text(80)),
    "pilotID": ("pilotID", _text(200)),
    "schedulerID": ("schedulerID", _text(128)),
    "node": ("modificationHost", _text(128)),
    "coreCount": ("actualCoreCount", _int_from_float),
    "jobMetrics": ("jobMetrics", _text(4000)),
    "pilotTiming": ("pilotTiming", _text(100)),
    "jobSubStatus": ("jobSubStatus", _text(LIMIT_LENGTH["jobSubStatus"])),
    "cpu_architecture_level": ("cpu_architecture_level", _text(20)),
    "grid": ("grid", _text(LIMIT_LENGTH["grid"])),
    "sourceSite": ("sourceSite", _text(LIMIT_LENGTH["sourceSite"])),
    "destinationSite": ("destinationSite", _text(LIMIT_LENGTH["destinationSite"])),
    **{name: (name, _int_from_float) for name in (
        "maxRSS", "maxVMEM", "maxSWAP", "maxPSS", "avgRSS", "avgVMEM", "avgSWAP", "avgPSS",
        "rateRCHAR", "rateWCHAR", "rateRBYTES", "rateWBYTES")},
    **{name: (name, _kb_capped) for name in ("totRCHAR", "totWCHAR", "totRBYTES", "totWBYTES")},
}
# accepted and deliberately not stored on the job (no JobSpec column, or transport details)
IGNORED = frozenset({"jobId", "state", "xml", "metaData", "attemptNr", "timestamp", "siteName", "workdir",
                     "remainingSpace", "messageLevel", "computingElement", "meanCoreCount", "corruptedFiles",
                     "pilotLog", "stdout", "timeout", "cpuConsumptionUnitList", "harvester_id", "worker_id"})
_METRIC = re.compile(r"\b(leak|chi2)=([-+0-9.eE]+)")


@dataclasses.dataclass
class Update:
    panda_id: int
    state: PilotState | str
    attempt_nr: int | None
    attrs: dict[str, Any]
    report: str | None
    metadata: str | None
    ignored: list[str]

    def command(self, actor: str) -> PilotUpdate:
        return PilotUpdate(PandaID=self.panda_id, actor=actor, state=self.state, attempt_nr=self.attempt_nr,
                           attrs=self.attrs, report=self.report, metadata=self.metadata)


def legacy_names(fields: Mapping[str, Any]) -> dict[str, Any]:
    """v1 snake_case parameters renamed to the legacy names (legacy names pass through)."""
    return {V1_NAMES.get(k, k): v for k, v in fields.items()}


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() in ("", "NULL", "None"))


def _json_text(v: Any) -> str | None:
    if _blank(v):
        return None
    return json.dumps(v) if isinstance(v, dict | list) else str(v)


def translate(fields: Mapping[str, Any]) -> Update:
    """Legacy updateJob fields → Update; BadRequest only for a missing/invalid jobId or state."""
    if _blank(fields.get("jobId")):
        raise BadRequest("is required", field="jobId")
    panda_id = to_int(fields["jobId"], "jobId")
    if panda_id <= 0:
        raise BadRequest(f"must be a positive PandaID, got {panda_id}", field="jobId")
    state = str(fields.get("state") or "").strip()
    if state not in PILOT_STATES:
        raise BadRequest(f"must be one of {', '.join(PILOT_STATES)}, got {state[:40]!r}", field="state")
    ignored: list[str] = []
    attempt_nr = None
    if not _blank(fields.get("attemptNr")):
        try:
            attempt_nr = to_int(fields["attemptNr"], "attemptNr")
        except BadRequest:
            ignored.append("attemptNr")
    attrs: dict[str, Any] = {}
    for name, value in fields.items():
        spec = FIELDS.get(name)
        if spec is None or _blank(value):
            continue
        attr, conv = spec
        try:
            attrs[attr] = conv(value)
        except (ValueError, TypeError, OverflowError, BadRequest):
            ignored.append(name)
    for key, number in _METRIC.findall(str(attrs.get("jobMetrics", ""))):
        try:
            if key == "leak":
                attrs["memory_leak"] = int(float(number))
            else:
                attrs["memory_leak_x2"] = float(number)
        except (ValueError, OverflowError):
            pass
    final = state in (PilotState.FINISHED, PilotState.FAILED, PilotState.HOLDING)
    reports: dict[str, str | None] = {"xml": None, "metaData": None}
    if final:
        for name in reports:
            text = _json_text(fields.get(name))
            if text is not None and text_problem(text):
                ignored.append(name)
                continue
            reports[name] = text
    return Update(panda_id=panda_id, state=state, attempt_nr=attempt_nr, attrs=attrs,
                  report=reports["xml"], metadata=reports["metaData"], ignored=sorted(ignored))
