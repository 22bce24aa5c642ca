"""The data stream of a run: a pure function of (seed, micro-step), so a step count is a data position.

Samples are drawn from an endless stream: position p is sample `perm_e[p mod N]` of epoch e = p // N, where
`perm_e` is a permutation seeded by (seed, e). Micro-step m of the run reads positions [m G, (m + 1) G) with G the
global micro-batch (batch_size x processes); process r reads its `batch_size` slice. One process with batch 2b
therefore sees exactly the samples that two processes with batch b see together, and a run resumed at step k reads
what an uninterrupted run reads after step k.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class StreamSampler(Sampler):
    """Batches of (stream position, dataset index) for one process, from micro-step `start` on, forever."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, num_processes: int = 1, rank: int = 0,
                 start: int = 0):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.num_processes = num_processes
        self.rank = rank
        self.start = start
        self._epoch = -1
        self._perm: list[int] = []

    def permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_samples, generator=generator).tolist()
            self._epoch = epoch
        return self._perm

    def index(self, position: int) -> int:
        return self.permutation(position // self.num_samples)[position % self.num_samples]

    def micro_batch(self, micro_step: int) -> list[tuple[int, int]]:
        first = (micro_step * self.num_processes + self.rank) * self.batch_size
        return [(position, self.index(position)) for position in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro_step = self.start
        while True:
            yield self.micro_batch(micro_step)
            micro_step += 1

    def __len__(self) -> int:  # endless; DataLoader only needs this for progress estimates
        return 2**62


class EncodedDataset(Dataset):
    """Reads `(position, index)` keys: sample `index` of `dataset`, passed through `encode`, tagged with its stream
    position as `sample_id`. With `cache`, encoded samples are kept in memory (datasets here are deterministic)."""

    def __init__(self, dataset: Dataset, encode: Callable[[dict[str, Any]], dict[str, Any]], cache: bool = False):
        self.dataset = dataset
        self.encode = encode
        self.cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        position, index = key if isinstance(key, tuple) else (key, key)
        if self.cache is not None and index in self.cache:
            encoded = self.cache[index]
        else:
            encoded = self.encode(self.dataset[index])
            if self.cache is not None:
                self.cache[index] = encoded
        return {**encoded, "sample_id": position}
