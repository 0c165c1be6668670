"""OpenAPI rows of Harvester's calls (services/gateway/harvester.py) and the event service
(services/gateway/events.py), in ``openapi.V1``'s shape: (methods, path under /api/v1, summary,
[(name, schema, required, description)], data schema); LEGACY_EVENTS in ``openapi.LEGACY``'s shape."""

from __future__ import annotations

from typing import Any

from .openapi_types import ANY, BOOL, ID, INT, STR

_STR, _INT, _BOOL = STR, INT, BOOL
_OBJ, _LIST = {"type": "object"}, {"type": "array"}
_JSON_OBJ = {"anyOf": [_OBJ, _STR], "description": "an object, or its JSON text"}


def _json_list(items: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"type": "array", "items": items}, _STR], "description": "a list, or its JSON text"}


_HID = ("harvester_id", _STR, True, "the Harvester instance, e.g. harvester_central_A")

HARVESTER: list[tuple[tuple[str, ...], str, str, list[tuple[str, dict[str, Any], bool, str]], Any]] = [
    (("post",), "harvester/heartbeat", "Harvester instance heartbeat; records owner, host and metadata", [
        _HID, ("data", _JSON_OBJ, False, "metadata, e.g. startTime, sw_version, commit_stamp")], None),
    (("post",), "harvester/update_workers", "Record workers (WorkSpec fields, pandaid_list); one bool per worker", [
        _HID, ("workers", _json_list(_OBJ), True, "WorkSpec.convert_to_propagate() dicts: workerID, status, "
               "computingSite, resourceType, jobType, nJobs, pandaid_list, …")], {"type": "array", "items": _BOOL}),
    (("get",), "harvester/get_current_worker_id", "The largest workerID recorded for the instance", [_HID], _INT),
    (("post",), "harvester/report_worker_statistics", "Replace the instance's worker counts of one queue", [
        _HID, ("panda_queue", _STR, True, ""),
        ("statistics", _JSON_OBJ, True, "{jobType: {resourceType: {status: n}}}")], None),
    (("get",), "harvester/get_worker_statistics",
     "Worker counts of the last 4 hours: {site: {harvester_id: {jobType: {resourceType: {status: n}}}}}", [], _OBJ),
    (("post",), "harvester/update_service_metrics", "Record service metrics", [
        _HID, ("metrics", _json_list({"type": "array", "minItems": 3, "maxItems": 3}), True,
               "[[creation_time, host, metrics_json], …]")], _LIST),
    (("post",), "harvester/add_dialogs", "Record Harvester's dialog messages", [
        _HID, ("dialogs", _json_list({"type": "object", "required": ["diagID"]}), True,
               "{diagID, moduleName, identifier, creationTime, messageLevel, diagMessage}")],
     None),
    (("post",), "harvester/acquire_commands", "The oldest new commands of the instance (marked retrieved)", [
        _HID, ("n_commands", {**ID, "maximum": 1000}, True, "at most this many"), ("timeout", ANY, False, "")],
     {"type": "array", "items": {"type": "object", "properties": {
         "command_id": _INT, "command": _STR, "params": {}, "ack_requested": _BOOL, "creation_date": _STR}}}),
    (("post",), "harvester/acknowledge_commands", "Mark commands acknowledged", [
        ("command_ids", _json_list(_INT), True, ""), ("timeout", ANY, False, "")], None),
    (("get",), "metaconfig/get_resource_types", "Resource types (resource_name, mincore, maxcore, "
     "minrampercore, maxrampercore)", [], _LIST),
    (("get",), "statistics/active_job_stats_by_site", "Jobs not final (merging left out): {site: {status: n}}",
     [], _OBJ),
    (("get",), "statistics/active_job_detailed_stats_by_site",
     "The same by {site: {resource_type: {prodSourceLabel: {status: n}}}}", [], _OBJ),
]

_RANGE_COUNT = {**ID, "maximum": 10000}
_RANGES = {"type": "array", "items": {"type": "object", "properties": {
    "eventRangeID": _STR, "startEvent": _INT, "lastEvent": _INT, "LFN": _STR, "GUID": _STR, "scope": _STR}}}
_UPDATE = {"type": "object", "properties": {"StatusCode": _INT, "Returns": {"type": "array", "items": _BOOL},
                                            "Commands": _OBJ}}
_REPORTED = ("JSON list of {eventRangeID, eventStatus} (version 0) or of {zipFile, eventRanges: [...]} (version 1);"
             " eventStatus running, finished, failed, fatal, cancelled, discarded or corrupted")

EVENTS: list[tuple[tuple[str, ...], str, str, list[tuple[str, dict[str, Any], bool, str]], Any]] = [
    (("post",), "event/acquire_event_ranges", "Hand out up to n_ranges ready event ranges of the job (each once)", [
        ("job_id", _INT, True, "PandaID"), ("jobset_id", ANY, False, ""), ("task_id", ANY, False, ""),
        ("n_ranges", _RANGE_COUNT, False, "default 10"), ("scattered", ANY, False, ""),
        ("segment_id", ANY, False, "")],
     {"type": "object", "properties": {"StatusCode": _INT, "eventRanges": _RANGES}}),
    (("post",), "event/update_event_ranges", "Report event range statuses; Returns one bool per range", [
        ("event_ranges", _json_list(_OBJ), True, _REPORTED), ("version", ANY, False, "0 or 1")], _UPDATE),
    (("get",), "event/get_available_event_range_count", "How many ranges of the job are still ready", [
        ("job_id", _INT, True, "PandaID"), ("jobset_id", ANY, False, ""), ("task_id", ANY, False, "")], _INT),
]

LEGACY_EVENTS: list[tuple[str, str, list[tuple[str, dict[str, Any], bool, str]], str]] = [
    ("getEventRanges", "pilot3: hand out up to nRanges ready event ranges of the job", [
        ("pandaID", _INT, True, ""), ("jobsetID", ANY, False, ""), ("taskID", ANY, False, ""),
        ("nRanges", _RANGE_COUNT, False, "default 10")], "LegacyStatus"),
    ("updateEventRanges", "pilot3: report event range statuses", [
        ("eventRanges", _STR, True, _REPORTED), ("version", ANY, False, "0 or 1")], "LegacyStatus"),
]
