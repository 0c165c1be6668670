"""The simulated pilot's own form encoding sends what aiohttp's FormData (and so pilot3's form post) sends."""

from __future__ import annotations

import json

from aiohttp import FormData

from cli import simulated_pilot
from cli.simulated_pilot import FORM_TYPE, form_body, form_payload

FIELDS = {
    "jobId": 4242, "state": "finished", "timestamp": "2026-11-29T04:00:00+00:00", "siteName": "BENCH",
    "node": "sim-wn0003", "attemptNr": 1, "pilotID": "sim3|PR|3.7.0.36", "startTime": "1764390000.1234567",
    "coreCount": 1, "cpuConsumptionUnit": "s+simulated CPU", "mem": 24103.9, "workingGroup": "",
    "xml": json.dumps({"out.root": {"guid": "", "fsize": 38, "adler32": "06140c2a", "surl": "/sim/a b&c=d"}}),
    "exeErrorDiag": "OK é ✓ %20 ;/?#[]@!$'()*,", "metaData": json.dumps({"exitCode": 0}),
}


def test_form_body_is_formdata_byte_for_byte():
    """Every kind of value the pilot sends (numbers, blanks, JSON, reserved and non-ASCII characters)."""
    want = FormData({k: v if isinstance(v, str) else str(v) for k, v in FIELDS.items()})()
    assert form_body(FIELDS) == want._value
    assert form_body(FIELDS) == form_body(FIELDS)   # the second time from the quoted-text memory


def test_form_payload_has_formdatas_content_type():
    payload = form_payload({"a": "1"})
    assert payload.content_type == FORM_TYPE == FormData({"a": "1"})().content_type


def test_the_quoted_text_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(simulated_pilot, "_QUOTED", {})
    form_body({f"k{i}": "v" * 65 for i in range(20)})   # long values are never kept
    assert all(len(text) <= 64 for text in simulated_pilot._QUOTED)


def test_the_quoting_table_is_quote_plus():
    from urllib.parse import quote_plus

    texts = ["", "plain_text-1.2~", "a b+c&d=e/f?g#h%i", "é✓ \x00\x7f\x80", "".join(map(chr, range(0x250)))]
    for text in texts:
        assert simulated_pilot._quote_plus(text) == quote_plus(text)


def test_replies_decode_as_json_loads_does():
    for raw in (b'{"StatusCode": 0, "x": [1, 2.5, "\\u00e9", null, true]}', b'{"v": NaN}'):
        assert repr(simulated_pilot._decode(raw)) == repr(json.loads(raw))
    try:
        simulated_pilot._decode(b"alive=yes")
    except ValueError:
        pass
    else:
        raise AssertionError("a non-JSON reply must raise ValueError")
