"""What the gateway's parameter readers accept and refuse: the types docs/openapi.json declares
(services/gateway/openapi_types.py) hold only if these do."""

from __future__ import annotations

import pytest

from services.gateway.params import INT64_LIMIT, BadRequest, as_bool, as_id_list, as_str, storable_value, to_int


@pytest.mark.parametrize("value, expected", [
    (12, 12), ("12", 12), (" -3 ", -3), ("1e3", 1000), (12.0, 12), ("+7", 7),
    (str(INT64_LIMIT - 1), INT64_LIMIT - 1), (-(INT64_LIMIT - 1), -(INT64_LIMIT - 1)),
])
def test_to_int_reads_integers_within_64_bits_exactly(value, expected):
    assert to_int(value, "x") == expected


@pytest.mark.parametrize("value", [True, False, 1.5, "1.5", "abc", "", "nan", "1e400", [1], {"a": 1},
                                   INT64_LIMIT, -INT64_LIMIT, str(INT64_LIMIT), 1e20])
def test_to_int_refuses_everything_else_naming_the_field(value):
    with pytest.raises(BadRequest) as err:
        to_int(value, "job_id")
    assert str(err.value).startswith("job_id: expected an integer")


@pytest.mark.parametrize("value", [12, 1.5, True, [1], {"a": "b"}])
def test_as_str_refuses_a_json_value_that_is_not_text(value):
    with pytest.raises(BadRequest, match="command: expected a string, got "):
        as_str({"command": value}, "command")


def test_as_str_refuses_unstorable_text_and_reads_not_given_as_the_default():
    with pytest.raises(BadRequest, match="command: contains a NUL character"):
        as_str({"command": "a\x00b"}, "command")
    for missing in ({}, {"command": None}, {"command": ""}, {"command": "NULL"}):
        assert as_str(missing, "command", default="d") == "d"


@pytest.mark.parametrize("value, expected", [(True, True), (0, False), ("1", True), ("Yes", True), ("off", False)])
def test_as_bool_spellings(value, expected):
    assert as_bool({"mode": value}, "mode") is expected


def test_id_lists_in_their_three_forms():
    assert as_id_list({"ids": [1, "2"]}, "ids") == [1, 2]
    assert as_id_list({"ids": "[1, 2]"}, "ids") == [1, 2]
    assert as_id_list({"ids": "1,2 3+4"}, "ids") == [1, 2, 3, 4]
    assert as_id_list({"ids": 7}, "ids") == [7]
    with pytest.raises(BadRequest, match=r"ids\[1\]: expected an integer within 64 bits"):
        as_id_list({"ids": [1, 2**63]}, "ids")


def test_storable_value_names_the_part_the_database_cannot_hold():
    assert storable_value({"a": [1, "x"]}, "data") == {"a": [1, "x"]}
    with pytest.raises(BadRequest, match=r"^metrics\[0\]\[1\]\.k: contains a NUL character$"):
        storable_value([[1, {"k": "a\x00"}]], "metrics")
    with pytest.raises(BadRequest, match="lone surrogate"):
        storable_value({"\udc00": 1}, "data")
