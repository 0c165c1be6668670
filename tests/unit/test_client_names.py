"""Every Kafka client a process makes carries its component's name, so a broker's request log says who asked."""

from __future__ import annotations

from typing import Any

import pytest

from core import bus, config


class _Recorder:
    """An adapter that records the settings it is given instead of reaching a broker."""

    def __init__(self) -> None:
        self.settings: list[Any] = []

    def producer(self, settings: Any) -> Any:
        self.settings.append(settings)
        return object()

    transactional_producer = producer
    consumer = producer


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    rec = _Recorder()
    monkeypatch.setattr(bus, "adapter", lambda cfg: rec)
    monkeypatch.setattr(bus, "_client_id", "pandaes")   # undone after the test
    return rec


def test_clients_are_named_after_the_component(recorder: _Recorder) -> None:
    cfg = config.load({})
    bus.name_clients("ledger")
    bus.producer(cfg)
    bus.producer(cfg, transactional_id="pandaes-ledger-0")
    bus.consumer(cfg, group_id=None)
    assert [s.client_id for s in recorder.settings] == ["pandaes-ledger"] * 3
    assert bus.client_id() == "pandaes-ledger"


def test_unnamed_process_keeps_the_project_name(recorder: _Recorder) -> None:
    bus.producer(config.load({}))
    assert recorder.settings[0].client_id == "pandaes"


def test_characters_kafka_refuses_are_replaced() -> None:
    before = bus.client_id()
    try:
        bus.name_clients("gateway 0/ü")
        assert bus.client_id() == "pandaes-gateway_0__"
    finally:
        bus._client_id = before
