"""Grad-CAM (Captum's LayerGradCam) on a run's classifier C∘E (paper Fig. 3-4): class-activation maps with
predictions, the same test images compared across runs, and heat maps blended over the image."""
from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .restored import restore_cached, to_rgb
from .runstore import Run

FILTERS = ("all", "minority", "misclassified")
_HOOKS = threading.Lock()  # Grad-CAM hooks a layer of a restored (shared) network


class Composed(nn.Module):
    """E then C as one module, so Captum sees a single model x -> logits."""

    def __init__(self, extractor: nn.Module, classifier: nn.Module):
        super().__init__()
        self.extractor, self.classifier = extractor, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.extractor(x))


def default_layer(method) -> nn.Module:
    """The layer whose maps Grad-CAM weighs, always the rectified maps the rest of the net reads: ResNet-50's
    last bottleneck (its output, after the residual add and ReLU), else the ReLU right after C's last Conv2d
    (the conv itself when no ReLU module follows it); a C without convolutions falls back to E's last conv.
    (The conv's pre-activation output would count activations the ReLU discards: zero gradient, yet
    negative values that pull the map down.)"""
    from torchvision.models.resnet import Bottleneck
    blocks = [m for m in method.classifier.modules() if isinstance(m, Bottleneck)]
    if blocks:
        return blocks[-1]
    mods = list(method.classifier.modules())
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    if not convs:
        return method.extractor.last_conv
    i = convs[-1]
    after = mods[i + 1] if i + 1 < len(mods) else None
    # a shared ReLU module would fire the hook more than once (modules() lists it once: count its every use)
    used_once = sum(m is after for _, m in method.classifier.named_modules(remove_duplicate=False)) == 1
    return after if isinstance(after, nn.ReLU) and not after.inplace and used_once else mods[i]


def describe_layer(method, x: torch.Tensor) -> dict:
    """{"layer": which maps default_layer picks, in words with their module name, "map_size": (h, w) of those
    maps for images like x (B, C, H, W), "image_size": (H, W)}: what the Grad-CAM page says its maps weigh."""
    layer = default_layer(method)
    owner, prefix = (method.classifier, "C") if any(m is layer for m in method.classifier.modules()) else \
        (method.extractor, "E")
    name = next(n for n, m in owner.named_modules() if m is layer)
    what = ("the last bottleneck" if type(layer).__name__ == "Bottleneck" else
            "the ReLU after the last conv" if isinstance(layer, nn.ReLU) else "the last conv")
    shape = []
    hook = layer.register_forward_hook(lambda mod, inp, out: shape.append(tuple(out.shape[-2:])))
    model, modes = Composed(method.extractor, method.classifier), [method.extractor.training,
                                                                  method.classifier.training]
    try:
        model.eval()
        with torch.no_grad():
            model(x[:1].to(next(model.parameters()).device))
    finally:
        hook.remove()
        method.extractor.train(modes[0])
        method.classifier.train(modes[1])
    return {"layer": f"{what} of {prefix} ({name})", "map_size": shape[0], "image_size": tuple(x.shape[-2:])}


def gradcam(method, x: torch.Tensor, target: torch.Tensor | Sequence[int] | None = None,
            layer: nn.Module | None = None, *, batch_size: int = 64):
    """Grad-CAM of images x (B, C, H, W) for `target` (default: the predicted class).

    Returns (cams (B, H, W) float32 in [0, 1], ReLU'd and bilinearly upsampled to the input size, each
    scaled by its own maximum (all zero when no location supports the class), pred (B,) int64,
    conf (B,) float32 = softmax probability of pred)."""
    from captum.attr import LayerAttribution, LayerGradCam

    if x.ndim != 4:
        raise ValueError(f"gradcam expects a batch shaped (B, C, H, W), got {tuple(x.shape)}")
    model = Composed(method.extractor, method.classifier)
    modes = [m.training for m in (method.extractor, method.classifier)]
    model.eval()
    device = next(model.parameters()).device
    cam_fn = LayerGradCam(model, layer if layer is not None else default_layer(method))
    cams, preds, confs = [], [], []
    try:
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size].to(device)
            with torch.no_grad():
                prob = torch.softmax(model(xb), 1)
            conf, pred = prob.max(1)
            tgt = pred if target is None else torch.as_tensor(target, device=device)[s:s + batch_size]
            attr = cam_fn.attribute(xb, target=tgt, relu_attributions=True)  # (b, 1, h, w)
            attr = LayerAttribution.interpolate(attr, tuple(xb.shape[-2:]), interpolate_mode="bilinear")
            attr = attr.detach()[:, 0].clamp_min(0)
            peak = attr.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
            cams.append((attr / peak).clamp_(0, 1).cpu().numpy())
            preds.append(pred.cpu().numpy())
            confs.append(conf.cpu().numpy())
    finally:
        method.extractor.train(modes[0])
        method.classifier.train(modes[1])
    return (np.concatenate(cams).astype(np.float32), np.concatenate(preds).astype(np.int64),
            np.concatenate(confs).astype(np.float32))


def overlay(image: torch.Tensor | np.ndarray, cam: np.ndarray, *, alpha: float = 0.45,
            cmap: str = "jet") -> np.ndarray:
    """Image (C, H, W) in [−1, 1] with a CAM (H, W) in [0, 1] blended on top -> uint8 RGB (H, W, 3)."""
    from matplotlib import colormaps

    rgb = to_rgb(image).astype(np.float32) / 255.0
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != rgb.shape[:2]:
        raise ValueError(f"cam shape {cam.shape} does not match the image's {rgb.shape[:2]}")
    heat = colormaps[cmap](np.clip(cam, 0, 1))[..., :3]
    return np.clip(np.rint(((1 - alpha) * rgb + alpha * heat) * 255), 0, 255).astype(np.uint8)


def _same_images(a, b) -> bool:
    """Whether two test sets hold the same images: the stored uint8 tensors, or the same files / arrays that
    are decoded one at a time (dfg.data.images); True for other dataset types (labels and sizes decide)."""
    if hasattr(a, "images") and hasattr(b, "images"):
        return torch.equal(a.images, b.images)
    if hasattr(a, "items") and hasattr(b, "items"):
        if isinstance(a.items, np.ndarray) or isinstance(b.items, np.ndarray):
            return isinstance(a.items, np.ndarray) and isinstance(b.items, np.ndarray) \
                and np.array_equal(a.items, b.items)
        return list(a.items) == list(b.items)
    return True


def _check_same_test_set(restored: list[tuple], runs: list[Run]) -> None:
    ref = restored[0][1]
    for (cfg, data, _, _), run in zip(restored[1:], runs[1:]):
        same = (len(data.test) == len(ref.test) and data.image_size == ref.image_size
                and data.in_channels == ref.in_channels
                and np.array_equal(np.asarray(data.test.labels), np.asarray(ref.test.labels))
                and _same_images(data.test, ref.test))
        if not same:
            raise ValueError(f"run {run.id!r} has a different test set than {runs[0].id!r} (dataset, limit_test "
                             "and its seed, or backbone input differ); compare runs made on the same dataset and "
                             "backbone")


def _select(idx: np.ndarray, only: str, ref, limit: int | None) -> np.ndarray:
    """The test indices kept by `only`, judged on the reference run (cfg, data, method, step), at most
    `limit`; images are loaded and classified in chunks (a ResNet test set does not fit in memory)."""
    _, data, method, _ = ref
    labels = np.asarray(data.test.labels)
    limit = len(idx) if limit is None else limit
    if only == "all":
        return idx[:limit]
    if only == "minority":
        if not data.majority:
            raise ValueError("minority images (only='minority') need step-imbalanced data with a majority set; "
                             "this run's data is balanced or long-tailed: show all images or the misclassified "
                             "ones instead (only='all' or 'misclassified')")
        return idx[~np.isin(labels[idx], list(data.majority))][:limit]
    device = next(method.extractor.parameters()).device
    wrong: list[int] = []
    for s in range(0, len(idx), 256):
        if len(wrong) >= limit:
            break
        chunk = idx[s:s + 256]
        pred = method.predict(torch.stack([data.test[int(i)][0] for i in chunk]).to(device)).argmax(1).cpu().numpy()
        wrong += chunk[pred != labels[chunk]].tolist()
    return np.asarray(wrong[:limit], dtype=np.int64)


def compare_runs(runs: Sequence[Run], indices: Sequence[int] | None = None, *, only: str = "all",
                 reference_run: Run | None = None, limit: int | None = None,
                 device: torch.device | str | None = None,
                 progress: Callable[[float, str], None] | None = None) -> list[dict]:
    """Grad-CAM of every run on the same test images, image by image then run by run.

    indices: test indices (default: the whole test set), filtered by `only` ("minority": true label not
    in the majority; "misclassified": the reference run — default runs[0] — gets it wrong), then cut to
    `limit`. Each entry: index, run_id, method, step, label, label_name, pred, pred_name, conf, correct,
    cam (H, W) float32 [0, 1], image (H, W, 3) uint8, overlay (H, W, 3) uint8, and describe_layer's layer,
    map_size and image_size."""
    progress = progress or (lambda f, m: None)
    if only not in FILTERS:
        raise ValueError(f"unknown filter only={only!r}; choose one of {', '.join(FILTERS)}")
    if not runs:
        raise ValueError("compare_runs needs at least one run")
    restored = []
    for i, run in enumerate(runs):
        progress(0.6 * i / len(runs), f"restoring run {run.id}")
        restored.append(restore_cached(run, device))
    ref = restore_cached(reference_run, device) if reference_run is not None else restored[0]
    everything = [reference_run, *runs] if reference_run is not None else list(runs)
    _check_same_test_set([ref, *restored] if reference_run is not None else restored, everything)
    test = ref[1].test
    idx = np.arange(len(test)) if indices is None else np.asarray(indices, dtype=np.int64).ravel()
    bad = idx[(idx < 0) | (idx >= len(test))]
    if len(bad):
        raise IndexError(f"test indices {bad[:5].tolist()} out of range: the test set has {len(test)} images")
    idx = _select(idx, only, ref, limit)
    if not len(idx):
        return []
    x = torch.stack([test[int(i)][0] for i in idx])
    y = np.asarray(test.labels)[idx]
    per_run, layers = [], []
    for i, (cfg, data, method, step) in enumerate(restored):
        progress(0.6 + 0.4 * i / len(restored), f"Grad-CAM for run {runs[i].id}")
        with _HOOKS:  # restored nets are shared by every session: one hooked pass at a time
            per_run.append(gradcam(method, x))
            layers.append(describe_layer(method, x))
    names = ref[1].class_names
    images = [to_rgb(img) for img in x]
    out = []
    for j, index in enumerate(idx):
        for run, (cfg, _, _, step), (cams, pred, conf), layer in zip(runs, restored, per_run, layers):
            out.append({"index": int(index), "run_id": run.id, "method": cfg.method, "step": int(step), **layer,
                        "label": int(y[j]), "label_name": names[int(y[j])], "pred": int(pred[j]),
                        "pred_name": names[int(pred[j])], "conf": float(conf[j]), "correct": bool(pred[j] == y[j]),
                        "cam": cams[j], "image": images[j], "overlay": overlay(x[j], cams[j])})
    progress(1.0, "done")
    return out
