"""A dispatched job in the pilot's flat format (PanDA's ``Protocol.Response.appendJob``).

The pilot does not read JobSpec: it reads a flat dict with its own key names (``jobPars`` for
jobParameters, ``swRelease`` for AtlasRelease) and the files as comma-joined parallel lists
(``inFiles``/``GUID``/``fsize``/``checksum``/``scopeIn``…, ``outFiles``/``realDatasets``/``scopeOut``…,
with the log file among the outputs and named again in ``logFile``/``logGUID``/``scopeLog``). Unset
values are the string "NULL", as PanDA's JobSpec reads them. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

NULL = "NULL"

# pilot key ← JobSpec attribute, copied as is
_SCALARS = {
    "PandaID": "PandaID", "prodSourceLabel": "prodSourceLabel", "swRelease": "AtlasRelease",
    "homepackage": "homepackage", "transformation": "transformation", "jobName": "jobName",
    "jobDefinitionID": "jobDefinitionID", "cloud": "cloud", "attemptNr": "attemptNr",
    "destinationSE": "destinationSE", "prodUserID": "prodUserID", "maxCpuCount": "maxCpuCount",
    "minRamCount": "minRamCount", "maxDiskCount": "maxDiskCount", "cmtConfig": "cmtConfig",
    "processingType": "processingType", "transferType": "transferType", "sourceSite": "sourceSite",
    "currentPriority": "currentPriority", "jobsetID": "jobsetID", "reqID": "reqID", "nucleus": "nucleus",
    "maxWalltime": "maxWalltime", "resource_type": "resource_type",
}
_ZERO_DEFAULT = {"attemptNr", "maxCpuCount", "minRamCount", "maxDiskCount", "currentPriority"}


def _v(value: Any) -> Any:
    return NULL if value is None else value


def _s(value: Any) -> str:
    return NULL if value is None else str(value)


def _tags(spec: Mapping[str, Any]) -> list[str]:
    return [t for t in str(spec.get("specialHandling") or "").split(",") if t]


def pilot_job(spec: Mapping[str, Any], files: Sequence[Mapping[str, Any]],
              ddm_endpoint: str | None = None) -> dict[str, Any]:
    """The getJob reply for one job (without StatusCode). ``ddm_endpoint`` is the queue's default RSE,
    used for files that name no destinationSE."""
    out: dict[str, Any] = {}
    for key, attr in _SCALARS.items():
        value = spec.get(attr)
        out[key] = (0 if attr in _ZERO_DEFAULT else NULL) if value is None else value
    first, second = ("jediTaskID", "taskID") if spec.get("lockedby") == "jedi" else ("taskID", "jediTaskID")
    out["taskID"] = _v(spec.get(first) if spec.get(first) is not None else spec.get(second))
    out["coreCount"] = spec.get("coreCount") or 1
    out["jobPars"] = spec.get("jobParameters") or ""

    ins = {k: [] for k in ("inFiles", "dispatchDblock", "dispatchDBlockToken", "prodDBlocks", "prodDBlockToken",
                           "GUID", "realDatasetsIn", "fsize", "checksum", "scopeIn", "ddmEndPointIn")}
    outs = {k: [] for k in ("outFiles", "destinationDblock", "destinationDBlockToken", "realDatasets",
                            "fileDestinationSE", "dispatchDBlockTokenForOut", "ddmEndPointOut")}
    scope_out: list[str] = []
    log_file = log_guid = scope_log = ""
    seen_in: set[str] = set()
    for f in files:
        ftype = f.get("type")
        lfn = f.get("lfn")
        if not lfn:
            continue
        if ftype == "input":
            if lfn in seen_in:
                continue
            seen_in.add(lfn)
            ins["inFiles"].append(lfn)
            ins["dispatchDblock"].append(_s(f.get("dispatchDBlock")))
            ins["dispatchDBlockToken"].append(_s(f.get("dispatchDBlockToken")))
            ins["prodDBlocks"].append(_s(f.get("prodDBlock")))
            ins["prodDBlockToken"].append(_s(f.get("prodDBlockToken")))
            ins["GUID"].append(_s(f.get("GUID")))
            ins["realDatasetsIn"].append(_s(f.get("dataset")))
            ins["fsize"].append(_s(f.get("fsize")))
            checksum = f.get("checksum")
            ins["checksum"].append(_s(checksum if checksum not in (None, "", NULL) else f.get("md5sum")))
            ins["scopeIn"].append(_s(f.get("scope")))
            ins["ddmEndPointIn"].append(ddm_endpoint or "")
        elif ftype in ("output", "log"):
            endpoint = f.get("destinationSE") or ddm_endpoint or ""
            outs["outFiles"].append(lfn)
            outs["destinationDblock"].append(_s(f.get("destinationDBlock")))
            token = _s(f.get("destinationDBlockToken")).split(",")[0]
            outs["destinationDBlockToken"].append(re.sub("^ddd:", "dst:", token))
            outs["realDatasets"].append(_s(f.get("dataset")))
            outs["fileDestinationSE"].append(_s(f.get("destinationSE")))
            outs["dispatchDBlockTokenForOut"].append(_s(f.get("dispatchDBlockToken")))
            outs["ddmEndPointOut"].append(endpoint)
            if ftype == "log":
                log_file, log_guid, scope_log = lfn, _s(f.get("GUID")), _s(f.get("scope"))
            else:
                scope_out.append(_s(f.get("scope")))
    out.update({k: ",".join(v) for k, v in ins.items()})
    out.update({k: ",".join(v) for k, v in outs.items()})
    out.update(scopeOut=",".join(scope_out), scopeLog=scope_log, logFile=log_file, logGUID=log_guid)

    tags = _tags(spec)
    if "dm" in tags or "debug" in tags:
        out["debug"] = "True"
    if "lc" in tags:
        out["loopingCheck"] = False
    if spec.get("container_name") not in (None, NULL):
        out["container_name"] = spec["container_name"]
    return out
