"""The event contract: stored samples of every schema version decode, and the JSON Schema is current; stored
commands of every version decode too (a command's optional reply_to included)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from schemas import jsonschema
from schemas.messages import (
    SCHEMA_VERSION,
    JobTransitioned,
    Kill,
    PilotUpdate,
    VersionError,
    decode_command,
    decode_event,
    encode,
)

SAMPLES = Path(__file__).parent / "samples" / "events"
COMMANDS = Path(__file__).parent / "samples" / "commands"


def _samples(version: int) -> list[Path]:
    return sorted((SAMPLES / f"v{version}").glob("*.json"))


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
def test_every_stored_sample_decodes_as_the_current_version(version):
    paths = _samples(version)
    assert paths, f"no samples for schema version {version}"
    for path in paths:
        ev = decode_event(path.read_bytes())
        assert ev.v == SCHEMA_VERSION, path.name


def test_old_versions_upcast_to_what_the_current_version_says():
    current = {p.name: decode_event(p.read_bytes()) for p in _samples(SCHEMA_VERSION)}
    for path in _samples(1):
        name = path.name.replace("_stamped", "")
        assert decode_event(path.read_bytes()) == current[name], path.name


def test_v2_renamed_the_final_report_of_transitioned_only():
    old = json.loads((SAMPLES / "v1" / "transitioned_holding.json").read_text())
    ev = decode_event(json.dumps(old).encode())
    assert isinstance(ev, JobTransitioned) and ev.report == old["report"]
    wire = json.loads(encode(ev))
    assert wire["job_output_report"] == old["report"] and "report" not in wire and wire["v"] == SCHEMA_VERSION


def test_current_samples_are_canonical():
    for path in _samples(SCHEMA_VERSION):
        assert json.loads(encode(decode_event(path.read_bytes()))) == json.loads(path.read_text()), path.name


def test_a_newer_version_is_refused_not_guessed():
    body = json.loads((SAMPLES / f"v{SCHEMA_VERSION}" / "updated_heartbeat.json").read_text())
    body["v"] = SCHEMA_VERSION + 1
    with pytest.raises(VersionError):
        decode_event(json.dumps(body).encode())
    assert issubclass(VersionError, msgspec.ValidationError)  # readers that skip bad messages skip it too


def test_an_invalid_current_message_still_fails_with_the_decoders_error():
    with pytest.raises(msgspec.ValidationError, match="seq"):
        decode_event(b'{"type":"updated","v":2,"PandaID":1,"seq":"x","from_state":"a","to_state":"a",'
                     b'"command_id":"c","action":"set"}')


def test_checked_in_json_schema_is_what_the_code_generates():
    assert jsonschema.SCHEMA_PATH.read_text() == jsonschema.render(), \
        "docs/job-events.schema.json is stale: run `python -m schemas.jsonschema`"


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
def test_every_stored_command_decodes_as_the_current_version(version):
    paths = sorted((COMMANDS / f"v{version}").glob("*.json"))
    assert paths, f"no command samples for schema version {version}"
    for path in paths:
        assert decode_command(path.read_bytes()).v == SCHEMA_VERSION, path.name
    for path in paths if version < SCHEMA_VERSION else ():
        assert decode_command(path.read_bytes()) == decode_command((COMMANDS / f"v{SCHEMA_VERSION}" / path.name)
                                                                   .read_bytes()), path.name


def test_current_command_samples_are_canonical():
    for path in sorted((COMMANDS / f"v{SCHEMA_VERSION}").glob("*.json")):
        assert json.loads(encode(decode_command(path.read_bytes()))) == json.loads(path.read_text()), path.name


def test_reply_to_is_optional_and_never_negative():
    old = decode_command((COMMANDS / "v1" / "kill.json").read_bytes())
    assert isinstance(old, Kill) and old.reply_to is None and "reply_to" not in json.loads(encode(old))
    new = decode_command((COMMANDS / f"v{SCHEMA_VERSION}" / "pilot_update_reply_to.json").read_bytes())
    assert isinstance(new, PilotUpdate) and new.reply_to == 3
    body = json.loads((COMMANDS / f"v{SCHEMA_VERSION}" / "pilot_update_reply_to.json").read_text())
    body["reply_to"] = -1
    with pytest.raises(msgspec.ValidationError, match="reply_to"):
        decode_command(json.dumps(body).encode())
