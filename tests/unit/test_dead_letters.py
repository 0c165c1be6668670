"""Which failures make an event a dead letter (decided again never) and which stop the loop (decided again)."""

from __future__ import annotations

import msgspec
import psycopg
import pytest

from projections import deadletters
from projections.wait import ProjectionLag
from services.dead_letters import describe, is_transient


def test_transient_failures_stop_the_loop_and_the_rest_are_dead_letters():
    assert is_transient(psycopg.OperationalError("server closed the connection"))
    assert is_transient(ProjectionLag({1: None}, {1: 2}))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(psycopg.DataError("invalid byte sequence"))
    assert not is_transient(ValueError("bad value"))
    assert not is_transient(msgspec.DecodeError("not JSON"))


def test_the_projector_treats_refused_values_as_poison_and_a_lost_server_not():
    assert isinstance(psycopg.errors.NumericValueOutOfRange(), deadletters.POISON)
    assert isinstance(psycopg.errors.UntranslatableCharacter(), deadletters.POISON)
    assert isinstance(msgspec.ValidationError(), deadletters.POISON)
    assert not isinstance(psycopg.OperationalError(), deadletters.POISON)


def test_an_error_line_is_storable_text():
    assert "\x00" not in describe(ValueError("a\x00b")) and "\\0" in describe(ValueError("a\x00b"))
    assert deadletters.describe(ValueError("\ud800")).encode()


def test_the_ledger_folds_an_event_that_no_longer_decodes_from_its_sequence_and_skips_what_is_no_event():
    from core.ledger import _decode_for_fold
    from schemas.jobspec import JobSpec
    from schemas.messages import JobSubmitted, encode

    old = encode(JobSubmitted(PandaID=5, seq=1, from_state="new", to_state="defined", command_id="c", src=[0, 3],
                              job=JobSpec(currentPriority=2**40, attemptNr=2, prodSourceLabel="user")))
    loose = _decode_for_fold(old, 0, 1)
    state = loose.fold(None)
    assert (state.seq, state.state, state.attempt_nr, state.label, loose.src) == (1, "defined", 2, "user", [0, 3])
    assert _decode_for_fold(b"\xff not an event", 0, 2) is None


def test_dead_letter_ids_on_the_command_line():
    from cli.deadletters import parse_ids

    assert parse_ids(["p3", "S12", "p4"]) == {"p": [3, 4], "s": [12]}
    for bad in ("3", "x3", "p", "p-1"):
        with pytest.raises(ValueError, match="p<N>"):
            parse_ids([bad])
