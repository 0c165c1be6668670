"""Which failures make an event a dead letter (decided again never) and which stop the loop (decided again)."""

from __future__ import annotations

import msgspec
import psycopg

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
