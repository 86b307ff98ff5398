"""`RawSplits`, what every loader returns: native uint8 arrays or file paths with int64 labels for the
official train and test splits, before imbalance sampling and backbone adaptation."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RawSplits:
    train_items: np.ndarray | list[str]   # uint8 N×H×W (gray) or N×H×W×3 (RGB), or N file paths
    train_labels: np.ndarray              # int64 N, values in 0..C−1
    test_items: np.ndarray | list[str]
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)   # e.g. skipped unreadable files

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train_items, np.ndarray)


def fixed_split(labels: np.ndarray, test_per_class, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class train/test split for sets without an official one (mnist5k, digits, folders). `seed` is a
    constant of the dataset, not the run seed, so every run and every repeat sees the same test set.
    test_per_class: an int, or a float fraction of each class. Returns sorted (train, test) indices."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E7]))
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = test_per_class if isinstance(test_per_class, int) else int(round(test_per_class * len(idx)))
        n = min(max(n, 1), len(idx) - 1)                  # every class keeps ≥ 1 image on each side
        perm = rng.permutation(len(idx))
        test.append(idx[perm[:n]])
        train.append(idx[perm[n:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
