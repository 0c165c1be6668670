"""OpenAPI rows of JEDI's task operations (services/gateway/tasks.py) and of the credential and JEDI-log
calls (services/gateway/creds.py), in ``openapi.V1``'s shape: (methods, path under /api/v1, summary,
[(name, schema, required, description)], data schema). Task operations answer the envelope plus ``jobs``,
the verdict of every job: {job_id, ok, action, reason}."""

from __future__ import annotations

from typing import Any

from .openapi_types import BOOL, INT, STR

_STR, _INT, _BOOL = STR, INT, BOOL
_TASK = ("task_id", _INT, True, "jediTaskID")
_RC = {"type": "integer", "description": "PanDA's return code: 0 registered, 2 task not found, 3 permission denied"}

TASKS: list[tuple[tuple[str, ...], str, str, list[tuple[str, dict[str, Any], bool, str]], Any]] = [
    (("post",), "task/kill", "Kill every unfinished job of the task (kill code 50)", [
        _TASK, ("broadcast", _BOOL, False, "accepted; kills reach pilots anyway")], _RC),
    (("post",), "task/kill_unfinished_jobs", "Kill every unfinished job of the task; one bool per job", [
        _TASK, ("code", _INT, False, "PanDA kill code")], {"type": "array", "items": _BOOL}),
    (("post",), "task/reassign", "Queued jobs back to defined (to site if given); running ones killed with "
     "code 51 unless mode is soft or nokill", [
        _TASK, ("site", _STR, False, "computingSite for the reset jobs"), ("cloud", _STR, False, "ignored"),
        ("nucleus", _STR, False, "ignored"),
        ("mode", {"enum": ["kill", "soft", "nokill"]}, False, "kill (default), soft or nokill"),
        ("soft", _BOOL, False, "true: mode soft")], _RC),
    (("post",), "task/change_priority", "Set currentPriority of every unfinished job (production)", [
        _TASK, ("priority", _INT, True, "")], None),
    (("post",), "task/pause", "Throttle the task's activated jobs (production)", [_TASK], _RC),
    (("post",), "task/resume", "Activate the task's throttled jobs again (production)", [_TASK], _RC),
    (("post",), "task/finish", "Close the task's queued (soft) or unfinished jobs with code 55", [
        _TASK, ("soft", _BOOL, False, "only jobs not yet dispatched"),
        ("broadcast", _BOOL, False, "accepted; not used")],
     _RC),
    (("get",), "task/get_job_ids", "PandaIDs of the task's jobs, in any state", [_TASK],
     {"type": "array", "items": _INT}),
]

CREDS: list[tuple[tuple[str, ...], str, str, list[tuple[str, dict[str, Any], bool, str]], Any]] = [
    (("get", "post"), "creds/get_proxy", "The x509 proxy of a role from the credential store ([creds] dir); the "
     "caller must hold the role. Refused (success false) when no store is configured", [
        ("role", _STR, False, "default production"), ("dn", _STR, False, "only the caller's own (admins any)")],
     {"type": "object", "properties": {"user_proxy": _STR}}),
    (("get", "post"), "creds/get_key_pair", "A public/private key pair from the credential store", [
        ("public_key_name", _STR, True, ""), ("private_key_name", _STR, True, "")],
     {"type": "object", "properties": {"public_key": _STR, "private_key": _STR}}),
    (("get", "post"), "creds/get_token_key", "The token key of an OIDC client from the credential store", [
        ("client_name", _STR, True, "")], {"type": "object", "properties": {"tokenKey": _STR}}),
]

LEGACY_CREDS: list[tuple[str, str, list[tuple[str, dict[str, Any], bool, str]], str]] = [
    ("getProxy", "pilot3: the proxy of a role from the credential store (StatusCode 0 and userProxy, or 30)", [
        ("role", _STR, False, "default production"), ("dn", _STR, False, "")], "LegacyStatus"),
    ("getKeyPair", "pilot3: a key pair from the credential store (StatusCode 0, publicKey, privateKey, or 30)", [
        ("publicKeyName", _STR, True, ""), ("privateKeyName", _STR, True, "")], "LegacyStatus"),
]

#: file_server/upload_jedi_log's multipart body and answer (data: the URL of the stored log)
JEDI_LOG_UPLOAD = {
    "summary": "Upload a JEDI task log (multipart field 'file', production); replaces the log of that name; "
               "data is its URL under /cache/jedilog/",
    "tags": ["file_server"],
    "requestBody": {"content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": {"file": {"type": "string", "format": "binary"}}, "required": ["file"]}}}},
}
