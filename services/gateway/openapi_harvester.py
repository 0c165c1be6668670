"""OpenAPI rows of Harvester's calls (services/gateway/harvester.py), in ``openapi.V1``'s shape:
(methods, path under /api/v1, summary, [(name, schema, required, description)], data schema)."""

from __future__ import annotations

from typing import Any

_STR, _INT, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
_OBJ, _LIST = {"type": "object"}, {"type": "array"}
_HID = ("harvester_id", _STR, True, "the Harvester instance, e.g. harvester_central_A")

HARVESTER: list[tuple[tuple[str, ...], str, str, list[tuple[str, dict[str, Any], bool, str]], Any]] = [
    (("post",), "harvester/heartbeat", "Harvester instance heartbeat; records owner, host and metadata", [
        _HID, ("data", _OBJ, False, "metadata, e.g. startTime, sw_version, commit_stamp")], None),
    (("post",), "harvester/update_workers", "Record workers (WorkSpec fields, pandaid_list); one bool per worker", [
        _HID, ("workers", _LIST, True, "WorkSpec.convert_to_propagate() dicts: workerID, status, computingSite, "
               "resourceType, jobType, nJobs, pandaid_list, …")], {"type": "array", "items": _BOOL}),
    (("get",), "harvester/get_current_worker_id", "The largest workerID recorded for the instance", [_HID], _INT),
    (("post",), "harvester/report_worker_statistics", "Replace the instance's worker counts of one queue", [
        _HID, ("panda_queue", _STR, True, ""),
        ("statistics", _STR, True, "JSON {jobType: {resourceType: {status: n}}}")], None),
    (("get",), "harvester/get_worker_statistics",
     "Worker counts of the last 4 hours: {site: {harvester_id: {jobType: {resourceType: {status: n}}}}}", [], _OBJ),
    (("post",), "harvester/update_service_metrics", "Record service metrics", [
        _HID, ("metrics", _LIST, True, "[[creation_time, host, metrics_json], …]")], _LIST),
    (("post",), "harvester/add_dialogs", "Record Harvester's dialog messages", [
        _HID, ("dialogs", _LIST, True, "{diagID, moduleName, identifier, creationTime, messageLevel, diagMessage}")],
     None),
    (("post",), "harvester/acquire_commands", "The oldest new commands of the instance (marked retrieved)", [
        _HID, ("n_commands", _INT, True, "at most this many"), ("timeout", _INT, False, "ignored")],
     {"type": "array", "items": {"type": "object", "properties": {
         "command_id": _INT, "command": _STR, "params": {}, "ack_requested": _BOOL, "creation_date": _STR}}}),
    (("post",), "harvester/acknowledge_commands", "Mark commands acknowledged", [
        ("command_ids", {"type": "array", "items": _INT}, True, ""), ("timeout", _INT, False, "ignored")], None),
    (("get",), "metaconfig/get_resource_types", "Resource types (resource_name, mincore, maxcore, "
     "minrampercore, maxrampercore)", [], _LIST),
    (("get",), "statistics/active_job_stats_by_site", "Jobs not final (merging left out): {site: {status: n}}",
     [], _OBJ),
    (("get",), "statistics/active_job_detailed_stats_by_site",
     "The same by {site: {resource_type: {prodSourceLabel: {status: n}}}}", [], _OBJ),
]
