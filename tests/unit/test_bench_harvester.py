"""The bulk workload's steady rate: the middle of the finish times, without the run's head and tail."""

from __future__ import annotations

from bench.harvester import middle_rate


def test_middle_rate_leaves_out_a_slow_head_and_tail():
    head = [0.0] * 10 + [5.0 + i * 0.001 for i in range(80)]     # 80 jobs in 80 ms after a 5 s start
    tail = [20.0] * 10                                              # the last ones much later
    assert round(middle_rate(head + tail)) == 1000
    assert middle_rate([]) == 0.0 and middle_rate([3.0] * 50) == 0.0
