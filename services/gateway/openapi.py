"""The OpenAPI 3.1 description of every gateway endpoint, served at ``/api/v1/openapi.json``.

Built from the tables below (not from the handlers) so it reads like documentation; the checked-in
copy ``docs/openapi.json`` is regenerated with ``python -m services.gateway.openapi > docs/openapi.json``
and a test keeps the two equal.
"""

from __future__ import annotations

import json
from typing import Any

from core.states import PILOT_STATES

from .auth import policy
from .openapi_harvester import EVENTS, HARVESTER, LEGACY_EVENTS
from .openapi_tasks import CREDS, JEDI_LOG_UPLOAD, LEGACY_CREDS, TASKS
from .openapi_types import (
    ANY,
    BOOL,
    COMMON,
    ENVELOPE_ERROR,
    ID,
    IDS,
    INT,
    LEGACY_ERROR,
    NUM,
    PLAIN_ERROR,
    QUERY_IDS,
    STR,
    errors,
    mandatory,
    optional,
    soft,
)

_STR, _INT, _NUM, _BOOL, _IDS = STR, INT, NUM, BOOL, IDS

# name: (schema, required, description)
P = tuple[str, dict[str, Any], bool, str]

LEGACY: list[tuple[str, str, list[P], str]] = [
    ("getJob", "Late binding: one activated job of the site, marked sent, or StatusCode 20", [
        ("siteName", _STR, True, "the queue (queuedata panda_resource)"),
        ("computingElement", _STR, False, "queue name as the pilot knows it"),
        ("prodSourceLabel", _STR, False, "managed (default), user, test, unified, ptest…"),
        ("node", _STR, False, "worker node; recorded as modificationHost"),
        ("mem", _NUM, False, "MB of memory available (0: no limit)"),
        ("diskSpace", _NUM, False, "MB of scratch space (0: no limit)"),
        ("remaining_time", _NUM, False, "seconds left in the slot"),
        ("resourceType", _STR, False, "SCORE, MCORE, SCORE_HIMEM, MCORE_HIMEM"),
        ("coreCount", _INT, False, "cores available"),
        ("taskID", _INT, False, "only jobs of this JEDI task"),
        ("jobType", _STR, False, "job type of the pilot"),
        ("schedulerID", _STR, False, "recorded on the job"),
        ("nJobs", {**ID}, False, "ask for several jobs: the reply then has a 'jobs' list"),
        ("timeout", _NUM, False, "seconds the pilot will wait (default 60)"),
        ("cpu", ANY, False, ""), ("workingGroup", ANY, False, ""), ("allowOtherCountry", ANY, False, ""),
    ], "PilotJob"),
    ("updateJob", "Heartbeat, state change or final report of a job; the reply carries the pilot's command", [
        ("jobId", ID, True, "PandaID"),
        ("state", {"enum": list(PILOT_STATES)}, True, ""),
        ("attemptNr", soft(_INT), False, "checked against the job's attempt (stale → tobekilled)"),
        ("xml", soft(_STR), False, "final output report, JSON {lfn: {guid, fsize, adler32, surl}}"),
        ("metaData", soft(_STR), False, "job report JSON"),
        ("pilotErrorCode", soft(_INT), False, "negative codes are stored positive"),
        ("pilotErrorDiag", soft(_STR), False, ""), ("exeErrorCode", soft(_INT), False, ""),
        ("exeErrorDiag", soft(_STR), False, ""),
        ("transExitCode", soft(_STR), False, ""), ("cpuConsumptionTime", soft(_NUM), False, ""),
        ("cpuConsumptionUnit", soft(_STR), False, ""), ("cpuConversionFactor", soft(_NUM), False, ""),
        ("startTime", soft(_STR), False, "float epoch or %Y-%m-%d %H:%M:%S"), ("endTime", soft(_STR), False, "same"),
        ("nEvents", soft(_INT), False, ""), ("nInputFiles", soft(_INT), False, ""), ("batchID", soft(_STR), False, ""),
        ("pilotID", soft(_STR), False, "names the pilot in the job history"), ("schedulerID", soft(_STR), False, ""),
        ("node", soft(_STR), False, "stored as modificationHost"),
        ("coreCount", soft(_INT), False, "stored as actualCoreCount"),
        ("jobMetrics", soft(_STR), False, "leak= and chi2= also fill memory_leak / memory_leak_x2"),
        ("pilotTiming", soft(_STR), False, ""), ("maxRSS", soft(_INT), False, "and maxVMEM, maxSWAP, maxPSS, avg*"),
        ("totRCHAR", soft(_INT), False, "bytes; stored in kB (and totWCHAR, totRBYTES, totWBYTES)"),
        ("jobSubStatus", soft(_STR), False, ""), ("cpu_architecture_level", soft(_STR), False, ""),
    ], "UpdateReply"),
    ("updateJobsInBulk", "Several updateJob calls; reply [true, [per-job reply]]", [
        ("jobList", _STR, True, "JSON list of updateJob field objects"),
    ], "BulkReply"),
    ("getStatus", "Status and attemptNr of jobs, '+'-joined ('notfound' for unknown)", [
        ("ids", _IDS, True, "PandaIDs separated by spaces, commas or '+'"),
    ], "LegacyStatus"),
    ("checkJobStatus", "Status and pending command per job (unknown → unknown/tobekilled)", [
        ("ids", _IDS, True, "PandaIDs"),
    ], "LegacyStatus"),
    ("updateWorkerPilotStatus", "Harvester worker start/end (acknowledged only)", [
        ("workerID", ANY, False, ""), ("harvesterID", ANY, False, ""),
        ("status", {"enum": ["started", "finished"]}, True, ""), ("site", ANY, False, ""),
    ], "LegacyStatus"),
]

V1: list[tuple[tuple[str, ...], str, str, list[P], Any]] = [
    (("get",), "system/is_alive", "Liveness; message 'alive'", [], None),
    (("post",), "pilot/acquire_jobs", "Late binding for v1 pilots; data {StatusCode, jobs}", [
        ("site_name", _STR, True, ""), ("prod_source_label", _STR, False, ""), ("node", _STR, False, ""),
        ("computing_element", _STR, False, ""), ("memory", _NUM, False, ""), ("disk_space", _NUM, False, ""),
        ("remaining_time", _NUM, False, ""), ("resource_type", _STR, False, ""), ("core_count", _INT, False, ""),
        ("task_id", _INT, False, ""), ("n_jobs", ID, False, ""), ("job_type", _STR, False, ""),
        ("scheduler_id", _STR, False, ""), ("timeout", _NUM, False, ""),
    ], {"type": "object", "properties": {
        "StatusCode": _INT, "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/PilotJob"}}}}),
    (("post",), "pilot/update_job", "updateJob with snake_case names (job_id, job_status, job_output_report…)", [
        ("job_id", ID, True, ""), ("job_status", {"enum": list(PILOT_STATES)}, True, ""),
        ("attempt_nr", soft(_INT), False, ""), ("job_output_report", soft(_STR), False, ""),
        ("meta_data", soft(_STR), False, ""), ("pilot_error_code", soft(_INT), False, ""),
        ("pilot_error_diag", soft(_STR), False, ""), ("start_time", soft(_STR), False, ""),
        ("end_time", soft(_STR), False, ""), ("node", soft(_STR), False, ""), ("pilot_id", soft(_STR), False, ""),
    ], {"$ref": "#/components/schemas/UpdateReply"}),
    (("post",), "pilot/update_jobs_bulk", "Several update_job calls; an item that is not a valid update is "
     "answered success false in its place", [
        ("job_list", {"anyOf": [{"type": "array", "items": ANY}, _STR]}, True, "a list (or its JSON text)"),
    ], {"type": "array", "items": {"type": "object", "required": ["success", "message", "data"]}}),
    (("get", "post"), "pilot/get_job_status", "job_id, status ('not found') and attempt_number per job", [
        ("job_ids", _IDS, True, ""),
    ], {"type": "array", "items": {"type": "object"}}),
    (("post",), "job/submit", "Store jobs (panda-client positional JSON); data [[PandaID, jobDefinitionID, x]]", [
        ("jobs", {"anyOf": [_STR, {"type": "array"}]}, True,
         "list of [126 JobSpec values…, [file states]], or its JSON text"),
        ("to_pending", _BOOL, False, "store as pending (JEDI) instead of defined"),
    ], {"type": "array", "items": {"type": "array"}}),
    (("get", "post"), "job/get_description", "JobSpec dicts (None for unknown IDs)", [("job_ids", _IDS, True, "")],
     {"type": "array", "items": {"oneOf": [{"$ref": "#/components/schemas/JobDescription"}, {"type": "null"}]}}),
    (("get", "post"), "job/get_description_incl_archive", "Same as get_description (one table holds all jobs)",
     [("job_ids", _IDS, True, "")],
     {"type": "array", "items": {"oneOf": [{"$ref": "#/components/schemas/JobDescription"}, {"type": "null"}]}}),
    (("post",), "job/kill", "Kill jobs; data one bool per ID", [
        ("job_ids", _IDS, True, ""), ("code", _INT, False, "PanDA kill code (2, 3, 4, 7, 8, 9, 10, 50-55, 60, 91, 99)"),
        ("kill_options", {"anyOf": [{"type": "array", "items": _STR}, _STR]}, False,
         "jobSubStatus=<x> (a list, or comma-separated)"),
    ], {"type": "array", "items": _BOOL}),
    (("post",), "job/reassign", "Send jobs back to defined", [("job_ids", _IDS, True, "")], None),
    (("post",), "job/retry", "Retry failed jobs as new PandaIDs (pandaes; the monitor's retry button); data: the "
     "new PandaID per ID, null when not retried (the message says why)", [("job_ids", _IDS, True, "")],
     {"type": "array", "items": {"oneOf": [_INT, {"type": "null"}]}}),
    (("post",), "job/set_command", "Set commandToPilot", [("job_id", _INT, True, ""), ("command", _STR, True, "")],
     None),
    (("post",), "job/set_debug_mode", "Debug mode on/off", [("job_id", _INT, True, ""), ("mode", _BOOL, True, "")],
     None),
    (("get", "post"), "job/get_status", "status and command per job", [("job_ids", _IDS, True, "")],
     {"type": "array", "items": {"type": "object"}}),
]

SCHEMAS: dict[str, Any] = {
    "Envelope": {"type": "object", "required": ["success", "message", "data"],
                 "properties": {"success": _BOOL, "message": _STR, "data": {}}},
    "LegacyStatus": {"type": "object", "required": ["StatusCode"], "properties": {
        "StatusCode": {"type": "integer",
                       "description": "0 ok, 10 timeout, 20 no jobs, 30 failed, 50 invalid, 60 role"},
        "errorDialog": _STR}, "additionalProperties": True},
    "UpdateReply": {"type": "object", "required": ["StatusCode", "command"], "properties": {
        "StatusCode": _INT, "errorDialog": _STR,
        "command": {"type": "string", "description": "NULL, tobekilled, alreadydone, debug[,<commandToPilot>]"}}},
    "BulkReply": {"type": "array", "prefixItems": [_BOOL, {"type": "array",
                                                            "items": {"$ref": "#/components/schemas/UpdateReply"}}]},
    "PilotJob": {"type": "object", "description": "PanDA appendJob format; file lists are comma-joined",
                 "required": ["PandaID", "transformation", "jobPars"], "properties": {
                     k: _STR for k in ("transformation", "jobPars", "prodSourceLabel", "inFiles", "GUID", "fsize",
                                       "checksum", "scopeIn", "outFiles", "realDatasets", "scopeOut", "scopeLog",
                                       "logFile", "logGUID", "ddmEndPointOut", "destinationDblock",
                                       "fileDestinationSE", "destinationSE")} | {
                     "PandaID": _INT, "attemptNr": _INT, "coreCount": _INT, "StatusCode": _INT}},
    "JobDescription": {"type": "object", "description": "JobSpec attributes by name ('NULL' for unset), Files list"},
    "Queuedata": {"type": "object", "description": "CRIC schedconfig of one queue (pilot3 QueueData keys)",
                  "required": ["nickname", "panda_resource", "state", "copytools"]},
}


#: the HTTP server refuses a request line over 8190 bytes before any handler runs, in plain text (a long
#: list of PandaIDs belongs in a POST body)
_LONG_URL = {"text/plain": {"schema": {"type": "string", "description": "the request line is over 8190 bytes"}}}


def _body(params: list[P], media: str) -> dict[str, Any]:
    props = {name: {**(mandatory(schema) if req else optional(schema)), **({"description": d} if d else {})}
             for name, schema, req, d in params}
    required = [name for name, _, req, _ in params if req]
    schema = {"type": "object", "properties": props, **({"required": required} if required else {})}
    return {"required": bool(required), "content": {media: {"schema": schema}}}


def _query(params: list[P]) -> list[dict[str, Any]]:
    params = [(n, QUERY_IDS if s is IDS else s, r, d) for n, s, r, d in params]
    return [{"name": n, "in": "query", "required": r, "schema": mandatory(s) if r else optional(s),
             **({"description": d} if d else {})} for n, s, r, d in params]


def _json(schema: Any) -> dict[str, Any]:
    return {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}}


def _envelope(data: Any, codes: tuple[str, ...] = (*COMMON, "503")) -> dict[str, Any]:
    """200 with the envelope (``data`` of this schema when success is true; a refusal may carry null) and
    the error answers, each the envelope with success false and the reason."""
    env: dict[str, Any] = {"$ref": "#/components/schemas/Envelope"}
    if data is not None:
        env = {"allOf": [env, {"properties": {"data": {"anyOf": [data, {"type": "null"}]}}}]}
    return {**_json(env), **errors(ENVELOPE_ERROR, codes)}


def _legacy(reply: str) -> dict[str, Any]:
    """A legacy pilot call: 200 with the reply, errors with StatusCode 50/60, 503 as plain text (the only
    answer that makes pilot3 send an update again)."""
    schema: dict[str, Any] = {"$ref": f"#/components/schemas/{reply}"}
    if reply == "PilotJob":   # or the no-job / multi-job form ({"StatusCode": 20}, {"StatusCode": 0, "jobs"})
        schema = {"anyOf": [schema, {"$ref": "#/components/schemas/LegacyStatus"}]}
    return {**_json(schema), **errors(LEGACY_ERROR, COMMON),
            **errors({"type": "string"}, ("503",), "text/plain")}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for name, summary, params, reply in [*LEGACY, *LEGACY_EVENTS, *LEGACY_CREDS]:
        op = {"summary": summary, "tags": ["legacy pilot API"], "responses": _legacy(reply)}
        get = {**op, "parameters": _query(params), "responses": _legacy(reply)}
        get["responses"]["400"]["content"].update(_LONG_URL)
        paths[f"/server/panda/{name}"] = {
            "post": {**op, "requestBody": _body(params, "application/x-www-form-urlencoded")}, "get": get}
    alive = {"summary": "Liveness: text 'alive=yes'", "tags": ["legacy pilot API"],
             "responses": {"200": {"description": "alive=yes", "content": {"text/plain": {"schema": _STR}}}}}
    paths["/server/panda/isAlive"] = {"get": alive, "post": alive}
    for methods, path, summary, params, data in [*V1, *HARVESTER, *EVENTS, *TASKS, *CREDS]:
        item: dict[str, Any] = {}
        for method in methods:
            op: dict[str, Any] = {"summary": summary, "tags": [path.split("/")[0]], "responses": _envelope(data)}
            if method == "get":
                op["parameters"] = _query(params)
                op["responses"]["400"]["content"].update(_LONG_URL)
            else:
                op["requestBody"] = _body(params, "application/json")
            item[method] = op
        paths[f"/api/v1/{path}"] = item
    paths["/api/v1/system/is_alive"]["get"]["responses"] = _envelope(None, ())
    upload = {"summary": "Upload a file to the cache (multipart field 'file')", "tags": ["file_server"],
              "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                  "required": ["file"]}}}},
              "responses": _envelope({"type": "object"})}
    paths["/api/v1/file_server/upload_cache_file"] = {"post": upload, "put": upload}
    paths["/api/v1/file_server/upload_jedi_log"] = {"post": {**JEDI_LOG_UPLOAD, "responses": _envelope(_STR)}}
    paths["/api/v1/openapi.json"] = {"get": {"summary": "This document", "tags": ["system"],
                                             "responses": _json({"type": "object"})}}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics of this gateway process", "tags": ["system"],
                                 "responses": {"200": {"description": "Prometheus text exposition",
                                                       "content": {"text/plain": {}}}}}}
    paths["/cache/schedconfig/{queue}.all.json"] = {"get": {
        "summary": "Queuedata for the pilot", "tags": ["cache"],
        "parameters": [{"name": "queue", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}}],
        "responses": {**_json({"$ref": "#/components/schemas/Queuedata"}),
                      **errors(PLAIN_ERROR, ("400", "404"))}}}
    paths["/cache/ddmendpoints.json"] = {"get": {"summary": "Storage endpoints (CRIC format)", "tags": ["cache"],
                                                 "responses": _json({"type": "object"})}}
    paths["/cache/{file}"] = {"get": {
        "summary": "Download a cached file", "tags": ["cache"],
        "parameters": [{"name": "file", "in": "path", "required": True, "schema": {
            "type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$",
            "description": "a name the cache accepts (no path, no leading dot, no '..')"}}],
        "responses": {"200": {"description": "the file", "content": {"application/octet-stream": {}}},
                      **errors(PLAIN_ERROR, ("400", "401", "403", "404"))}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "pandaes gateway", "version": "1",
                 "description": "PanDA's pilot (legacy /server/panda) and client (/api/v1) protocols over the "
                                "pandaes event log. StatusCodes: 0 ok, 10 timeout, 20 no jobs, 30 failed, "
                                "50 invalid request, 60 role. A malformed request is answered 4xx with the "
                                "reason (the parameter named): an envelope with success false on /api/v1, "
                                "StatusCode 50 and errorDialog on /server/panda. 503 means nothing was "
                                "recorded and the call may be sent again."},
        "paths": _secured(paths),
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }


SECURITY_SCHEMES = {"token": {
    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
    "description": "an OIDC token of a configured issuer, sent with 'Origin: <vo>' (docs/auth.md); a client "
                   "certificate through a trusted proxy is the other way in"}}


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Each operation's security and roles from the gate's table (auth/policy.py::ENDPOINTS), so the document
    cannot drift from what the gate enforces: public routes need nothing; the others a token, and the roles."""
    for path, item in paths.items():
        roles = policy.endpoint_roles(path.replace("{queue}", "Q").replace("{file}", "f"))
        for op in item.values():
            if roles is policy.PUBLIC:
                op["security"] = []
                for code in ("401", "403"):
                    op["responses"].pop(code, None)
                continue
            op["security"] = [{"token": []}]
            needs = "any authenticated caller" if roles is policy.AUTHENTICATED else \
                f"a caller with one of the roles {', '.join(sorted(roles))}"
            op["description"] = f"Needs {needs} (401 without credentials, 403 without the role)."
    return paths


def text() -> str:
    return json.dumps(document(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(text(), end="")
