"""What PostgreSQL can store: the check every value passes before it may become an event.

Why this module exists: the ledger writes an event for any command it accepts, and every reader of the
log (the projector, the services, JEDI) then has to store it. A value PostgreSQL cannot hold stops that
reader on that event for good: a NUL character (``text`` and ``jsonb`` refuse it), a string that is not
valid Unicode (a lone surrogate from a ``\\ud800`` JSON escape cannot even be encoded), a float that is not
finite. So the gateway refuses such a command with a message naming the field, and the ledger rejects one
that arrives by another road (code ``unstorable``); nothing unstorable becomes an event.

Integer ranges are declared on the contract itself (``schemas.jobspec.Int32``/``Int64``), where msgspec
enforces them on every decode; ``find`` only adds the 64-bit bound for integers outside the structs
(``attrs`` values, message fields).

The check is cheap on the hot path: a message is encoded anyway, and a NUL is always written as the
escape ``\\u0000`` in its JSON, so ``problem_in_json`` searches the bytes and walks the message only when
the escape is there (it may be an escaped backslash followed by ``u0000``, which is storable).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

__all__ = ["INT64", "Unstorable", "encoded", "find", "problem", "problem_in_json", "text_problem"]

INT64 = (-(2**63), 2**63 - 1)
_NUL_ESCAPE = b"\\u0000"
_encode = msgspec.json.Encoder().encode


class Unstorable(ValueError):
    """A value that cannot be stored; ``field`` is its path in the message (``attrs.pilotErrorDiag``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored in a text or jsonb column, or None."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return None


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def find(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first unstorable value in ``value`` (struct, dict, list or scalar): (field path, problem)."""
    if isinstance(value, str):
        problem_ = text_problem(value)
        return (path, problem_) if problem_ else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if INT64[0] <= value <= INT64[1] else (path, "is an integer beyond signed 64 bits")
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, "is not a finite number")
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            hit = find(getattr(value, name), _join(path, name))
            if hit:
                return hit
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            hit = find(key, _join(path, "<key>")) if isinstance(key, str) else None
            hit = hit or find(item, _join(path, key))
            if hit:
                return hit
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            hit = find(item, f"{path}[{i}]")
            if hit:
                return hit
    return None


def problem_in_json(raw: bytes, message: Any) -> Unstorable | None:
    """For a message decoded from ``raw``: what cannot be stored, found only if the bytes hint at it.

    Decoding already refused lone surrogates and out-of-range contract integers; what remains is a NUL,
    which JSON can only carry as the ``\\u0000`` escape."""
    if _NUL_ESCAPE not in raw:
        return None
    hit = find(message)
    return Unstorable(*hit) if hit else None


def problem(message: Any) -> Unstorable | None:
    """What in ``message`` (about to be sent) cannot be stored, or None."""
    try:
        encoded(message)
    except Unstorable as exc:
        return exc
    return None


def encoded(message: Any) -> bytes:
    """``message`` as the JSON that will be sent; Unstorable (naming the field) if it cannot be stored."""
    try:
        raw = _encode(message)
    except (UnicodeEncodeError, OverflowError, TypeError):
        hit = find(message)
        raise (Unstorable(*hit) if hit else Unstorable("", "cannot be encoded as JSON")) from None
    hit = find(message) if _NUL_ESCAPE in raw else _big_int(message)
    if hit:
        raise Unstorable(*hit)
    return raw


def _big_int(message: Any) -> tuple[str, str] | None:
    """Integers beyond 64 bits encode fine as JSON but fit no column: look for them in free-form ``attrs``."""
    attrs = getattr(message, "attrs", None)
    if not attrs:
        return None
    return find(attrs, "attrs")
