"""PanDA's JobSpec and FileSpec as typed msgspec structs, plus every wire form pandaes must speak.

Why this module exists: PanDA moves jobs around as positional value lists (panda-client's ``job/submit``),
as ``{attribute: value}`` dicts with the string ``"NULL"`` for unset values (``job/get_description``), and we
additionally put them on Kafka.  All three must agree on the attribute *names* and, for the positional form,
on the attribute *order*, which is why the order below is PanDA's exact ``_attributes`` order and is checked
against the struct definition at import time.

Facts (names, order, ``_zeroAttrs``, ``_limitLength``, the ``"NULL"`` convention, the datetime encodings)
come from PanDA's documented behaviour; the code is our own.  Nothing here knows about job states: state logic
lives elsewhere, this module is only the contract.
"""

import difflib
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, get_args

import msgspec

from schemas.storable import text_problem

__all__ = [
    "CLIENT_FILE_ATTRIBUTES",
    "FILE_ATTRIBUTES",
    "JOB_ATTRIBUTES",
    "LIMIT_LENGTH",
    "NULL",
    "ZERO_ATTRS",
    "FileSpec",
    "JobSpec",
    "SpecError",
    "decode_job",
    "encode_job",
    "job_from_dict",
    "job_to_description",
    "job_to_dict",
    "jobs_from_client_json",
    "jobs_from_client_states",
    "jobs_to_client_json",
    "limit_lengths",
]

#: PanDA's spelling of "no value" on every wire format (``JobSpec.__getattribute__`` returns it for None).
NULL = "NULL"

# ----------------------------------------------------------------------------------------------------
# Attribute tables.  The order of JOB_ATTRIBUTES *is* panda-client's job/submit wire format (positional
# lists), and PanDA only ever evolves it by appending, so never reorder or insert in the middle.
# ----------------------------------------------------------------------------------------------------

JOB_ATTRIBUTES: tuple[str, ...] = (
    "PandaID", "jobDefinitionID", "schedulerID", "pilotID", "creationTime", "creationHost",
    "modificationTime", "modificationHost", "AtlasRelease", "transformation", "homepackage",
    "prodSeriesLabel", "prodSourceLabel", "prodUserID", "assignedPriority", "currentPriority", "attemptNr",
    "maxAttempt", "jobStatus", "jobName", "maxCpuCount", "maxCpuUnit", "maxDiskCount", "maxDiskUnit",
    "ipConnectivity", "minRamCount", "minRamUnit", "startTime", "endTime", "cpuConsumptionTime",
    "cpuConsumptionUnit", "commandToPilot", "transExitCode", "pilotErrorCode", "pilotErrorDiag",
    "exeErrorCode", "exeErrorDiag", "supErrorCode", "supErrorDiag", "ddmErrorCode", "ddmErrorDiag",
    "brokerageErrorCode", "brokerageErrorDiag", "jobDispatcherErrorCode", "jobDispatcherErrorDiag",
    "taskBufferErrorCode", "taskBufferErrorDiag", "computingSite", "computingElement", "jobParameters",
    "metadata", "prodDBlock", "dispatchDBlock", "destinationDBlock", "destinationSE", "nEvents", "grid",
    "cloud", "cpuConversion", "sourceSite", "destinationSite", "transferType", "taskID", "cmtConfig",
    "stateChangeTime", "prodDBUpdateTime", "lockedby", "relocationFlag", "jobExecutionID", "VO",
    "pilotTiming", "workingGroup", "processingType", "prodUserName", "nInputFiles", "countryGroup",
    "batchID", "parentID", "specialHandling", "jobsetID", "coreCount", "nInputDataFiles", "inputFileType",
    "inputFileProject", "inputFileBytes", "nOutputDataFiles", "outputFileBytes", "jobMetrics",
    "workQueue_ID", "jediTaskID", "jobSubStatus", "actualCoreCount", "reqID", "maxRSS", "maxVMEM",
    "maxSWAP", "maxPSS", "avgRSS", "avgVMEM", "avgSWAP", "avgPSS", "maxWalltime", "nucleus", "eventService",
    "failedAttempt", "hs06sec", "gshare", "hs06", "totRCHAR", "totWCHAR", "totRBYTES", "totWBYTES",
    "rateRCHAR", "rateWCHAR", "rateRBYTES", "rateWBYTES", "resource_type", "diskIO", "memory_leak",
    "memory_leak_x2", "container_name", "job_label", "gco2_regional", "gco2_global",
    "cpu_architecture_level", "outputFileType",
)  # fmt: skip

#: The FileSpec attributes panda-client 2.2.0 ships, in its positional order (note ``rowID``, not ``row_ID``).
CLIENT_FILE_ATTRIBUTES: tuple[str, ...] = (
    "rowID", "PandaID", "GUID", "lfn", "type", "dataset", "status", "prodDBlock", "prodDBlockToken",
    "dispatchDBlock", "dispatchDBlockToken", "destinationDBlock", "destinationDBlockToken", "destinationSE",
    "fsize", "md5sum", "checksum", "scope",
)  # fmt: skip

#: The server's FileSpec attributes: the client's 18 (with ``row_ID``) plus the JEDI bookkeeping columns.
FILE_ATTRIBUTES: tuple[str, ...] = (
    "row_ID", "PandaID", "GUID", "lfn", "type", "dataset", "status", "prodDBlock", "prodDBlockToken",
    "dispatchDBlock", "dispatchDBlockToken", "destinationDBlock", "destinationDBlockToken", "destinationSE",
    "fsize", "md5sum", "checksum", "scope", "jediTaskID", "datasetID", "fileID", "attemptNr",
)  # fmt: skip

#: Client file attribute name -> server attribute name (they differ only in the row id spelling).
_CLIENT_TO_SERVER_FILE: dict[str, str] = {"rowID": "row_ID"}

#: PanDA's ``_zeroAttrs``: written to the database as 0 when NULL (NOT NULL DEFAULT 0 columns).  Kept here so
#: projections can apply the same rule; the structs themselves keep None so "unset" stays distinguishable.
ZERO_ATTRS: tuple[str, ...] = (
    "assignedPriority", "currentPriority", "attemptNr", "maxAttempt", "maxCpuCount", "maxDiskCount",
    "minRamCount", "cpuConsumptionTime", "pilotErrorCode", "exeErrorCode", "supErrorCode", "ddmErrorCode",
    "brokerageErrorCode", "jobDispatcherErrorCode", "taskBufferErrorCode", "nEvents", "relocationFlag",
    "jobExecutionID", "nOutputDataFiles", "outputFileBytes",
)  # fmt: skip

#: PanDA's ``_limitLength``: the column widths PanDA truncates to (by characters) before writing.
LIMIT_LENGTH: dict[str, int] = {
    "ddmErrorDiag": 500,
    "taskBufferErrorDiag": 300,
    "jobDispatcherErrorDiag": 250,
    "brokerageErrorDiag": 250,
    "pilotErrorDiag": 500,
    "exeErrorDiag": 500,
    "jobSubStatus": 80,
    "supErrorDiag": 250,
    "commandToPilot": 250,
    "inputFileType": 32,
    "outputFileType": 32,
    "grid": 50,
    "sourceSite": 36,
    "destinationSite": 36,
}


class SpecError(ValueError):
    """A job description that cannot be turned into a JobSpec.

    It is a ValueError so callers that only care about "bad input" can catch that; ``job_index`` and
    ``field`` let the gateway build a precise error reply without parsing the message.
    """

    def __init__(self, message: str, *, job_index: int | None = None, field: str | None = None) -> None:
        prefix = ""
        if job_index is not None:
            prefix += f"job {job_index}: "
        if field is not None:
            prefix += f"{field}: "
        super().__init__(prefix + message)
        self.job_index = job_index
        self.field = field


# ----------------------------------------------------------------------------------------------------
# Storable integers. The structs say which range each integer attribute may hold, so msgspec refuses an
# out-of-range value wherever a JobSpec is decoded (the ledger decoding a command) and the converters below
# refuse it at the edge. Int32 are the attributes the jobs table keeps in an ``int`` column (projections/
# migrations/001_core.sql); every other integer fits PostgreSQL's bigint.
# ----------------------------------------------------------------------------------------------------
INT32_RANGE = (-(2**31), 2**31 - 1)
INT64_RANGE = (-(2**63), 2**63 - 1)
Int32 = Annotated[int, msgspec.Meta(ge=INT32_RANGE[0], le=INT32_RANGE[1])]
Int64 = Annotated[int, msgspec.Meta(ge=INT64_RANGE[0], le=INT64_RANGE[1])]

# ----------------------------------------------------------------------------------------------------
# The structs.  Every field is optional (None) because PanDA itself treats every attribute as nullable in
# memory; omit_defaults keeps Kafka messages small (most of the 126 attributes are unset for most jobs), and
# forbid_unknown_fields turns a producer/consumer name mismatch into a loud error instead of silent data loss.
# Types follow PanDA's database columns (bigint/integer -> int, decimal -> float, timestamp -> datetime,
# varchar -> str); values PanDA keeps in varchar columns although they look numeric (schedulerID, pilotID,
# transExitCode, batchID) are str so that whatever a batch system or pilot reports round-trips unchanged.
# ----------------------------------------------------------------------------------------------------


class FileSpec(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One row of PanDA's file table (input, output, log, ...) with the server's 22 attributes."""

    row_ID: Int64 | None = None
    PandaID: Int64 | None = None
    GUID: str | None = None
    lfn: str | None = None
    type: str | None = None
    dataset: str | None = None
    status: str | None = None
    prodDBlock: str | None = None
    prodDBlockToken: str | None = None
    dispatchDBlock: str | None = None
    dispatchDBlockToken: str | None = None
    destinationDBlock: str | None = None
    destinationDBlockToken: str | None = None
    destinationSE: str | None = None
    fsize: Int64 | None = None
    md5sum: str | None = None
    checksum: str | None = None
    scope: str | None = None
    jediTaskID: Int64 | None = None
    datasetID: Int64 | None = None
    fileID: Int64 | None = None
    attemptNr: Int32 | None = None


class JobSpec(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """A PanDA job: the 126 attributes in PanDA's order, then its files.

    Field order matters: it is checked against JOB_ATTRIBUTES at import so the positional wire format and the
    struct can never drift apart.
    """

    PandaID: Int64 | None = None
    jobDefinitionID: Int64 | None = None
    schedulerID: str | None = None
    pilotID: str | None = None
    creationTime: datetime | None = None
    creationHost: str | None = None
    modificationTime: datetime | None = None
    modificationHost: str | None = None
    AtlasRelease: str | None = None
    transformation: str | None = None
    homepackage: str | None = None
    prodSeriesLabel: str | None = None
    prodSourceLabel: str | None = None
    prodUserID: str | None = None
    assignedPriority: Int64 | None = None
    currentPriority: Int32 | None = None
    attemptNr: Int32 | None = None
    maxAttempt: Int64 | None = None
    jobStatus: str | None = None
    jobName: str | None = None
    maxCpuCount: Int64 | None = None
    maxCpuUnit: str | None = None
    maxDiskCount: Int32 | None = None
    maxDiskUnit: str | None = None
    ipConnectivity: str | None = None
    minRamCount: Int32 | None = None
    minRamUnit: str | None = None
    startTime: datetime | None = None
    endTime: datetime | None = None
    cpuConsumptionTime: Int64 | None = None
    cpuConsumptionUnit: str | None = None
    commandToPilot: str | None = None
    transExitCode: str | None = None
    pilotErrorCode: Int64 | None = None
    pilotErrorDiag: str | None = None
    exeErrorCode: Int64 | None = None
    exeErrorDiag: str | None = None
    supErrorCode: Int64 | None = None
    supErrorDiag: str | None = None
    ddmErrorCode: Int64 | None = None
    ddmErrorDiag: str | None = None
    brokerageErrorCode: Int64 | None = None
    brokerageErrorDiag: str | None = None
    jobDispatcherErrorCode: Int64 | None = None
    jobDispatcherErrorDiag: str | None = None
    taskBufferErrorCode: Int64 | None = None
    taskBufferErrorDiag: str | None = None
    computingSite: str | None = None
    computingElement: str | None = None
    jobParameters: str | None = None
    metadata: str | None = None
    prodDBlock: str | None = None
    dispatchDBlock: str | None = None
    destinationDBlock: str | None = None
    destinationSE: str | None = None
    nEvents: Int64 | None = None
    grid: str | None = None
    cloud: str | None = None
    cpuConversion: float | None = None
    sourceSite: str | None = None
    destinationSite: str | None = None
    transferType: str | None = None
    taskID: Int64 | None = None
    cmtConfig: str | None = None
    stateChangeTime: datetime | None = None
    prodDBUpdateTime: datetime | None = None
    lockedby: str | None = None
    relocationFlag: Int64 | None = None
    jobExecutionID: Int64 | None = None
    VO: str | None = None
    pilotTiming: str | None = None
    workingGroup: str | None = None
    processingType: str | None = None
    prodUserName: str | None = None
    nInputFiles: Int64 | None = None
    countryGroup: str | None = None
    batchID: str | None = None
    parentID: Int64 | None = None
    specialHandling: str | None = None
    jobsetID: Int64 | None = None
    coreCount: Int32 | None = None
    nInputDataFiles: Int64 | None = None
    inputFileType: str | None = None
    inputFileProject: str | None = None
    inputFileBytes: Int64 | None = None
    nOutputDataFiles: Int64 | None = None
    outputFileBytes: Int64 | None = None
    jobMetrics: str | None = None
    workQueue_ID: Int64 | None = None
    jediTaskID: Int64 | None = None
    jobSubStatus: str | None = None
    actualCoreCount: Int64 | None = None
    reqID: Int64 | None = None
    maxRSS: Int64 | None = None
    maxVMEM: Int64 | None = None
    maxSWAP: Int64 | None = None
    maxPSS: Int64 | None = None
    avgRSS: Int64 | None = None
    avgVMEM: Int64 | None = None
    avgSWAP: Int64 | None = None
    avgPSS: Int64 | None = None
    maxWalltime: Int32 | None = None
    nucleus: str | None = None
    eventService: Int64 | None = None
    failedAttempt: Int64 | None = None
    # PanDA computes HS06 seconds as a product of CPU time and a power factor: keep the fraction.
    hs06sec: float | None = None
    gshare: str | None = None
    hs06: Int64 | None = None
    totRCHAR: Int64 | None = None
    totWCHAR: Int64 | None = None
    totRBYTES: Int64 | None = None
    totWBYTES: Int64 | None = None
    rateRCHAR: Int64 | None = None
    rateWCHAR: Int64 | None = None
    rateRBYTES: Int64 | None = None
    rateWBYTES: Int64 | None = None
    resource_type: str | None = None
    diskIO: Int64 | None = None
    memory_leak: Int64 | None = None
    memory_leak_x2: float | None = None
    container_name: str | None = None
    job_label: str | None = None
    gco2_regional: float | None = None
    gco2_global: float | None = None
    cpu_architecture_level: str | None = None
    outputFileType: str | None = None
    Files: list[FileSpec] = []


# ----------------------------------------------------------------------------------------------------
# Per-attribute value conversion, derived from the struct annotations so types are declared exactly once.
# ----------------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# Postgres bigint and msgspec's JSON encoder both stop at signed 64 bits; reject earlier with a clear message.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_CLIENT_DT_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class _BadValue(Exception):
    """Internal: a converter's "this is not a <kind>" signal, turned into a SpecError with context."""


def _to_int(v: Any) -> int:
    if isinstance(v, bool):  # bool is an int subclass, but True for a priority is a bug, not a value
        raise _BadValue("an integer")
    if isinstance(v, int):
        out = int(v)
    elif isinstance(v, float) and v.is_integer():
        out = int(v)
    elif isinstance(v, str) and _INT_RE.fullmatch(v.strip()):
        out = int(v.strip())
    else:
        raise _BadValue("an integer")
    if not _INT_MIN <= out <= _INT_MAX:
        raise _BadValue("an integer within signed 64 bits")
    return out


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise _BadValue("a number")
    if isinstance(v, int | float):
        out = float(v)
    elif isinstance(v, str) and _FLOAT_RE.fullmatch(v.strip()):
        out = float(v.strip())
    else:
        raise _BadValue("a number")
    if not math.isfinite(out):  # NaN/inf are not valid JSON and not valid PanDA values
        raise _BadValue("a finite number")
    return out


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        problem = text_problem(v)
        if problem:
            raise _BadValue(f"storable text ({problem})")
        return v
    # PanDA's database converts numbers bound to varchar columns implicitly (e.g. transExitCode = 0 set by a
    # client script); do the same instead of refusing a job PanDA would have accepted.
    if isinstance(v, int | float) and not isinstance(v, bool):
        if isinstance(v, float) and not math.isfinite(v):
            raise _BadValue("a string")
        return str(v)
    raise _BadValue("a string")


def _to_naive_utc(dt: datetime) -> datetime:
    """PanDA keeps naive UTC datetimes everywhere; normalise aware ones instead of mixing the two kinds."""
    if dt.tzinfo is not None:
        return dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def _parse_dt_text(text: Any) -> datetime:
    if not isinstance(text, str):
        raise _BadValue("a datetime string")
    try:
        return _to_naive_utc(datetime.strptime(text, _CLIENT_DT_FORMAT))
    except ValueError:
        pass
    try:  # tolerate other ISO forms (no fraction, 'T' separator, offsets) from hand-written JSON
        return _to_naive_utc(datetime.fromisoformat(text))
    except ValueError:
        raise _BadValue("a datetime ('%Y-%m-%d %H:%M:%S.%f' or ISO 8601)") from None


def _to_datetime(v: Any) -> datetime:
    if isinstance(v, datetime):
        return _to_naive_utc(v)
    if isinstance(v, dict):
        # panda-client's NonJsonObjectEncoder form, or the form our own get_description replies use.
        for key in ("_datetime_object", "__datetime__"):
            if key in v:
                return _parse_dt_text(v[key])
        raise _BadValue('a datetime ({"_datetime_object": ...} or {"__datetime__": ...})')
    if isinstance(v, str):
        return _parse_dt_text(v)
    raise _BadValue("a datetime")


_CONVERTERS = {int: _to_int, float: _to_float, str: _to_str, datetime: _to_datetime}


def _int_in(low: int, high: int) -> Any:
    """An integer converter for one attribute's declared range."""
    def conv(v: Any) -> int:
        out = _to_int(v)
        if not low <= out <= high:
            bits = "32" if (low, high) == INT32_RANGE else "64"
            raise _BadValue(f"an integer within signed {bits} bits ({low} to {high})")
        return out
    return conv


def _converters_for(struct: type[msgspec.Struct], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Map each field of ``struct`` to the converter for its ``X | None`` annotation (ranges included)."""
    out: dict[str, Any] = {}
    for f in msgspec.structs.fields(struct):
        if f.name in skip:
            continue
        (base,) = (t for t in get_args(f.type) if t is not type(None))
        meta = [m for m in getattr(base, "__metadata__", ()) if isinstance(m, msgspec.Meta)]
        if meta:
            out[f.name] = _int_in(meta[0].ge, meta[0].le)
            continue
        out[f.name] = _CONVERTERS[base]
    return out


_JOB_CONV = _converters_for(JobSpec, skip=("Files",))
_FILE_CONV = _converters_for(FileSpec)

# Guard the positional contract: a field added to the struct but not to the tuple (or in another place) would
# silently shift every later attribute on the wire.
if tuple(_JOB_CONV) != JOB_ATTRIBUTES or len(JOB_ATTRIBUTES) != 126:
    raise RuntimeError("JobSpec fields and JOB_ATTRIBUTES disagree; the positional wire format would break")
if tuple(_FILE_CONV) != FILE_ATTRIBUTES or len(FILE_ATTRIBUTES) != 22:
    raise RuntimeError("FileSpec fields and FILE_ATTRIBUTES disagree")
if tuple(_CLIENT_TO_SERVER_FILE.get(a, a) for a in CLIENT_FILE_ATTRIBUTES) != FILE_ATTRIBUTES[:18]:
    raise RuntimeError("CLIENT_FILE_ATTRIBUTES is not the client prefix of FILE_ATTRIBUTES")

_SERVER_FILE_FROM_CLIENT: tuple[str, ...] = FILE_ATTRIBUTES[:18]


def _show(v: Any) -> str:
    """A short repr for error messages: a 100 kB jobParameters must not end up in a log line."""
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _convert(conv: Any, v: Any, *, job_index: int | None, field: str) -> Any:
    """Apply PanDA's NULL convention, then the typed converter, reporting failures with full context."""
    if v is None or v == NULL:
        return None
    if v == "" and conv is not _to_str:
        # An empty string bound to a NUMBER/DATE column is NULL in PanDA's Oracle; keep that meaning.
        return None
    try:
        return conv(v)
    except _BadValue as exc:
        raise SpecError(f"expected {exc}, got {_show(v)}", job_index=job_index, field=field) from None


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


# ----------------------------------------------------------------------------------------------------
# panda-client job/submit: positional lists
# ----------------------------------------------------------------------------------------------------


def _file_from_client_state(state: Any, *, job_index: int, file_index: int) -> FileSpec:
    where = f"Files[{file_index}]"
    if not isinstance(state, list):
        raise SpecError(
            f"expected a list of {len(CLIENT_FILE_ATTRIBUTES)} values followed by the owner, "
            f"got {_type_name(state)}",
            job_index=job_index,
            field=where,
        )
    # Like panda-client's FileSpec.__setstate__, the last element is always the owner (null on the wire);
    # shorter states leave trailing attributes unset.
    if not state:
        raise SpecError("empty file state (the owner element is missing)", job_index=job_index, field=where)
    values = state[:-1]
    if len(values) > len(CLIENT_FILE_ATTRIBUTES):
        raise SpecError(
            f"too many values: {len(values)} before the owner, at most {len(CLIENT_FILE_ATTRIBUTES)} "
            f"({', '.join(CLIENT_FILE_ATTRIBUTES)})",
            job_index=job_index,
            field=where,
        )
    kwargs: dict[str, Any] = {}
    for pos, v in enumerate(values):
        client_name = CLIENT_FILE_ATTRIBUTES[pos]
        name = _SERVER_FILE_FROM_CLIENT[pos]
        converted = _convert(_FILE_CONV[name], v, job_index=job_index, field=f"{where}.{client_name}")
        if converted is not None:
            kwargs[name] = converted
    return FileSpec(**kwargs)


def _job_from_client_state(state: Any, *, job_index: int) -> JobSpec:
    if not isinstance(state, list):
        raise SpecError(
            f"expected a list of attribute values followed by the Files list, got {_type_name(state)}",
            job_index=job_index,
        )
    if not state:
        raise SpecError("empty job state (the Files list is missing)", job_index=job_index)
    # Like JobSpec.__setstate__: the last element is always Files, whatever the length (schema evolution only
    # appends attributes, so a shorter list from an older client simply leaves the newest attributes unset).
    *values, files = state
    if len(values) > len(JOB_ATTRIBUTES):
        raise SpecError(
            f"too many values: {len(values)} attribute values before Files, at most {len(JOB_ATTRIBUTES)} "
            f"(the last known attribute is {JOB_ATTRIBUTES[-1]})",
            job_index=job_index,
        )
    if not isinstance(files, list):
        raise SpecError(
            f"the last element must be the list of file states, got {_show(files)}",
            job_index=job_index,
            field="Files",
        )
    kwargs: dict[str, Any] = {}
    for name, v in zip(JOB_ATTRIBUTES, values, strict=False):
        converted = _convert(_JOB_CONV[name], v, job_index=job_index, field=name)
        if converted is not None:
            kwargs[name] = converted
    kwargs["Files"] = [
        _file_from_client_state(f, job_index=job_index, file_index=k) for k, f in enumerate(files)
    ]
    return JobSpec(**kwargs)


def jobs_from_client_states(states: Any) -> list[JobSpec]:
    """Convert an already-decoded ``job/submit`` jobs list (see ``jobs_from_client_json``)."""
    if not isinstance(states, list):
        raise SpecError(f"jobs: expected a JSON list of jobs, got {_type_name(states)}")
    return [_job_from_client_state(s, job_index=i) for i, s in enumerate(states)]


def jobs_from_client_json(text: str | bytes) -> list[JobSpec]:
    """Parse the ``jobs`` string panda-client 2.2.0 posts to ``job/submit``.

    The format is a JSON list of jobs; each job is the 126 attribute values in JOB_ATTRIBUTES order followed
    by a list of file states (18 CLIENT_FILE_ATTRIBUTES values + the owner, null).  ``"NULL"`` means None and
    datetimes are ``{"_datetime_object": "%Y-%m-%d %H:%M:%S.%f"}``.  Numeric strings are accepted for numeric
    attributes because PanDA's database would accept them too.  Anything else raises SpecError naming the job
    index and the attribute, so the submitter learns exactly what to fix.
    """
    try:
        states = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise SpecError(f"jobs: invalid JSON: {exc}") from None
    except UnicodeEncodeError:
        raise SpecError("jobs: is not valid Unicode (a lone surrogate)") from None
    return jobs_from_client_states(states)


def _client_value(v: Any) -> Any:
    if v is None:
        return NULL
    if isinstance(v, datetime):
        return {"_datetime_object": _to_naive_utc(v).strftime(_CLIENT_DT_FORMAT)}
    return v


def _job_to_client_state(job: JobSpec) -> list[Any]:
    state: list[Any] = [_client_value(getattr(job, name)) for name in JOB_ATTRIBUTES]
    state.append(
        [[_client_value(getattr(f, name)) for name in _SERVER_FILE_FROM_CLIENT] + [None] for f in job.Files]
    )
    return state


def jobs_to_client_json(jobs: list[JobSpec]) -> str:
    """Encode jobs exactly as panda-client 2.2.0 does for ``job/submit`` (inverse of jobs_from_client_json).

    Lossy by design of the client format: the server-only file attributes (jediTaskID, datasetID, fileID,
    attemptNr) have no position in the client's file state and are dropped.
    """
    return msgspec.json.encode([_job_to_client_state(j) for j in jobs]).decode()


# ----------------------------------------------------------------------------------------------------
# panda-client job/get_description replies
# ----------------------------------------------------------------------------------------------------


def _description_value(v: Any) -> Any:
    if v is None:
        return NULL
    if isinstance(v, datetime):
        # panda-client revives only this marker (Client.decode_special_cases -> datetime.fromisoformat).
        return {"__datetime__": _to_naive_utc(v).isoformat()}
    return v


def job_to_description(job: JobSpec) -> dict[str, Any]:
    """The dict panda-client's ``JobSpec.load_from_dict`` expects in ``job/get_description`` replies.

    Every attribute is present (the client would default missing ones, but PanDA's real replies are complete
    and other tools index them directly).  Files carry both the client's ``rowID`` and all server attributes:
    the client picks its 18 slots by name and ignores the rest.
    """
    out: dict[str, Any] = {name: _description_value(getattr(job, name)) for name in JOB_ATTRIBUTES}
    files = []
    for f in job.Files:
        fd: dict[str, Any] = {"rowID": _description_value(f.row_ID)}
        fd.update((name, _description_value(getattr(f, name))) for name in FILE_ATTRIBUTES)
        files.append(fd)
    out["Files"] = files
    return out


# ----------------------------------------------------------------------------------------------------
# Friendly by-name form (pandaes submit FILE.json)
# ----------------------------------------------------------------------------------------------------


def _suggest(key: str, known: tuple[str, ...]) -> str | None:
    """Closest known name, case-insensitively first (``pandaid`` -> ``PandaID``), then by similarity."""
    by_lower = {k.lower(): k for k in known}
    if key.lower() in by_lower:
        return by_lower[key.lower()]
    match = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def _unknown_keys_error(
    unknown: list[str], known: tuple[str, ...], *, job_index: int, where: str
) -> SpecError:
    parts = []
    for key in unknown:
        hint = _suggest(str(key), known)
        parts.append(f"{key!r} (did you mean {hint!r}?)" if hint else repr(key))
    return SpecError(f"unknown {where}: {', '.join(parts)}", job_index=job_index)


_JOB_KEYS: tuple[str, ...] = (*JOB_ATTRIBUTES, "Files")
_FILE_KEYS: tuple[str, ...] = (*FILE_ATTRIBUTES, "rowID")


def _file_from_dict(d: Any, *, job_index: int, file_index: int) -> FileSpec:
    where = f"Files[{file_index}]"
    if not isinstance(d, dict):
        raise SpecError(f"expected an object, got {_type_name(d)}", job_index=job_index, field=where)
    unknown = [k for k in d if k not in _FILE_KEYS]
    if unknown:
        raise _unknown_keys_error(unknown, _FILE_KEYS, job_index=job_index, where=f"{where} attribute(s)")
    kwargs: dict[str, Any] = {}
    for name, conv in _FILE_CONV.items():
        if name in d:
            value = _convert(conv, d[name], job_index=job_index, field=f"{where}.{name}")
            if value is not None:
                kwargs[name] = value
    if "rowID" in d:  # the client's spelling, e.g. when feeding back a get_description reply
        row_id = _convert(_to_int, d["rowID"], job_index=job_index, field=f"{where}.rowID")
        if "row_ID" in kwargs and row_id is not None and row_id != kwargs["row_ID"]:
            raise SpecError(
                f"rowID {row_id} disagrees with row_ID {kwargs['row_ID']}", job_index=job_index, field=where
            )
        if row_id is not None:
            kwargs["row_ID"] = row_id
    return FileSpec(**kwargs)


def job_from_dict(d: dict[str, Any], *, index: int = 0) -> JobSpec:
    """Build a JobSpec from ``{PandaName: value, ..., "Files": [{...}]}``.

    Accepts what ``job_to_dict`` and ``job_to_description`` produce (``"NULL"`` -> None, ISO strings or
    ``__datetime__`` markers for datetimes).  Unknown keys are an error, not ignored: a misspelt attribute in
    a hand-written job file would otherwise vanish silently.  ``index`` is the job's position for messages.
    """
    if not isinstance(d, dict):
        raise SpecError(f"expected an object of job attributes, got {_type_name(d)}", job_index=index)
    unknown = [k for k in d if k not in _JOB_KEYS]
    if unknown:
        raise _unknown_keys_error(unknown, _JOB_KEYS, job_index=index, where="attribute(s)")
    kwargs: dict[str, Any] = {}
    for name, conv in _JOB_CONV.items():
        if name in d:
            value = _convert(conv, d[name], job_index=index, field=name)
            if value is not None:
                kwargs[name] = value
    files = d.get("Files")
    if files is None or files == NULL:
        files = []
    if not isinstance(files, list):
        raise SpecError(
            f"expected a list of file objects, got {_show(files)}", job_index=index, field="Files"
        )
    kwargs["Files"] = [_file_from_dict(f, job_index=index, file_index=k) for k, f in enumerate(files)]
    return JobSpec(**kwargs)


def _plain(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def job_to_dict(job: JobSpec) -> dict[str, Any]:
    """The compact by-name form: only attributes that are set, datetimes as ISO strings, always ``Files``."""
    out: dict[str, Any] = {}
    for name in JOB_ATTRIBUTES:
        v = getattr(job, name)
        if v is not None:
            out[name] = _plain(v)
    out["Files"] = [
        {name: _plain(v) for name in FILE_ATTRIBUTES if (v := getattr(f, name)) is not None}
        for f in job.Files
    ]
    return out


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def limit_lengths(job: JobSpec) -> JobSpec:
    """A copy of ``job`` with the LIMIT_LENGTH attributes truncated, as PanDA does before writing them.

    Pilots routinely send diagnostics longer than the columns; truncating here keeps projections from failing
    on the database's length checks.
    """
    changes: dict[str, str] = {}
    for name, limit in LIMIT_LENGTH.items():
        v = getattr(job, name)
        if isinstance(v, str) and len(v) > limit:
            changes[name] = v[:limit]
    return msgspec.structs.replace(job, **changes)


# Module-level encoder/decoder: msgspec caches type information inside them, so reuse is the fast path for the
# per-message work on Kafka.
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(JobSpec)


def encode_job(job: JobSpec) -> bytes:
    """Compact JSON for Kafka (unset attributes omitted)."""
    return _ENCODER.encode(job)


def decode_job(data: bytes | str) -> JobSpec:
    """Inverse of encode_job; strict (unknown fields and wrong types raise SpecError)."""
    try:
        return _DECODER.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError subclass
        raise SpecError(f"invalid encoded JobSpec: {exc}") from None
