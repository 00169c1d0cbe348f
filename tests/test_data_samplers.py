"""The DDP validation sampler: every index exactly once over the ranks, no padding."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader, DistributedSampler

from src.data.samplers import UnpaddedDistributedSampler


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("size", [0, 1, 5, 8, 13, 100])
def test_ranks_together_see_every_index_exactly_once(world: int, size: int) -> None:
    data = list(range(size))
    per_rank = [
        list(UnpaddedDistributedSampler(data, num_replicas=world, rank=r)) for r in range(world)
    ]
    assert sorted(i for indices in per_rank for i in indices) == data
    for r, indices in enumerate(per_rank):
        assert indices == [i for i in data if i % world == r]  # r, r+W, r+2W, ...
        assert len(UnpaddedDistributedSampler(data, num_replicas=world, rank=r)) == len(indices)
    assert max(map(len, per_rank), default=0) - min(map(len, per_rank), default=0) <= 1


def test_torch_distributed_sampler_would_count_samples_twice() -> None:
    """The reason for the sampler: torch's pads 10 samples on 4 ranks to 12, repeating two."""
    data = list(range(10))
    padded = [
        i for r in range(4) for i in DistributedSampler(data, num_replicas=4, rank=r, shuffle=False)
    ]
    ours = [i for r in range(4) for i in UnpaddedDistributedSampler(data, num_replicas=4, rank=r)]
    assert len(padded) == 12 and len(set(padded)) == 10
    assert len(ours) == 10 and set(ours) == set(data)


def test_batches_over_ranks_cover_the_dataset_once() -> None:
    data = list(range(11))
    seen = [
        int(x)
        for r in range(3)
        for batch in DataLoader(
            data, batch_size=2, sampler=UnpaddedDistributedSampler(data, num_replicas=3, rank=r)
        )
        for x in batch
    ]
    assert sorted(seen) == data


def test_it_is_a_distributed_sampler_with_set_epoch() -> None:
    """Lightning leaves DistributedSampler instances alone and calls set_epoch on them."""
    sampler = UnpaddedDistributedSampler(list(range(6)), num_replicas=2, rank=1)
    assert isinstance(sampler, DistributedSampler)
    sampler.set_epoch(3)  # no effect on the order: validation is not shuffled
    assert list(sampler) == [1, 3, 5]
