"""core.bus.partition_of without a broker: Kafka's murmur2 partitioner, written in pandaes.

That it agrees with where both real clients put keyed records is shown against the broker in
tests/integration/test_bus_contract.py; here, the hash against the reference values Kafka's own tests
use, and the properties the ledger relies on.
"""

from __future__ import annotations

import pytest

from core.bus import murmur2, partition_for_key, partition_of
from schemas.messages import key_of

# (key, signed 32-bit murmur2) as Kafka's Java implementation computes them
REFERENCE = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("key", "expected"), REFERENCE)
def test_murmur2_matches_kafka_reference_values(key: bytes, expected: int):
    assert murmur2(key) == expected & 0xFFFFFFFF


def test_every_tail_length_is_hashed_and_result_is_32_bit():
    hashes = {murmur2(b"x" * n) for n in range(0, 12)}
    assert len(hashes) == 12
    assert all(0 <= h < 2**32 for h in hashes)


def test_partition_of_is_the_partitioner_on_the_job_key():
    for pid in (1, 7, 4242, 10**9 + 7):
        for n in (1, 3, 8, 16):
            p = partition_of(pid, n)
            assert 0 <= p < n
            assert p == partition_for_key(key_of(pid), n) == (murmur2(key_of(pid)) & 0x7FFFFFFF) % n
    assert {partition_of(pid, 8) for pid in range(1, 200)} == set(range(8))   # keys spread over all partitions
