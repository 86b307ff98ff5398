"""Backbone input adaptation (Appendix A): channels and size per backbone, [−1, 1] normalisation, and the
training augmentations — vectorised on uint8 batches for in-memory data, per PIL image for file data."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .registry import DataError


@dataclass(frozen=True)
class BackboneInput:
    channels: int                 # channels the first conv takes
    size: int                     # side images are brought to (resize, or zero-pad 28→32)
    crop: int                     # side the network sees (ResNet-50: 224 cropped from 256)
    train_augment: str | None     # "flipcrop": flip + random crop (pad `pad`, then crop back to `crop`)
    pad: int                      # zero padding before the random crop (VGG: 4 px; ResNet: none, 256→224)
    gray: bool = False            # convert to gray first (then replicate to 3 channels if channels == 3)


BACKBONE_INPUT: dict[str, BackboneInput] = {
    "lenet": BackboneInput(1, 32, 32, None, 0),          # paper: no augmentation for LeNet
    "vgg16": BackboneInput(3, 32, 32, "flipcrop", 4),
    "resnet50": BackboneInput(3, 256, 224, "flipcrop", 0),
}


def backbone_input(backbone: str) -> BackboneInput:
    try:
        return BACKBONE_INPUT[backbone]
    except KeyError:
        raise DataError(f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONE_INPUT)}") from None


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [−1, 1], i.e. (x/255 − 0.5)/0.5 (the paper's normalisation)."""
    return images.float().div_(127.5).sub_(1.0)


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 …×3 → uint8 … with PIL's integer ITU-R 601 luma, so arrays and PIL.convert("L") agree exactly."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def adapt_array(images: np.ndarray, spec: BackboneInput) -> torch.Tensor:
    """Native uint8 images N×H×W (gray) or N×H×W×3 (RGB) → uint8 tensor N×C×size×size for the backbone.
    28×28 is zero-padded to 32×32 (the paper's F-MNIST recipe); other sizes are resized (PIL bilinear)."""
    if images.ndim == 4 and (spec.channels == 1 or spec.gray):
        images = rgb_to_gray(images)
    if images.ndim == 3 and spec.channels == 3:
        images = np.repeat(images[..., None], 3, axis=-1)         # gray (or made gray) replicated to RGB
    n, h, w = images.shape[:3]
    s = spec.size
    if (h, w) == (28, 28) and s == 32:
        pad = [(0, 0), (2, 2), (2, 2)] + [(0, 0)] * (images.ndim - 3)
        images = np.pad(images, pad)
    elif (h, w) != (s, s):
        from PIL import Image

        out = np.empty((n, s, s) + images.shape[3:], dtype=np.uint8)
        for i in range(n):
            out[i] = np.asarray(Image.fromarray(images[i]).resize((s, s), Image.Resampling.BILINEAR))
        images = out
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def crop_flip(batch: torch.Tensor, out: int, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop (after `pad` zero pixels each side) and random horizontal flip of a uint8 batch
    B×C×H×W → B×C×out×out, as one gather: no per-sample Python. Random numbers come from the CPU
    `generator`, so the result is identical on every device."""
    b, _, h, w = batch.shape
    oy = torch.randint(0, h + 2 * pad - out + 1, (b,), generator=generator)
    ox = torch.randint(0, w + 2 * pad - out + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    ar = torch.arange(out)
    rows = oy[:, None] + ar                                              # B×out
    cols = torch.where(flip[:, None], ox[:, None] + out - 1 - ar, ox[:, None] + ar)   # B×out (reversed = flip)
    dev = batch.device
    if pad:
        batch = torch.nn.functional.pad(batch, (pad, pad, pad, pad))      # zeros = black = −1 after to_float
    rows, cols = rows.to(dev), cols.to(dev)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(batch.shape[1], device=dev)[None, :, None, None]
    return batch[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def center_crop(batch: torch.Tensor, out: int) -> torch.Tensor:
    """Centre crop B×C×H×W → B×C×out×out (ResNet-50 test view; identity when H == out)."""
    h, w = batch.shape[-2:]
    top, left = (h - out) // 2, (w - out) // 2
    return batch[..., top:top + out, left:left + out]


# -- per-image path (file-backed data) -------------------------------------------------------------------

def to_mode(img, channels: int, gray: bool = False):
    """Any PIL image (palette, RGBA, LA, CMYK, 16-bit, float…) → "L" or "RGB". Transparent pixels become
    black, like the zero padding; 16-bit/float images are scaled by their range instead of clipped.
    gray=True with channels=3 gives gray replicated to RGB."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img)
    if img.mode == "1":
        img = img.convert("L")
    if channels == 1 or gray:
        img = img if img.mode == "L" else img.convert("RGB").convert("L")
    return img if channels == 1 else img.convert("RGB")


def resize_image(img, size: int):
    """PIL image → size×size: 28×28 is zero-padded to 32 like the arrays; everything else is resized."""
    from PIL import Image

    if img.size == (size, size):
        return img
    if img.size == (28, 28) and size == 32:
        canvas = Image.new(img.mode, (32, 32))
        canvas.paste(img, (2, 2))
        return canvas
    return img.resize((size, size), Image.Resampling.BILINEAR)


def image_to_input(img, spec: BackboneInput, aug_seed: int | None) -> torch.Tensor:
    """One PIL image → float C×crop×crop in [−1, 1]. aug_seed=None: test view (centre crop);
    otherwise the backbone's training augmentation, drawn from random.Random(aug_seed)."""
    img = resize_image(to_mode(img, spec.channels, spec.gray), spec.size)
    a = np.array(img, dtype=np.uint8)                                    # a writable copy for torch
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)                 # C×size×size
    t = torch.from_numpy(np.ascontiguousarray(a))
    if aug_seed is None or spec.train_augment is None:
        return to_float(center_crop(t, spec.crop))
    rng = random.Random(aug_seed)
    if spec.pad:
        t = torch.nn.functional.pad(t, (spec.pad,) * 4)
    top = rng.randint(0, t.shape[1] - spec.crop)
    left = rng.randint(0, t.shape[2] - spec.crop)
    t = t[:, top:top + spec.crop, left:left + spec.crop]
    if rng.random() < 0.5:
        t = t.flip(-1)
    return to_float(t.contiguous())
