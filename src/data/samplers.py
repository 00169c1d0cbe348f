"""DDP samplers: validation that counts every sample exactly once."""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler


class UnpaddedDistributedSampler(DistributedSampler):
    """Rank r of W gets indices r, r+W, r+2W, ...: every sample exactly once, in order, no padding.

    torch's DistributedSampler pads the dataset with duplicates so every rank gets as many samples,
    which counts those samples twice in a validation metric; here ranks may differ by one sample.
    A DistributedSampler subclass, so Lightning never wraps it in another one.
    """

    def __init__(
        self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False
        )
        self.total_size = len(dataset)
        self.num_samples = len(range(self.rank, self.total_size, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
