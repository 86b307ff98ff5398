"""`build_data` (a target: imbalanced train, optional val, full test) and `build_source_data` (a balanced
source for pretraining), both returning a `DataBundle` of datasets already adapted to the backbone."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .images import FileImages, TensorImages
from .imbalance import balanced_cap, draw_majority, per_class, select_indices, split_validation, target_counts
from .raw import RawSplits
from .registry import DataError, get_spec
from .transforms import BackboneInput, adapt_array, backbone_input

GLYPHS_TRAIN, GLYPHS_TEST = (10_000, 0), (2_000, 1)   # (n, generation seed): fixed, like an official split


@dataclass
class DataBundle:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None
    test: torch.utils.data.Dataset
    num_classes: int
    class_names: tuple[str, ...]
    in_channels: int                  # what the backbone's first conv gets
    image_size: int                   # side the network sees (32, or 224 for ResNet-50)
    majority: tuple[int, ...]         # step imbalance's majority classes; () when balanced or long-tailed
    class_counts: list[dict]          # per class: class, name, available, kept (= in train), val, test
    warnings: list[str] = field(default_factory=list)
    dataset: str = ""
    backbone: str = ""

    def summary(self) -> dict:
        """JSON-ready record for a run folder: sizes, majority set, class counts, warnings."""
        return dict(dataset=self.dataset, backbone=self.backbone, num_classes=self.num_classes,
                    in_channels=self.in_channels, image_size=self.image_size, majority=list(self.majority),
                    train=len(self.train), val=len(self.val) if self.val is not None else 0,
                    test=len(self.test), class_counts=self.class_counts, warnings=list(self.warnings))


def _take(items, idx: np.ndarray):
    return items[idx] if isinstance(items, np.ndarray) else [items[i] for i in idx]


def _dataset(items, labels: np.ndarray, inp: BackboneInput, train: bool):
    """Arrays bound for 32 px go in memory (TensorImages). Files, and arrays bound for ResNet-50's 256 px
    (196 kB per image at 3×256×256: 10,000 glyphs would take 2 GB), are decoded per sample (FileImages)."""
    labels = np.asarray(labels, dtype=np.int64)
    if isinstance(items, np.ndarray) and inp.size == inp.crop:
        augment = inp.train_augment if train else None
        return TensorImages(adapt_array(items, inp), torch.from_numpy(labels), augment, pad=inp.pad)
    return FileImages(items, labels, inp, train)


def _concat(a: RawSplits, b: RawSplits) -> RawSplits:
    """Two in-memory gray digit sets with the same classes, concatenated (glyphs+mnist5k)."""
    def pad32(x):   # MNIST's 28×28 zero-padded to the glyphs' 32×32 (the paper's recipe)
        return np.pad(x, [(0, 0), (2, 2), (2, 2)]) if x.shape[1:] == (28, 28) else x
    cat = lambda x, y: np.concatenate([pad32(x), pad32(y)])
    return RawSplits(cat(a.train_items, b.train_items), np.concatenate([a.train_labels, b.train_labels]),
                     cat(a.test_items, b.test_items), np.concatenate([a.test_labels, b.test_labels]),
                     a.class_names, a.warnings + b.warnings)


def load_raw(name: str, root: str | os.PathLike | None, *, download: bool = False, seed: int = 0,
             glyphs_train: int | None = None, folder: str | None = None, inp: BackboneInput | None = None,
             backbone: str = "", image_size: int | None = None, grayscale: bool | None = None) -> RawSplits:
    """The official train and test splits of `name`, native (before imbalance and adaptation). With
    download=True, missing files are fetched (and only then: present files are never re-fetched)."""
    spec = get_spec(name)
    args = dict(seed=seed, glyphs_train=glyphs_train, folder=folder, inp=inp, backbone=backbone,
                image_size=image_size, grayscale=grayscale)
    try:
        return _load(name, root, **args)
    except DataError:
        if not (download and spec.subdir):
            raise
    from .download import download_dataset

    download_dataset(name, "data" if root is None else root)
    return _load(name, root, **args)


def _load(name, root, *, seed, glyphs_train, folder, inp, backbone, image_size, grayscale) -> RawSplits:
    from . import files, offline, torchvision_sets
    from .glyphs import load_glyphs

    if name == "folder":   # root None = no containment check; anything else is the allowed root
        return _folder(folder, root, inp, backbone, image_size, grayscale)
    root = "data" if root is None else root

    if name == "glyphs":
        cache = Path(root) / "glyphs" if Path(root).is_dir() else None   # never create the data root for a cache
        xtr, ytr = load_glyphs(glyphs_train or GLYPHS_TRAIN[0], GLYPHS_TRAIN[1], cache)
        xte, yte = load_glyphs(*GLYPHS_TEST, cache)
        return RawSplits(xtr, ytr, xte, yte, get_spec("glyphs").class_names)
    if name == "glyphs+mnist5k":
        glyphs = _load("glyphs", root, seed=seed, glyphs_train=glyphs_train, folder=None, inp=None, backbone="",
                       image_size=None, grayscale=None)
        return _concat(glyphs, offline.load_mnist5k())
    loaders = {
        "mnist5k": offline.load_mnist5k, "digits": offline.load_digits,
        "fmnist": lambda: offline.load_fmnist(root),
        "cinic10": lambda: files.load_cinic10(root), "food101": lambda: files.load_food101(root),
        "caltech256": lambda: files.load_caltech256(root, seed),
    }
    if name in loaders:
        return loaders[name]()
    return torchvision_sets.load_torchvision(name, root)


def _folder(folder, root, inp, backbone, image_size, grayscale) -> RawSplits:
    from .folder import load_folder

    if not folder:
        raise DataError("dataset 'folder' needs folder=<path to <class>/<image> sub-folders> (--folder)")
    return load_folder(folder, root, inp, backbone, image_size, grayscale)


def _counts(names, available, train_labels, val_labels, test_labels) -> list[dict]:
    c = len(names)
    kept, val, test = (per_class(y, c) for y in (train_labels, val_labels, test_labels))
    return [dict({"class": k}, name=names[k], available=int(available[k]), kept=int(kept[k]), val=int(val[k]),
                 test=int(test[k])) for k in range(c)]


def build_data(dataset: str, *, backbone: str, root: str | None = "data", seed: int = 0,
               imbalance: str = "step", ratio: float = 10.0, n_max: int | None = None, num_majority: int = 2,
               majority: tuple[int, ...] | None = None, val_fraction: float = 0.0, download: bool = False,
               folder: str | None = None, image_size: int | None = None, grayscale: bool | None = None,
               limit_test: int | None = None, short_classes: str = "error") -> DataBundle:
    """A target task: the training split made imbalanced (seeded), an optional stratified validation split
    carved from it, and the full official test set (or a seeded balanced cap of `limit_test`).
    n_max (None or 0) = the smallest per-class count available; majority None = a seeded draw of
    num_majority classes. short_classes: what a class with fewer images than asked does (imbalance.target_counts).
    For dataset="folder", root may be None to allow a folder anywhere."""
    spec = get_spec(dataset)
    inp = backbone_input(backbone)
    if dataset == "folder":
        from .folder import folder_input

        inp = folder_input(inp, backbone, image_size, grayscale)
    elif grayscale:
        inp = replace(inp, gray=True)
    raw = load_raw(dataset, root, download=download, seed=seed, folder=folder, inp=inp, backbone=backbone,
                   image_size=image_size, grayscale=grayscale)
    names, c = raw.class_names, len(raw.class_names)
    ytr, yte = raw.train_labels, raw.test_labels
    available = per_class(ytr, c)
    if imbalance == "step":
        if majority is None or len(majority) == 0:
            majority = draw_majority(c, num_majority, seed)
        majority = tuple(sorted(int(m) for m in majority))
    else:
        majority = ()
    warnings = list(raw.warnings)
    counts = target_counts(available, imbalance, ratio=ratio, n_max=n_max or None, majority=majority,
                           class_names=names, dataset=spec.name, short_classes=short_classes, warnings=warnings)
    kept = select_indices(ytr, counts, seed)
    tr, va = split_validation(kept, ytr, val_fraction, seed)
    te = np.arange(len(yte)) if not limit_test or limit_test >= len(yte) else balanced_cap(yte, limit_test, c, seed)
    untested = [names[k] for k in range(c) if not (yte[te] == k).any()]
    if untested:
        warnings.append(f"{len(untested)} of {c} classes have no test images ({', '.join(untested[:5])}"
                        f"{', …' if len(untested) > 5 else ''}): balanced accuracy, macro-F1 and minority recall "
                        f"cover only the classes tested"
                        + (f"; use limit_test >= {c} (or 0: the whole test set)" if limit_test else ""))
    train = _dataset(_take(raw.train_items, tr), ytr[tr], inp, train=True)
    val = _dataset(_take(raw.train_items, va), ytr[va], inp, train=False) if len(va) else None
    test = _dataset(_take(raw.test_items, te), yte[te], inp, train=False)
    return DataBundle(train, val, test, c, tuple(names), inp.channels, inp.crop, majority,
                      _counts(names, available, ytr[tr], ytr[va], yte[te]), warnings, dataset, backbone)


def build_source_data(source: str, *, backbone: str, root: str | None = "data", seed: int = 0,
                      download: bool = False, n_per_class: int | None = None) -> DataBundle:
    """A balanced source task for pretraining E_S/C_S: n_per_class images per class drawn with `seed`
    (None = all), and the source's own test split. Glyphs are generated to size (n_per_class × 10);
    glyphs+mnist5k = n_per_class glyphs per class plus all of MNIST 5k's 400 per class."""
    spec = get_spec(source)
    if source == "folder":
        raise DataError("'folder' cannot be a pretraining source here; use build_data for your own images")
    inp = backbone_input(backbone)
    glyphs_train = 10 * n_per_class if n_per_class and source in ("glyphs", "glyphs+mnist5k") else None
    raw = load_raw(source, root, download=download, seed=seed, glyphs_train=glyphs_train)
    names, c = raw.class_names, len(raw.class_names)
    ytr, yte = raw.train_labels, raw.test_labels
    available = per_class(ytr, c)
    warnings = list(raw.warnings)
    if n_per_class and not glyphs_train:
        if n_per_class > available.min():
            warnings.append(f"{source}: asked for {n_per_class} images per class, the smallest class has "
                            f"{available.min()}; those classes use all they have")
        counts = [min(int(a), n_per_class) for a in available]
        tr = select_indices(ytr, counts, seed)
    else:
        tr = np.arange(len(ytr))
    train = _dataset(_take(raw.train_items, tr), ytr[tr], inp, train=True)
    test = _dataset(raw.test_items, yte, inp, train=False)
    return DataBundle(train, None, test, c, tuple(names), inp.channels, inp.crop, (),
                      _counts(names, available, ytr[tr], ytr[:0], yte), warnings, spec.name, backbone)
