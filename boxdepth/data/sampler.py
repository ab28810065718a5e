"""Deterministic, resumable, rank-sharded sampling for iteration-based training.

`TrainingSampler` yields an endless stream of ``(index, sample_seed)`` pairs: epoch e is
a permutation drawn from ``seed + e``; rank r of W takes every W-th element, so the W
ranks together see each image once per epoch (what DistributedSampler does, but
endless). `sample_seed` seeds that sample's random transforms, so the same iteration
gets the same augmentation whether the run was resumed or not. `start` skips the first
`start` elements of this rank's stream (iteration * images per rank when resuming).

`SeededDataset` wraps a dataset whose random transforms draw from `generator` and
re-seeds that generator from the pair before each load.
"""
from __future__ import annotations

import itertools
from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler


class TrainingSampler(Sampler):
    def __init__(self, size: int, *, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, start: int = 0):
        if size <= 0:
            raise ValueError("TrainingSampler needs a non-empty dataset")
        self.size, self.seed, self.shuffle = size, int(seed), shuffle
        self.rank, self.world_size, self.start = rank, world_size, int(start)

    def _global_stream(self) -> Iterator[tuple[int, int]]:
        for epoch in itertools.count():
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
            seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=g)
            yield from zip(order.tolist(), seeds.tolist())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = itertools.islice(self._global_stream(), self.rank, None, self.world_size)
        return itertools.islice(mine, self.start, None)


class SeededDataset(Dataset):
    def __init__(self, dataset: Dataset, generator: torch.Generator):
        self.dataset, self.generator = dataset, generator

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        self.generator.manual_seed(int(seed))
        return self.dataset[index]
