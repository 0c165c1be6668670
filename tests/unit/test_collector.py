"""core.collector: a settled process collects its young garbage less often and no longer walks what it froze."""

from __future__ import annotations

import gc

from core import collector


def test_settle_freezes_what_exists_and_raises_the_young_threshold():
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    try:
        with collector.settled():
            assert gc.get_threshold()[0] == max(collector.YOUNG_THRESHOLD, before[0])
            assert gc.get_threshold()[1:] == before[1:]
            assert gc.get_freeze_count() > frozen
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_cyclic_garbage_is_still_collected_once_settled():
    class Node:
        pass

    import weakref
    before = gc.get_threshold()
    try:
        collector.settle()
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None   # a cycle: reference counting alone does not free it
        gc.collect()
        assert gone() is None
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_every_component_process_is_settled_before_its_component_runs(monkeypatch):
    """cli.components.run_in_process (what `pandaes run` starts for each component) settles the collector once
    the component's imports are loaded: 12-16 % of the reactors' and the projector's CPU went to collections."""
    import signal

    from cli import components
    from core import config

    seen: dict[str, int] = {}

    def component(cfg, stop) -> None:
        seen.update(young=gc.get_threshold()[0], frozen=gc.get_freeze_count())

    monkeypatch.setattr(components, "resolve", lambda name: component)
    monkeypatch.setattr(components.metrics, "serve", lambda cfg, name: None)
    monkeypatch.setattr(components.watchdog, "allow_exit", lambda: None)
    before, handlers = gc.get_threshold(), {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        gc.unfreeze()
        gc.set_threshold(700, 10, 10)
        components.run_in_process("ledger", config.load())
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert seen["young"] == collector.YOUNG_THRESHOLD
    assert seen["frozen"] > 0
