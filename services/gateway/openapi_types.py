"""The value types and the error answers of the OpenAPI document, declared as the gateway really reads and
answers them (``params.py``, the error middleware, the gate), so that a schema fuzzer holding the gateway
to the document finds neither an undeclared answer nor a malformed request accepted.

What a parameter may be is what ``params.py`` accepts: integers within 64 bits, text without a NUL or a
lone surrogate, booleans as JSON booleans, 0/1 or their usual spellings, PandaID lists in three forms.
An optional parameter may be left out or sent as ``null``, ``""`` or ``"NULL"`` (PanDA's clients do all three).
"""

from __future__ import annotations

from typing import Any

from .params import INT64_LIMIT

#: text the database can store: no NUL character (a lone surrogate cannot be sent as UTF-8 at all)
STR: dict[str, Any] = {"type": "string", "pattern": "^[^\\u0000]*$"}
INT: dict[str, Any] = {"type": "integer", "minimum": -(INT64_LIMIT - 1), "maximum": INT64_LIMIT - 1}
#: a PandaID or another identifier that must be positive
ID: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": INT64_LIMIT - 1}
NUM: dict[str, Any] = {"type": "number"}
#: what ``params.as_bool`` reads as a boolean
BOOL: dict[str, Any] = {"anyOf": [{"type": "boolean"}, {"enum": [0, 1, "0", "1", "true", "false", "True", "False",
                                                              "yes", "no", "on", "off"]}]}
#: accepted and not used (PanDA's clients send it)
ANY: dict[str, Any] = {"description": "accepted and ignored"}
IDS: dict[str, Any] = {"anyOf": [{"type": "array", "items": INT, "maxItems": 5500}, INT, STR],
                       "description": "PandaIDs: a list, one integer, JSON text of a list, or 'a,b' / 'a b' / 'a+b'"}
#: the same in a query string: the HTTP server takes a request line of at most 8190 bytes (a 400 in plain text
#: beyond it), which holds about 250 IDs; a longer list goes in a POST body
QUERY_IDS: dict[str, Any] = {**IDS, "anyOf": [{"type": "array", "items": INT, "maxItems": 200}, INT, STR]}


def soft(schema: dict[str, Any]) -> dict[str, Any]:
    """An updateJob field the gateway drops (and names in errorDialog) when it is not of its type, instead of
    refusing the update: the state change of a pilot's report matters more than one odd metric."""
    kind = schema.get("type", "value")
    return {"description": f"{kind}; a value that is not one is ignored and named in errorDialog"}


#: how a client says "not given" for an optional parameter (PanDA's clients send None, "" or "NULL")
NOT_GIVEN: dict[str, Any] = {"enum": [None, "", "NULL", "None"]}


def mandatory(schema: dict[str, Any]) -> dict[str, Any]:
    """A required parameter: an empty string means "not given" too, so text must not be empty."""
    return {**schema, "minLength": 1} if schema.get("type") == "string" else schema


def optional(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional parameter: its type, or one of the spellings of "not given"."""
    if not {"type", "anyOf", "enum"} & schema.keys():
        return schema
    return {"anyOf": [schema, NOT_GIVEN]}


_MESSAGE = {"type": "string", "minLength": 1}
#: a refused /api/v1 request: success false and the reason (the field first when one is to blame)
ENVELOPE_ERROR: dict[str, Any] = {"type": "object", "required": ["success", "message", "data"], "properties": {
    "success": {"const": False}, "message": _MESSAGE, "data": {}}}
#: a refused legacy (/server/panda) request: StatusCode 50 (invalid) or 60 (role) and the reason
LEGACY_ERROR: dict[str, Any] = {"type": "object", "required": ["StatusCode", "errorDialog"], "properties": {
    "StatusCode": {"enum": [50, 60]}, "errorDialog": _MESSAGE}}
#: /cache and other plain JSON answers
PLAIN_ERROR: dict[str, Any] = {"type": "object", "required": ["error"], "properties": {"error": _MESSAGE}}

WHY = {
    "400": "malformed request: a missing or mistyped parameter (named), a body that does not parse",
    "401": "no credentials, or credentials that do not verify",
    "403": "the caller lacks the role this call needs, or may not act on these jobs",
    "404": "no such thing",
    "413": "the body (or what it inflates to) is larger than [gateway] max_body_bytes, or a command would "
           "exceed the broker's message limit",
    "415": "a Content-Encoding other than gzip, deflate or identity",
    "503": "the log or the database is unavailable for a moment: nothing was recorded, send it again",
}


def errors(schema: dict[str, Any], codes: tuple[str, ...], media: str = "application/json") -> dict[str, Any]:
    """The error answers ``codes`` with body ``schema``."""
    return {code: {"description": WHY[code], "content": {media: {"schema": schema}}} for code in codes}


#: what every authenticated route may answer besides its own 200
COMMON = ("400", "401", "403", "413", "415")
