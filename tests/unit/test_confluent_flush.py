"""The confluent adapter's producers, without a broker: who serves the delivery reports, and a flush that
cannot finish says so when its time is up (core/adapters/confluent.py, module docstring)."""

from __future__ import annotations

import threading

import confluent_kafka as ck
import pytest

from core.adapters import confluent
from core.bus import ProducerSettings
from core.ports import free_port


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def test_a_plain_producer_flush_gives_up_at_its_timeout_naming_what_is_undelivered():
    prod = confluent.Producer(ProducerSettings(bootstrap=f"127.0.0.1:{free_port()}", linger_ms=5))  # nobody there
    try:
        assert "confluent-delivery" in _threads()   # a plain producer's reports are served by its own thread
        prod.send("t", b"v", key=b"k", partition=0)
        prod.send("t", b"w", key=b"k", partition=0)
        with pytest.raises(ck.KafkaException, match="2 message"):
            prod.flush(0.3)
    finally:
        prod._p.purge()   # the records could never go: let close() end instead of waiting for them
        prod.close()


def test_a_transactional_producer_leaves_its_reports_to_the_commit():
    before = _threads()
    prod = confluent.Producer(ProducerSettings(bootstrap=f"127.0.0.1:{free_port()}", linger_ms=5,
                                               transactional_id="test-no-thread"))
    try:
        assert _threads() - before == set(), "no thread of its own competes with commit_transaction's flush"
    finally:
        prod.close()
