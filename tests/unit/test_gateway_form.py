"""params.parse_form: the dict multi_dict(parse_qsl(text, keep_blank_values=True)) gives, for any text."""

from __future__ import annotations

import random
from urllib.parse import parse_qsl

from services.gateway import params
from services.gateway.params import multi_dict, parse_form

CASES = ["a=1&b=2", "a=1&&b=", "a", "a&b=", "=x", "a=b=c", "a+b=c+d%20e", "x=%zz&y=%E2%9C%93", "a=1&a=2",
         "k=%2B+%2b", "&&", "a=%", "é=ü", "a=1;b=2", "%61=1&a=2", "jobs=1&jobs=2&jobs=3", ""]


def _want(text: str) -> dict:
    return multi_dict(parse_qsl(text, keep_blank_values=True))


def test_parse_form_is_parse_qsl_on_chosen_and_random_texts():
    rng = random.Random(14)
    texts = CASES + ["".join(rng.choice("ab=&%+2F0x;é ") for _ in range(rng.randint(0, 12))) for _ in range(20_000)]
    for text in texts:
        got, want = parse_form(text), _want(text)
        assert got == want and list(got) == list(want), text


def test_the_unquoted_memory_is_bounded_and_keeps_only_short_texts(monkeypatch):
    monkeypatch.setattr(params, "_UNQUOTED", {})
    monkeypatch.setattr(params, "_UNQUOTED_MAX", 8)
    for i in range(20):
        assert parse_form(f"k=v%20{i}&long={'x%20' * 30}") == {"k": f"v {i}", "long": "x " * 30}
    assert 0 < len(params._UNQUOTED) <= 8
    assert all(len(text) <= params._UNQUOTED_LEN for text in params._UNQUOTED)
