"""Logging of the components: plain text for people, or JSON lines (``[log] format = "json"``) for machines.

Why contextvars: the component, and the PandaID / command id / correlation id of the message being
handled, are known where the work starts (the ledger judging a command, a service loop deciding an
event, the dispatcher handing out a job), not where a line is logged deep below. ``bind`` sets them for
the duration of that work (per thread, per asyncio task), a filter copies them onto every record, and the
JSON formatter writes the ones that are set. Text lines carry them too, as ``key=value`` suffixes.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

from core.config import Config

FIELDS = ("component", "PandaID", "command_id", "correlation_id")
_context: dict[str, contextvars.ContextVar[Any]] = {f: contextvars.ContextVar(f"log_{f}", default=None)
                                                    for f in FIELDS}
_component = "pandaes"   # the process's component: one per process, so a plain global, seen by every thread


class bind:  # noqa: N801  (used like a function: ``with logs.bind(PandaID=1): ...``)
    """Attach ``fields`` (PandaID, command_id, correlation_id, component) to every log line inside.

    A small class rather than a generator context manager: the ledger binds once per command, so this
    is on its hot path (a few ContextVar sets, no generator frame)."""

    __slots__ = ("fields", "tokens")

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        self.tokens: list = []

    def __enter__(self) -> None:
        self.tokens = [(_context[k], _context[k].set(v)) for k, v in self.fields.items() if k in _context]

    def __exit__(self, *exc: object) -> None:
        for var, token in reversed(self.tokens):
            var.reset(token)


def bind_message(msg: Any) -> bind:
    """``bind`` with what a command, event or rejection carries (its PandaID, command id, correlation id)."""
    command_id = getattr(msg, "command_id", None) or getattr(msg, "id", None)
    return bind(PandaID=getattr(msg, "PandaID", None), command_id=command_id,
                correlation_id=getattr(msg, "correlation_id", None))


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (``record.PandaID`` …), None where unset."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        if record.component is None:  # type: ignore[attr-defined]
            record.component = _component  # type: ignore[attr-defined]
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the bound fields that are
    set, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The familiar text line, with the bound fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(component)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{n}={getattr(record, n)}" for n in FIELDS[1:] if getattr(record, n, None) is not None)
        return f"{line} [{extra}]" if extra else line


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f'[log] format must be "text" or "json", not {fmt!r}')


def configure(cfg: Config, component: str) -> None:
    """Log to stderr in the configured format, every line naming ``component``."""
    global _component
    _component = component
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(str(cfg.log.format)))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(str(cfg.log.level).upper())
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is per-connection chatter
