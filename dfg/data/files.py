"""File-backed datasets too big to hold in memory: CINIC-10 (a folder tree), Caltech-256 (60 train /
20 test per category, seeded) and Food-101 (its official 750 / 250 split from meta/*.txt)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .raw import RawSplits
from .registry import DATASETS, DataError, missing_message

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
CINIC_URL = "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz"


def _images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


# -- CINIC-10 -------------------------------------------------------------------------------------------

def cinic_base(root: str | os.PathLike) -> Path:
    """<root>/cinic10, or <root>/cinic10/CINIC-10 if the archive was unpacked with its top folder."""
    base = Path(root) / "cinic10"
    return base / "CINIC-10" if not (base / "train").is_dir() and (base / "CINIC-10" / "train").is_dir() else base


def load_cinic10(root: str | os.PathLike) -> RawSplits:
    base = cinic_base(root)
    if not ((base / "train").is_dir() and (base / "test").is_dir()):
        raise DataError(missing_message("cinic10", Path(root) / "cinic10" / "train", root,
                                        "Layout: <root>/cinic10/{train,test}/<class>/*.png."))
    classes = tuple(sorted(d.name for d in (base / "train").iterdir() if d.is_dir()))
    if classes != DATASETS["cinic10"].class_names:
        raise DataError(f"cinic10: expected class folders {DATASETS['cinic10'].class_names} in {base / 'train'}, "
                        f"found {classes}; re-download with `python -m dfg data --download cinic10 --data-root {root}`")
    split = []
    for part in ("train", "test"):
        paths, labels = [], []
        for c, name in enumerate(classes):
            files = _images_in(base / part / name)
            paths += files
            labels += [c] * len(files)
        split += [paths, np.asarray(labels, dtype=np.int64)]
    return RawSplits(*split, classes)


def download_cinic10(root: str | os.PathLike) -> Path:
    from torchvision.datasets.utils import download_and_extract_archive

    base = Path(root) / "cinic10"
    download_and_extract_archive(CINIC_URL, download_root=str(base), filename="CINIC-10.tar.gz", remove_finished=True)
    return cinic_base(root)


# -- Caltech-256 ----------------------------------------------------------------------------------------

def load_caltech256(root: str | os.PathLike, seed: int, n_train: int = 60, n_test: int = 20) -> RawSplits:
    """n_train + n_test images per category, drawn with `seed` (the paper follows refs [30, 13]:
    60 train; 20 test). All 257 categories, clutter included, as the paper counts them."""
    base = Path(root) / "caltech256" / "256_ObjectCategories"
    if not base.is_dir():
        raise DataError(missing_message("caltech256", base, root,
                                        "Layout: <root>/caltech256/256_ObjectCategories/NNN.name/*.jpg."))
    folders = sorted(d for d in base.iterdir() if d.is_dir())
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCA1]))
    tr, ytr, te, yte, warnings = [], [], [], [], []
    for c, folder in enumerate(folders):
        files = _images_in(folder)
        perm = rng.permutation(len(files))
        if len(files) < n_train + n_test:
            warnings.append(f"caltech256: {folder.name} has {len(files)} images (< {n_train + n_test}); "
                            f"its test part is smaller")
        tr += [files[i] for i in perm[:n_train]]
        te += [files[i] for i in perm[n_train:n_train + n_test]]
        ytr += [c] * len(perm[:n_train])
        yte += [c] * len(perm[n_train:n_train + n_test])
    names = tuple(f.name.split(".", 1)[-1] for f in folders)     # "001.ak47" → "ak47"
    if len(names) != 257:
        warnings.append(f"caltech256: found {len(names)} categories in {base}, expected 257")
    return RawSplits(tr, np.asarray(ytr, np.int64), te, np.asarray(yte, np.int64), names, warnings)


# -- Food-101 -------------------------------------------------------------------------------------------

def load_food101(root: str | os.PathLike) -> RawSplits:
    base = Path(root) / "food101" / "food-101"
    meta = base / "meta"
    if not all((meta / f).is_file() for f in ("classes.txt", "train.txt", "test.txt")):
        raise DataError(missing_message("food101", meta / "train.txt", root,
                                        "Layout: <root>/food101/food-101/{images,meta}."))
    classes = tuple(line.strip() for line in (meta / "classes.txt").read_text().splitlines() if line.strip())
    index = {c: i for i, c in enumerate(classes)}
    split = []
    for part in ("train", "test"):                  # lines like "apple_pie/1005649" → images/apple_pie/1005649.jpg
        lines = [ln.strip() for ln in (meta / f"{part}.txt").read_text().splitlines() if ln.strip()]
        split += [[str(base / "images" / f"{ln}.jpg") for ln in lines],
                  np.asarray([index[ln.split("/")[0]] for ln in lines], dtype=np.int64)]
    return RawSplits(*split, classes)
