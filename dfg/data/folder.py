"""Your own images: an ImageFolder tree <folder>/<class>/<image> (optionally <folder>/{train,test}/<class>/…).
Every file is decoded once up front, so unreadable, truncated and non-image files are skipped (and counted
in a warning), and too few classes, empty classes or a size the backbone cannot take fail before training."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from .files import IMAGE_EXTENSIONS
from .images import describe_path, open_image
from .raw import RawSplits, fixed_split
from .registry import DataError
from .transforms import BackboneInput, resize_image, to_mode

MEMORY_LIMIT = 1 << 30      # bytes of uint8 pixels at the stored size; bigger folders are read per batch
TEST_FRACTION = 0.2         # held out per class when the folder has no train/ and test/ sub-trees
_SPLIT_SEED = 2021          # constant: the held-out test set must not change with the run seed


def resolve_folder(folder: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    """The folder as an absolute path. A relative path is taken from the current directory, else from
    the data root. With a root, the resolved path (symlinks followed) must lie inside it: no `..` escapes."""
    p = Path(folder).expanduser()
    if not p.is_absolute():
        p = p if p.exists() or root is None else Path(root) / p
    resolved = p.resolve()
    if root is not None:
        base = Path(root).expanduser().resolve()
        if resolved != base and base not in resolved.parents:
            raise DataError(f"folder {os.fspath(folder)!r} resolves to {resolved}, outside the allowed data root "
                            f"{base}; move or copy it under {base}, or set the data root (--data-root) to a "
                            f"folder that contains it")
    if not resolved.is_dir():
        raise DataError(f"folder {resolved} does not exist or is not a directory; expected "
                        f"{resolved}/<class>/<image files>")
    return resolved


def folder_input(spec: BackboneInput, backbone: str, image_size: int | None, grayscale: bool | None) -> BackboneInput:
    """The backbone's input spec with the user's choices checked: LeNet and VGG-16 take 32×32;
    ResNet-50 takes 256 (random/centre crop 224). grayscale=True with an RGB backbone replicates gray."""
    size = image_size or spec.size
    if size != spec.size:
        crop = f" (then cropped to {spec.crop})" if spec.crop != spec.size else ""
        raise DataError(f"image_size={image_size} does not fit backbone {backbone}: it takes {spec.size}×{spec.size} "
                        f"images{crop}; use image_size={spec.size} (or leave it unset), or pick another backbone")
    return replace(spec, gray=bool(grayscale) or spec.channels == 1)


def _root(root: str | os.PathLike | None) -> Path | None:
    return None if root is None else Path(root).expanduser().resolve()


def _class_dirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _candidates(class_dir: Path, inside: Path | None = None) -> list[Path]:
    """Files under a class folder; with `inside`, a file whose real path (symlinks followed) lies
    outside that folder is left out, so a link cannot pull in data from beyond the data root."""
    out = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    if inside is not None:
        out = [f for f in out if inside in f.resolve().parents]
    return out


def load_folder(folder: str | os.PathLike, root: str | os.PathLike | None, spec: BackboneInput,
                backbone: str = "", image_size: int | None = None, grayscale: bool | None = None) -> RawSplits:
    """Read and check the whole tree. Small trees come back as uint8 arrays already at the backbone's
    size (gray N×S×S or RGB N×S×S×3); big trees, and every tree for ResNet-50, as file paths."""
    path = resolve_folder(folder, root)
    spec = folder_input(spec, backbone, image_size, grayscale)
    split_dirs = (path / "train").is_dir() and (path / "test").is_dir()
    parts = {"train": path / "train", "test": path / "test"} if split_dirs else {"all": path}
    classes = tuple(d.name for d in _class_dirs(parts.get("train", path)))
    if len(classes) < 2:
        where = parts.get("train", path)
        raise DataError(f"folder {where} has {len(classes)} class sub-folder(s) {list(classes)}; a classifier needs "
                        f"at least 2: {where}/<class>/<image files>")
    if split_dirs:
        only_test = sorted({d.name for d in _class_dirs(parts["test"])} - set(classes))
        if only_test:  # their images would silently be left out of the test set
            raise DataError(f"folder {parts['test']} has class sub-folder(s) {only_test} that {parts['train']} lacks; "
                            "add them to train/ or remove them from test/")
    files = {part: [(f, c) for c, name in enumerate(classes) for f in _candidates(p / name, _root(root))]
             for part, p in parts.items()}
    n = sum(len(v) for v in files.values())
    channels = 1 if spec.gray else 3
    in_memory = backbone != "resnet50" and n * channels * spec.size ** 2 <= MEMORY_LIMIT

    skipped: list[str] = []
    decoded = {}
    for part, entries in files.items():
        keep, pixels, labels = [], [], []
        for f, c in entries:
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(describe_path(f))
                continue
            try:
                img = resize_image(to_mode(open_image(f, spec.size, channels), channels), spec.size)
            except Exception:   # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError…
                skipped.append(describe_path(f))
                continue
            keep.append(str(f))
            labels.append(c)
            if in_memory:
                pixels.append(np.asarray(img, dtype=np.uint8))
        items = np.stack(pixels) if in_memory and pixels else keep
        decoded[part] = (items, np.asarray(labels, dtype=np.int64))

    for part, (_, labels) in decoded.items():
        counts = np.bincount(labels, minlength=len(classes))
        for c in np.flatnonzero(counts == 0):
            where = parts[part] / classes[c]
            raise DataError(f"class {classes[c]!r} has no readable images in {where}; add images or remove "
                            f"the folder")

    warnings = []
    if skipped:
        shown = ", ".join(skipped[:5]) + (f", … ({len(skipped) - 5} more)" if len(skipped) > 5 else "")
        warnings.append(f"skipped {len(skipped)} unreadable or non-image files: {shown}")
    if split_dirs:
        (xtr, ytr), (xte, yte) = decoded["train"], decoded["test"]
    else:
        items, labels = decoded["all"]
        small = [classes[c] for c in np.flatnonzero(np.bincount(labels, minlength=len(classes)) < 2)]
        if small:
            raise DataError(f"classes {small} in {path} have a single readable image; each class needs at least 2 "
                            f"(one to train, one to test), or give {path}/train and {path}/test sub-trees")
        tr, te = fixed_split(labels, TEST_FRACTION, _SPLIT_SEED)
        pick = (lambda idx: items[idx]) if isinstance(items, np.ndarray) else (lambda idx: [items[i] for i in idx])
        xtr, ytr, xte, yte = pick(tr), labels[tr], pick(te), labels[te]
        warnings.append(f"{path} has no train/ and test/ sub-folders: held out {int(TEST_FRACTION * 100)} % of "
                        f"each class as the test set (fixed, independent of the seed)")
    return RawSplits(xtr, ytr, xte, yte, classes, warnings)
