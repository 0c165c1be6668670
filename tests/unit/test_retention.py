"""The retention decision behind the start check (core.retention): pure, no broker."""

from __future__ import annotations

import pytest

from core.retention import FOREVER, retention_problem


def test_infinite_retention_is_accepted():
    assert retention_problem("evt", {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}) is None
    assert retention_problem("evt", FOREVER) is None


def test_unknown_configuration_is_not_a_refusal():
    assert retention_problem("evt", None) is None


@pytest.mark.parametrize(("configs", "named"), [
    ({"retention.ms": "604800000", "retention.bytes": "-1"}, "retention.ms=604800000"),
    ({"retention.ms": "-1", "retention.bytes": "1073741824"}, "retention.bytes=1073741824"),
    ({"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "compact"}, "cleanup.policy=compact"),
    ({"retention.ms": "bogus", "retention.bytes": "-1"}, "retention.ms=bogus"),
])
def test_lossy_retention_is_refused_with_the_fix(configs, named):
    problem = retention_problem("panda.job-events", configs, "kafka1:9092")
    assert problem is not None and named in problem
    assert ("kafka-configs.sh --bootstrap-server kafka1:9092 --alter --entity-type topics "
            "--entity-name panda.job-events --add-config retention.ms=-1,retention.bytes=-1") in problem


def test_compaction_only_is_refused_even_with_infinite_retention():
    assert retention_problem("evt", {"cleanup.policy": "compact", "retention.ms": "-1"}) is not None
