"""Reading request parameters the way PanDA's clients send them, and rejecting bad ones precisely.

pilot3 posts ``application/x-www-form-urlencoded`` (every value a string), panda-client posts JSON, old
tools put parameters in the query string, and some clients gzip JSON bodies (the app turns aiohttp's
own decompression off so that a corrupt body is a 400 here, not a reset connection). ``read_params``
merges all of that into one dict; the ``as_*`` helpers convert one field and raise ``BadRequest`` naming it, so a
handler never meets a wrong type and a caller always learns which field was wrong.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from schemas import storable
from schemas.storable import text_problem

_MISSING = object()


class BadRequest(Exception):
    """A request the gateway cannot act on; ``field`` names the culprit when there is one."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.status = status


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding, never inflating beyond ``limit`` bytes (a small gzip body can hold gigabytes)."""
    encoding = encoding.lower().strip()
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}", status=415)
    # wbits: 16 + MAX_WBITS reads a gzip member, MAX_WBITS a zlib stream (what HTTP calls deflate)
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
        if len(out) > limit:
            raise BadRequest(f"body inflates beyond the limit of {limit} bytes", status=413)
        if not inflater.eof:
            raise BadRequest(f"body is not valid {encoding}: the stream is truncated")
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {encoding}: {exc}") from None
    return out


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest(f"body must be a JSON object, got {type(value).__name__}")
    return value


def _form(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("form body is not UTF-8 text") from None
    if "=" not in text and text.strip():
        raise BadRequest("body is neither a form (k=v&...) nor a JSON object")
    return parse_form(text)


def parse_form(text: str) -> dict[str, Any]:
    """``multi_dict(parse_qsl(text, keep_blank_values=True))``, the same dict for every input, in about a third
    of the time. Why: every pilot call is a form (a final update about 20 fields, its report JSON quoted),
    and ``parse_qsl`` pays two ``replace``, two ``unquote`` calls and a tuple per field however plain the
    field is; here a name or value without ``%`` or ``+`` is taken as it is, and the dict is built directly
    (only a name given twice goes the general way)."""
    out: dict[str, Any] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if "%" in name or "+" in name:
            name = _unquoted(name)
        if "%" in value or "+" in value:
            value = _unquoted(value)
        if name in out:
            return multi_dict(parse_qsl(text, keep_blank_values=True))
        out[name] = value
    return out


#: short quoted form texts seen lately → their text: a pilot's site, node, pilotID and CPU unit come in every
#: call quoted the same way; bounded (emptied when full), so a stream of distinct values costs one dict each
_UNQUOTED: dict[str, str] = {}
_UNQUOTED_MAX, _UNQUOTED_LEN = 4096, 64


def _unquoted(text: str) -> str:
    hit = _UNQUOTED.get(text)
    if hit is None:
        hit = unquote_plus(text)
        if len(text) <= _UNQUOTED_LEN:
            if len(_UNQUOTED) >= _UNQUOTED_MAX:
                _UNQUOTED.clear()
            _UNQUOTED[text] = hit
    return hit


def multi_dict(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Form or query pairs → dict; a name given more than once (``job_ids=1&job_ids=2``, as ``requests``
    encodes a list parameter) becomes the list of its values, in order, instead of keeping only one."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key not in out:
            out[key] = value
        elif isinstance(out[key], _Repeated):
            out[key].append(value)
        else:
            out[key] = _Repeated([out[key], value])
    return {k: list(v) if isinstance(v, _Repeated) else v for k, v in out.items()}


class _Repeated(list):
    """Marks a list built from repeated names (a value that is itself a list stays one value)."""


async def read_params(request: web.Request) -> dict[str, Any]:
    """Query string + body (JSON object, form, or multipart) as one dict; the body wins on clashes."""
    params: dict[str, Any] = multi_dict(request.query.items()) if request.query_string else {}
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        try:
            post = await request.post()
        except (ValueError, HttpProcessingError) as exc:   # e.g. a part header holding a NUL
            raise BadRequest(f"bad multipart body: {exc!r}"[:300]) from None
        params.update(multi_dict(post.items()))
        return params
    if not request.can_read_body:
        return params
    body = _decompress(await request.read(), request.headers.get("Content-Encoding", ""),
                       int(request.app["cfg"].gateway.max_body_bytes))
    if not body or body.isspace():
        return params
    if ctype == "application/json" or (ctype != "application/x-www-form-urlencoded" and body.lstrip()[:1] == b"{"):
        params.update(_json_object(body))
    else:
        params.update(_form(body))
    return params


def _get(params: Mapping[str, Any], names: tuple[str, ...]) -> tuple[str, Any]:
    for name in names:
        if name in params and params[name] not in (None, "", "NULL", "None"):
            return name, params[name]
    return names[0], _MISSING


def as_str(params: Mapping[str, Any], *names: str, default: Any = _MISSING, max_len: int = 10000) -> Any:
    name, value = _get(params, names)
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest("is required", field=name)
        return default
    if not isinstance(value, str):   # a JSON number, boolean, list or object where text is expected
        raise BadRequest(f"expected a string, got {_json_type(value)}", field=name)
    text = value
    problem = text_problem(text)
    if problem:
        raise BadRequest(problem, field=name)
    return text[:max_len]


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    return {bool: "boolean", int: "integer", float: "number", dict: "object", list: "array"}.get(
        type(value), type(value).__name__)


def as_int(params: Mapping[str, Any], *names: str, default: Any = _MISSING) -> Any:
    name, value = _get(params, names)
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest("is required", field=name)
        return default
    return to_int(value, name)


def to_int(value: Any, name: str) -> int:
    """An integer within 64 bits (what a PostgreSQL bigint holds): 12, "12", 12.0 and "1e3" are integers,
    True, 1.5, "abc" and 2**63 are not. Decimal text is read exactly (a float would round 2**63 - 1 up)."""
    if isinstance(value, bool) or isinstance(value, dict | list):
        raise BadRequest(f"expected an integer, got {_json_type(value)}", field=name)
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        try:
            number = int(text) if text.lstrip("+-").isdigit() and text.isascii() else _integral(text)
        except ValueError:
            raise BadRequest(f"expected an integer, got {text[:40]!r}", field=name) from None
    if abs(number) >= INT64_LIMIT:
        raise BadRequest(f"expected an integer within 64 bits, got {str(value)[:40]!r}", field=name)
    return number


#: integers are refused from this magnitude on (PostgreSQL bigint: -2**63 + 1 … 2**63 - 1 here)
INT64_LIMIT = 2**63


def _integral(text: str) -> int:
    number = float(text)
    if not math.isfinite(number) or number != int(number):
        raise ValueError(text)
    return int(number)


def as_float(params: Mapping[str, Any], *names: str, default: Any = _MISSING) -> Any:
    name, value = _get(params, names)
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest("is required", field=name)
        return default
    try:
        number = float(str(value).strip()) if not isinstance(value, bool) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise BadRequest(f"expected a number, got {str(value)[:40]!r}", field=name)
    return number


def as_bool(params: Mapping[str, Any], *names: str, default: Any = _MISSING) -> Any:
    name, value = _get(params, names)
    if value is _MISSING:
        if default is _MISSING:
            raise BadRequest("is required", field=name)
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"expected a boolean, got {str(value)[:40]!r}", field=name)


def as_id_list(params: Mapping[str, Any], *names: str, limit: int = 5500) -> list[int]:
    """PandaIDs as a JSON list, a JSON text of a list, or a comma/space/plus separated string."""
    name, value = _get(params, names)
    if value is _MISSING:
        raise BadRequest("is required", field=name)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise BadRequest("is not a valid JSON list", field=name) from None
        else:
            value = [v for v in text.replace(",", " ").replace("+", " ").split() if v]
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise BadRequest(f"expected a list of PandaIDs, got {type(value).__name__}", field=name)
    if len(value) > limit:
        raise BadRequest(f"at most {limit} IDs per call, got {len(value)}", field=name)
    return [to_int(v, f"{name}[{i}]") for i, v in enumerate(value)]


def json_or_value(value: Any, name: str, expect: type, must: str) -> Any:
    """``value``, or the value of its JSON text (PanDA's clients send structured parameters either way),
    which must be an ``expect`` (else a 400 naming ``name``: ``must``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequest("is not valid JSON", field=name) from None
    if not isinstance(value, expect):
        raise BadRequest(must, field=name)
    return value


def storable_value(value: Any, name: str) -> Any:
    """``value`` (free-form JSON a handler stores as it is) if the database can hold every part of it, else
    BadRequest naming the part: ``metrics[0][1].<key>: contains a NUL character``."""
    hit = storable.find(value, name)
    if hit:
        path, problem = hit
        raise BadRequest(f"{path}: {problem}", field=None)
    return value
