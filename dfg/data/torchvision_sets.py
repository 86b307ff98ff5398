"""In-memory datasets that torchvision reads (SVHN, STL-10, CIFAR-10, EMNIST digits), each under
<root>/<name>; a missing set is a DataError naming the path and the download command, never a
silent download."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .raw import RawSplits
from .registry import DATASETS, DataError, missing_message

# name → (folder under the data root, files torchvision needs inside it, torchvision class name)
TORCHVISION_FILES = {
    "svhn": ("svhn", ("train_32x32.mat", "test_32x32.mat"), "SVHN"),
    "stl10": ("stl10", ("stl10_binary/train_X.bin", "stl10_binary/test_X.bin"), "STL10"),
    "cifar10": ("cifar10", ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"), "CIFAR10"),
    "emnist": ("emnist", ("EMNIST/raw/emnist-digits-train-images-idx3-ubyte",
                          "EMNIST/raw/emnist-digits-test-images-idx3-ubyte"), "EMNIST"),
}


def expected_path(name: str, root: str | os.PathLike) -> Path:
    folder, files, _ = TORCHVISION_FILES[name]
    return Path(root) / folder / files[0]


def _tv(name: str, root: str | os.PathLike, train: bool, download: bool):
    import torchvision.datasets as tvd

    folder, _, cls = TORCHVISION_FILES[name]
    where = str(Path(root) / folder)
    split = "train" if train else "test"
    if name == "emnist":
        return tvd.EMNIST(where, split="digits", train=train, download=download)
    if name == "cifar10":
        return tvd.CIFAR10(where, train=train, download=download)
    return getattr(tvd, cls)(where, split=split, download=download)


def download_torchvision(name: str, root: str | os.PathLike) -> Path:
    """Fetch `name` with torchvision into <root>/<name> (both splits); returns that folder."""
    for train in (True, False):
        _tv(name, root, train, download=True)
    return Path(root) / TORCHVISION_FILES[name][0]


def load_torchvision(name: str, root: str | os.PathLike) -> RawSplits:
    """Both official splits as native arrays: N×H×W (EMNIST) or N×H×W×3, and int64 labels."""
    folder, files, _ = TORCHVISION_FILES[name]
    base = Path(root) / folder
    if not all((base / f).is_file() for f in files):
        raise DataError(missing_message(name, expected_path(name, root), root))
    return _load_cached(name, str(Path(root).resolve()))


@functools.lru_cache(maxsize=2)
def _load_cached(name: str, root: str) -> RawSplits:
    splits = []
    for train in (True, False):
        try:
            ds = _tv(name, root, train, download=False)
        except (RuntimeError, OSError, ValueError) as e:
            raise DataError(f"dataset {name!r}: files under {Path(root) / TORCHVISION_FILES[name][0]} are "
                            f"incomplete or corrupted ({e}); delete that folder and run "
                            f"`python -m dfg data --download {name} --data-root {root}`") from None
        splits.append(_arrays(name, ds))
    (xtr, ytr), (xte, yte) = splits
    return RawSplits(xtr, ytr, xte, yte, DATASETS[name].class_names)


def _arrays(name: str, ds) -> tuple[np.ndarray, np.ndarray]:
    if name in ("svhn", "stl10"):               # data N×3×H×W, labels (SVHN's '10' is already 0)
        x = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 2, 3, 1))
        y = np.asarray(ds.labels, dtype=np.int64)
    elif name == "cifar10":                     # data N×32×32×3
        x, y = np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)
    else:                                       # EMNIST N×28×28, stored transposed: flip back to upright
        x = np.ascontiguousarray(ds.data.numpy().transpose(0, 2, 1))
        y = ds.targets.numpy().astype(np.int64)
    return x, y
