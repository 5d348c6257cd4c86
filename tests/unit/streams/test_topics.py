"""streams.topics.partition_of: Kafka's default partitioner, in C."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from streams.topics import partition_of


def test_partition_of_is_aiokafkas_default_partitioner() -> None:
    rng = random.Random(17)
    partitioner = DefaultPartitioner()
    keys = [rng.randbytes(rng.randint(0, 64)) for _ in range(5000)]
    keys += [f"user-{i}".encode() for i in range(5000)] + ["utilisateur-é-🙂".encode()]
    for count in (1, 2, 3, 8, 12, 64):
        partitions = list(range(count))
        assert [partition_of(key, count) for key in keys] == [
            partitioner(key, partitions, partitions) for key in keys]
