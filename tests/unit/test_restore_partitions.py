"""cli/restore.py: a restore into topics of another partition count names the count the archive was written with."""

from __future__ import annotations

from cli.restore import counts_written_with
from core.bus import partition_of


def test_the_count_an_archive_was_written_with_is_found_from_its_pairs():
    pairs = [(pid, partition_of(pid, 8)) for pid in range(1000, 1200)]
    fits = counts_written_with(pairs)
    assert fits[0] == 8
    assert 4 not in fits


def test_pairs_no_count_explains_give_none():
    assert counts_written_with([(1, 0), (1, 1)]) == []   # one job in two partitions: no count maps it so
