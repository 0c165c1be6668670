"""The log formats: JSON lines carry the component and the bound PandaID / command id / correlation id."""

from __future__ import annotations

import json
import logging

import pytest

from core import logs
from schemas.messages import Kill


def _record(msg: str = "hello %s", *args) -> logging.LogRecord:
    record = logging.LogRecord("pandaes.test", logging.INFO, __file__, 1, msg, args or ("world",), None)
    assert logs.ContextFilter().filter(record)
    return record


def test_json_line_has_the_bound_fields():
    cmd = Kill(PandaID=42, actor="user:x", correlation_id="corr-1")
    with logs.bind(component="ledger"), logs.bind_message(cmd):
        line = logs.JsonFormatter().format(_record())
    data = json.loads(line)
    assert data["message"] == "hello world"
    assert data["level"] == "INFO" and data["logger"] == "pandaes.test"
    assert data["component"] == "ledger"
    assert data["PandaID"] == 42
    assert data["command_id"] == cmd.id
    assert data["correlation_id"] == "corr-1"
    assert data["time"].endswith("+00:00")


def test_fields_are_unbound_after_the_block_and_absent_when_unset():
    with logs.bind(PandaID=7):
        pass
    data = json.loads(logs.JsonFormatter().format(_record()))
    assert "PandaID" not in data and "command_id" not in data and "correlation_id" not in data
    assert data["component"]  # the process's component is always there


def test_event_binds_the_command_it_answers():
    class Ev:  # what bind_message reads of an event
        PandaID = 5
        command_id = "c-5"
        id = "e-5"
        correlation_id = None
    with logs.bind_message(Ev()):
        data = json.loads(logs.JsonFormatter().format(_record()))
    assert data["command_id"] == "c-5" and data["PandaID"] == 5


def test_exception_is_one_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    logs.ContextFilter().filter(record)
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_text_format_appends_fields_and_unknown_format_is_refused():
    with logs.bind(PandaID=9, command_id="c9"):
        line = logs.TextFormatter().format(_record())
    assert line.endswith("[PandaID=9 command_id=c9]")
    with pytest.raises(ValueError):
        logs.formatter("xml")
