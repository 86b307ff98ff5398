"""Reproducible batches: `BatchStream`, an endless stream whose batch k depends only on (seed, k), so a
resumed run jumps straight to batch k; and `iterate_batches`, one ordered pass for evaluation."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .images import TensorImages
from .registry import DataError
from .transforms import center_crop, crop_flip, to_float

_PERM, _AUG = 0x9E3, 0xA06   # stream tags: epoch permutations and augmentation draws never share seeds


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative ints (numpy's SeedSequence: nearby inputs → unrelated seeds)."""
    hi, lo = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(hi) << 31 ^ int(lo)) & (2**63 - 1)


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


class _Batches(Sampler):
    """Endless batch sampler for file-backed data, starting at batch `start`: lists of (index, aug_seed)."""

    def __init__(self, stream: "BatchStream", start: int):
        self.stream, self.start = stream, start

    def __iter__(self):
        k = self.start
        while True:
            base = derive_seed(self.stream.seed, _AUG, k)
            yield [(int(i), base + j) for j, i in enumerate(self.stream.indices(k))]
            k += 1


class BatchStream:
    """Endless shuffled batches of `dataset`, reproducible from (seed, number of batches drawn).

    Epoch e visits a permutation from a torch.Generator seeded by (seed, e); batch k is slice k mod E
    of it (E = len // batch_size: drop-last; a dataset smaller than batch_size gives whole-set batches);
    augmentation for batch k comes from a generator seeded by (seed, k). `state_dict()` is
    {"drawn": k} and `load_state_dict` jumps to batch k without drawing the earlier ones.
    TensorImages: uint8 gather + vectorised flip/crop + normalise on `device`, no DataLoader.
    File-backed: a DataLoader with this order (num_workers processes) and per-sample seeded augmentation."""

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, device: str | torch.device = "cpu",
                 num_workers: int = 0):
        n = len(dataset)
        if n == 0:
            raise DataError("cannot draw batches from an empty dataset")
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} is invalid: it must be ≥ 1")
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.device = torch.device(device)
        self.num_workers = num_workers
        self.batches_per_epoch = max(1, n // batch_size)
        self.drawn = 0
        self._perm: tuple[int, torch.Tensor] | None = None
        self._loader_iter: Iterator | None = None
        self._fast = isinstance(dataset, TensorImages)
        if self._fast:   # small uint8 tensors: keep them on the device once, gather there
            self._images = dataset.images.to(self.device)
            self._labels = dataset.labels.to(self.device)

    def indices(self, k: int) -> torch.Tensor:
        """Dataset indices of batch k (int64 B)."""
        epoch, j = divmod(k, self.batches_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self.dataset), generator=_generator(self.seed, _PERM, epoch)))
        return self._perm[1][j * self.batch_size:(j + 1) * self.batch_size]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number `drawn`: x float B×C×H×W in [−1, 1] and y int64 B, both on `device`."""
        k = self.drawn
        if self._fast:
            ds: TensorImages = self.dataset
            idx = self.indices(k).to(self.device)
            x = self._images[idx]                                        # uint8 B×C×H×W
            if ds.augment == "flipcrop":
                x = crop_flip(x, ds.crop, ds.pad, _generator(self.seed, _AUG, k))
            else:
                x = center_crop(x, ds.crop)
            batch = to_float(x), self._labels[idx]
        else:
            if self._loader_iter is None:
                loader = DataLoader(self.dataset, batch_sampler=_Batches(self, k), num_workers=self.num_workers,
                                    pin_memory=self.device.type == "cuda")
                self._loader_iter = iter(loader)
            x, y = next(self._loader_iter)
            batch = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.drawn += 1
        return batch

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = int(state["drawn"])
        self._loader_iter = None          # the next batch restarts the DataLoader at batch `drawn`


def iterate_batches(dataset: Dataset, batch_size: int, device: str | torch.device = "cpu",
                    num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One ordered pass, no augmentation (the last batch may be smaller): evaluation and filter-weight
    sampling. TensorImages are sliced directly; other datasets go through a DataLoader."""
    device = torch.device(device)
    if isinstance(dataset, TensorImages):
        for start in range(0, len(dataset), batch_size):
            x = dataset.images[start:start + batch_size].to(device)
            yield to_float(center_crop(x, dataset.crop)), dataset.labels[start:start + batch_size].to(device)
        return
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        yield x.to(device), torch.as_tensor(y).to(device)
