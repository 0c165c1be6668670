"""The component processes' garbage collector settings (cli/garbage_collector.py)."""

from __future__ import annotations

import gc

import pytest

from cli import garbage_collector
from core import config


@pytest.fixture
def restored_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_freezes_what_is_alive_and_collects_the_young_generation_less_often(restored_gc):
    gc.unfreeze()
    alive = [object() for _ in range(10)]   # noqa: F841 — something alive to freeze, whatever the suite left
    garbage_collector.tune(20000)
    assert gc.get_threshold() == (20000, garbage_collector.OLDER, garbage_collector.OLDER)
    assert gc.get_freeze_count() > 0


def test_zero_leaves_pythons_defaults_alone(restored_gc):
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    garbage_collector.tune(0)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_reference_cycles_are_still_collected(restored_gc):
    garbage_collector.tune(20000)

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2


def test_the_default_configuration_tunes_the_component_processes():
    assert config.load().process.gc_young > 700
