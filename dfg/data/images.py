"""The two dataset kinds build_data returns: `TensorImages` (uint8 tensor in memory, batched fast by
BatchStream) and `FileImages` (decoded per sample from files or native arrays, for big or ResNet data)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import BackboneInput, center_crop, image_to_input, to_float


class TensorImages(Dataset):
    """Images already at the backbone's channels and size, held as one uint8 tensor.

    images: uint8 N×C×H×W; labels: int64 N; augment: "flipcrop" (train, VGG) or None.
    `__getitem__` gives the un-augmented view (float C×H×W in [−1, 1], int): augmentation is applied
    per batch by BatchStream, vectorised, from seeded generators."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: str | None = None,
                 pad: int = 4, crop: int | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.augment = augment
        self.pad = pad                                   # zero padding before the random crop
        self.crop = images.shape[-1] if crop is None else crop   # side the network sees

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_float(center_crop(self.images[i], self.crop)), int(self.labels[i])

    def __repr__(self) -> str:
        return f"TensorImages(n={len(self)}, shape={tuple(self.images.shape[1:])}, augment={self.augment})"


class FileImages(Dataset):
    """Images decoded one at a time: `items` is a list of file paths or a native uint8 array (N×H×W or
    N×H×W×3); each goes through PIL → the backbone's mode, size and crop → float C×crop×crop in [−1, 1].

    An int index gives the test view. BatchStream asks for (index, aug_seed) to get the training
    augmentation reproducibly, also inside DataLoader workers."""

    def __init__(self, items: Sequence[str] | np.ndarray, labels, spec: BackboneInput, train: bool):
        self.items = items
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.spec = spec
        self.train = train
        self.augment = spec.train_augment if train else None
        if len(self.items) != len(self.labels):
            raise ValueError(f"{len(self.items)} items but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def _open(self, i: int):
        from PIL import Image

        item = self.items[i]
        if isinstance(item, np.ndarray):
            return Image.fromarray(item)
        # decode as the in-memory path does (folder.load_folder): a JPEG made gray is decoded to gray by
        # libjpeg, which can differ by a few levels from converting its decoded RGB
        return open_image(item, self.spec.size, 1 if self.spec.gray else self.spec.channels)

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        i, aug_seed = key if isinstance(key, tuple) else (key, None)
        if self.augment is None:
            aug_seed = None
        return image_to_input(self._open(i), self.spec, aug_seed), int(self.labels[i])

    def __repr__(self) -> str:
        src = "files" if not isinstance(self.items, np.ndarray) else "array"
        return f"FileImages(n={len(self)}, {src}, size={self.spec.crop}, augment={self.augment})"


def open_image(path: str | os.PathLike, size: int, channels: int):
    """Decode a file fully (truncated files raise OSError here, not mid-training). JPEGs are decoded at
    a reduced DCT scale when that still leaves at least size×size pixels: several times faster."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft("L" if channels == 1 else "RGB", (size, size))
        img.load()
        return img.copy()


def describe_path(path: str | os.PathLike) -> str:
    """A short name for warnings: parent folder and file name."""
    p = os.fspath(path)
    return os.path.join(os.path.basename(os.path.dirname(p)), os.path.basename(p))
