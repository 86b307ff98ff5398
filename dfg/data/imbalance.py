"""Which training samples a run keeps: step imbalance (Buda et al.), the long-tailed exponential profile
(Cui et al., Cao et al.) or none; seeded draws, a stratified validation split, a balanced test cap, and
the enumeration of majority-class sets the paper sweeps ("all combinations" of k majority classes)."""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from ..config import CHOICES
from .registry import DataError

IMBALANCES = CHOICES["imbalance"]
SHORT_CLASSES = CHOICES["short_classes"]   # a class with fewer images than asked: stop, or keep all it has
# Independent streams per use, so e.g. changing val_fraction never changes which samples are kept.
_MAJORITY, _KEEP, _VAL, _TEST = 1, 2, 3, 4


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def per_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Count of each class 0..num_classes−1 (int64 num_classes)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]


def draw_majority(num_classes: int, k: int, seed: int) -> tuple[int, ...]:
    """A seeded draw of k distinct majority classes, sorted."""
    if not 1 <= k < num_classes:
        raise DataError(f"num_majority={k} is invalid: step imbalance needs 1 ≤ num_majority < {num_classes} "
                        f"(the number of classes)")
    return tuple(sorted(int(c) for c in _rng(seed, _MAJORITY).choice(num_classes, k, replace=False)))


def target_counts(available: Sequence[int], imbalance: str, *, ratio: float, n_max: int | None,
                  majority: Sequence[int] = (), class_names: Sequence[str] = (), dataset: str = "",
                  short_classes: str = "error", warnings: list[str] | None = None) -> list[int]:
    """How many training images each class keeps.

    step:     majority classes keep n_max, the others int(n_max / ratio) (at least 1)
    longtail: class c keeps round(n_max · ratio^(−c/(C−1))): class 0 has n_max, class C−1 n_max/ratio
    none:     every class keeps all it has (or n_max, if given, as a balanced cap)
    n_max None means the smallest per-class count available. A class that has fewer images than it is
    asked for stops here with a message (short_classes="error"), or keeps all it has ("all"; one line per
    such class is appended to `warnings`)."""
    if short_classes not in SHORT_CLASSES:
        raise DataError(f"short_classes={short_classes!r} is invalid: choose one of {', '.join(SHORT_CLASSES)}")
    available = [int(a) for a in available]
    c = len(available)
    if imbalance not in IMBALANCES:
        raise DataError(f"imbalance={imbalance!r} is invalid: choose one of {', '.join(IMBALANCES)}")
    if ratio < 1:
        raise DataError(f"ratio={ratio} is invalid: it is n_max / n_min and must be ≥ 1")
    if n_max is not None and n_max < 1:
        raise DataError(f"n_max={n_max} is invalid: it must be ≥ 1 (or None for the smallest class count)")
    top = min(available) if n_max is None else int(n_max)
    if imbalance == "none":
        counts = available if n_max is None else [min(a, top) for a in available]
    elif imbalance == "step":
        bad = [m for m in majority if not 0 <= m < c]
        if bad or len(set(majority)) != len(majority) or not 0 < len(majority) < c:
            raise DataError(f"majority={tuple(majority)} is invalid: give 1 to {c - 1} distinct class indices "
                            f"in 0..{c - 1}")
        minority = max(1, int(top / ratio + 1e-9))          # +1e-9: 6000/40 must give 150, not 149
        counts = [top if k in set(majority) else minority for k in range(c)]
    else:
        counts = [max(1, int(round(top * ratio ** (-k / (c - 1))))) for k in range(c)]
    counts = list(counts)
    for k, (want, have) in enumerate(zip(counts, available)):  # counts[k] changes after it is read
        if want <= have:
            continue
        name = f" ({class_names[k]!r})" if k < len(class_names) else ""
        if short_classes == "error":
            raise DataError(f"{dataset or 'dataset'}: {imbalance} imbalance asks for {want} training images of "
                            f"class {k}{name}, but only {have} are available; lower n_max to at most "
                            f"{min(available)} (or leave it unset), or set short_classes=all to keep all a "
                            f"short class has")
        counts[k] = have
        if warnings is not None:
            warnings.append(f"{dataset or 'dataset'}: class {k}{name} has {have} training images, fewer than the "
                            f"{want} its {imbalance} imbalance asks for; it keeps all {have} (short_classes=all)")
    return counts


def select_indices(labels: np.ndarray, counts: Sequence[int], seed: int) -> np.ndarray:
    """For each class c, counts[c] indices drawn without replacement by a seeded generator (not the first
    N in file order). Returns the kept indices, sorted (int64)."""
    labels = np.asarray(labels)
    rng = _rng(seed, _KEEP)
    kept = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        kept.append(idx[rng.permutation(len(idx))[:n]])    # one permutation per class, in class order
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)


def split_validation(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of the kept training indices: round(fraction · n_c) of each class go to
    validation, never a class's last training image. Returns (train, val), each sorted."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction={fraction} is invalid: it must lie in [0, 1)")
    indices = np.asarray(indices, dtype=np.int64)
    if fraction == 0.0:
        return indices, np.zeros(0, np.int64)
    labels = np.asarray(labels)[indices]
    rng = _rng(seed, _VAL)
    val = []
    for c in np.unique(labels):
        idx = indices[labels == c]
        n = min(int(round(fraction * len(idx))), len(idx) - 1)
        val.append(idx[rng.permutation(len(idx))[:n]])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(indices, val), val


def balanced_cap(labels: np.ndarray, limit: int, num_classes: int, seed: int) -> np.ndarray:
    """A seeded, class-balanced subset of at most `limit` indices (limit // C per class, the remainder
    to the first classes), for tiny test sets. Sorted int64."""
    labels = np.asarray(labels)
    rng = _rng(seed, _TEST)
    base, extra = divmod(int(limit), num_classes)
    out = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        out.append(idx[rng.permutation(len(idx))[:base + (c < extra)]])
    return np.sort(np.concatenate(out))


def majority_combinations(num_classes: int, k: int, sample: int | None = None, seed: int = 0
                          ) -> list[tuple[int, ...]]:
    """All C(num_classes, k) majority sets in lexicographic order, or a seeded sample of `sample` distinct
    ones (still listed in lexicographic order). The paper sweeps k = 2 and k = 8."""
    if not 1 <= k < num_classes:
        raise DataError(f"k={k} is invalid: choose 1 ≤ k < {num_classes} majority classes")
    total = math.comb(num_classes, k)
    if sample is None or sample >= total:
        return list(itertools.combinations(range(num_classes), k))
    if sample < 1:
        raise DataError(f"sample={sample} is invalid: it must be ≥ 1 (or None for all {total})")
    rng = _rng(seed, _MAJORITY)
    if total <= 200_000:                                    # small: pick positions in the full list
        pick = np.sort(rng.choice(total, sample, replace=False))
        everything = itertools.combinations(range(num_classes), k)
        want, out = iter(pick.tolist()), []
        nxt = next(want)
        for pos, combo in enumerate(everything):
            if pos == nxt:
                out.append(combo)
                nxt = next(want, None)
                if nxt is None:
                    break
        return out
    seen: set[tuple[int, ...]] = set()                      # huge (e.g. C(257, 8)): rejection sampling
    while len(seen) < sample:
        seen.add(tuple(sorted(int(c) for c in rng.choice(num_classes, k, replace=False))))
    return sorted(seen)
