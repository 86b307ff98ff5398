"""Runs restored from their last checkpoint (`restore`: eval, the inspection views), cached in-process and keyed
by the checkpoint file so a run that keeps training is restored afresh; test images as RGB/PNG."""
from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from .runstore import Run, RunError

MAX_RUNS = 5  # restored (cfg, data, method, step) kept: one per Grad-CAM column; a ResNet-50 run holds ~100 MB

_cache: OrderedDict[tuple, tuple] = OrderedDict()
_lock = threading.Lock()  # one restore at a time: two page reruns must not both spend seconds on one run


# why eval and the inspectors refuse a config.json edited after the checkpoint
INSPECT_WHY = ("its weights were trained with the old values, and another dataset, test subset or class split "
               "would be evaluated under this run's name. Put the old values back, or train a new run with the new "
               "ones")


def checkpoint_key(run: Run) -> tuple[str, int, int]:
    """(run folder, checkpoint mtime_ns, size): changes whenever the worker writes a new checkpoint."""
    run.require()
    try:
        st = run.checkpoint_path.stat()
    except FileNotFoundError:
        raise RunError(f"run {run.id!r} has no checkpoint yet ({run.checkpoint_path}); wait for its first "
                       "checkpoint (ckpt_every steps) or resume it") from None
    return str(run.path.resolve()), st.st_mtime_ns, st.st_size


def restore(run: Run, device: torch.device | str | None = None, log=lambda m: None):
    """(cfg, data, method, step) of a run, with the weights of its last checkpoint, nets in eval mode.
    Only the target's data is loaded: the checkpoint holds every trained network and W*, so the source model
    (its data, its pretraining, the head re-fit) is never needed to inspect or evaluate a run."""
    from .checkpoint import check_config_unchanged, load_checkpoint, load_method_state
    from .config import from_dict
    from .loop import resolve_device, setup
    from .validation import validate

    cfg = from_dict(run.require().config())
    validate(cfg)  # a hand-edited config.json gets the same checks as a new run's
    device = resolve_device(device or cfg.device) if isinstance(device, (str, type(None))) else device
    ckpt = load_checkpoint(run.checkpoint_path, backbone=cfg.backbone, method=cfg.method, map_location=device)
    check_config_unchanged(run, ckpt, cfg, INSPECT_WHY)
    data, method = setup(cfg, device, log, with_source=False)
    load_method_state(method, ckpt, run.checkpoint_path)
    method.eval()
    return cfg, data, method, ckpt["step"]


def inspect_device(device: torch.device | str | None) -> torch.device | str:
    """Where the inspectors restore a run: `device`, else "auto" (the app's machine), not the run's own: a run
    trained on a GPU is inspected on a machine without one."""
    return "auto" if device is None else device


def restore_cached(run: Run, device: torch.device | str | None = None):
    """`restore(run, device)` -> (cfg, data, method, step), memoised per checkpoint and device (inspect_device)."""
    device = inspect_device(device)
    key = (*checkpoint_key(run), str(device))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        for old in [k for k in _cache if k[0] == key[0] and k[3] == key[3]]:  # older checkpoint of this run
            del _cache[old]
        restored = restore(run, device)
        _cache[key] = restored
        while len(_cache) > MAX_RUNS:
            _cache.popitem(last=False)
        return restored


def cached_runs() -> list[tuple]:
    """Keys currently held (for tests and the app's memory display)."""
    return list(_cache)


def clear() -> None:
    with _lock:
        _cache.clear()


def to_rgb(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A network input C×H×W in [−1, 1] (C = 1 or 3) -> uint8 H×W×3 (grey images repeated)."""
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected an image shaped (C, H, W) with C = 1 or 3, got {x.shape}")
    rgb = np.clip(np.rint((x.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    return np.ascontiguousarray(rgb.transpose(1, 2, 0))


def thumbnail(data, index: int, *, size: int | None = None):
    """Test image `index` as a PIL RGB image (scaled to size×size, nearest neighbour, when given)."""
    from PIL import Image
    if not 0 <= index < len(data.test):
        raise IndexError(f"test index {index} out of range: the test set has {len(data.test)} images")
    img = Image.fromarray(to_rgb(data.test[int(index)][0]))
    return img.resize((size, size), Image.NEAREST) if size else img


def image_uri(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def hover_images(data, indices: Sequence[int], *, size: int = 64) -> list[str]:
    """PNG data-URIs for test indices ("" for −1, i.e. generated points); each image encoded once."""
    uris = {int(i): image_uri(thumbnail(data, int(i), size=size)) for i in set(map(int, indices)) if i >= 0}
    return [uris.get(int(i), "") for i in indices]
