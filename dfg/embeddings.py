"""Real vs generated feature embeddings (paper Fig. 2): E(x) and G(z, ŷ) feature maps of a run, their 2-D
projections (projections.py), a label-agreement and a real/fake separability score, and a per-run
cache (in memory and in <run>/cache/) so that switching views is instant."""
from __future__ import annotations

import io
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from .fileio import atomic_write_bytes
from .projections import PRE_PCA, PROJECTIONS, one_thread, pca, project
from .restored import (INSPECT_WHY, checkpoint_key, hover_images, image_uri, restore_cached,  # noqa: F401
                       thumbnail)
from .runstore import Run

MAX_DIM = 16384   # wider feature maps (ResNet-50: 256×56×56) are average-pooled to ≤ this many values
Progress = Callable[[float, str], None]


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, D) float32: E(x) or G(z, ŷ) flattened
    labels: np.ndarray    # (N,) int64: true label (real) or conditioning label ŷ (generated)
    is_real: np.ndarray   # (N,) bool
    index: np.ndarray     # (N,) int64: test-set index of a real point, −1 for a generated one


def has_generator(method) -> bool:
    return getattr(method, "generator", None) is not None and callable(getattr(method, "generate", None))


def balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Seeded class-balanced pick of n indices: classes take turns (a small class runs out first)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [p[r] for r in range(max((len(p) for p in per_class), default=0)) for p in per_class if r < len(p)]
    return np.sort(np.asarray(order[:n], dtype=np.int64))


def _flat(maps: torch.Tensor, max_dim: int) -> np.ndarray:
    """(B, C, H, W) -> (B, ≤max_dim) float32; pooled spatially when C·H·W is larger."""
    if maps[0].numel() > max_dim:
        maps = F.adaptive_avg_pool2d(maps, max(1, int((max_dim / maps.shape[1]) ** 0.5)))
    return maps.flatten(1).float().cpu().numpy()


@torch.no_grad()
def collect_features(method, data, *, n_real: int = 1000, n_fake: int | None = None, seed: int = 0,
                     device: torch.device | str | None = None, batch_size: int = 256,
                     max_dim: int = MAX_DIM) -> FeatureSet:
    """method.features(x) (E(x); the input of C's last layer for DIFA+cMWGAN at fc level) of a seeded
    class-balanced sample of the test set (at most n_real: fewer when the test set is smaller), then G(z, ŷ)
    with the run's W* (z ~ U(−1,1), ŷ balanced over classes, from a local generator): n_fake of them, by
    default as many as real points were picked. Every net, G included, runs in eval mode: G's BatchNorm uses
    its running statistics, so each generated feature depends on its own (z, ŷ) only, not on its batch mates
    (training runs G in train mode). Methods without a generator give real points only."""
    device = torch.device(device) if device is not None else next(method.extractor.parameters()).device
    modes = {k: m.training for k, m in method.nets.items()}
    for m in method.nets.values():
        m.eval()
    try:
        labels = np.asarray(data.test.labels)
        idx = balanced_indices(labels, n_real, seed)
        feats = [_flat(method.features(torch.stack([data.test[int(i)][0] for i in idx[s:s + batch_size]])
                                        .to(device)), max_dim) for s in range(0, len(idx), batch_size)]
        ys, real = [labels[idx].astype(np.int64)], [np.ones(len(idx), bool)]
        n_fake = len(idx) if n_fake is None else n_fake
        if has_generator(method) and n_fake > 0:
            g = torch.Generator().manual_seed(seed)
            y = (torch.arange(n_fake) % data.num_classes)[torch.randperm(n_fake, generator=g)]
            z = torch.rand(n_fake, method.generator.noise_dim, generator=g) * 2 - 1
            feats += [_flat(method.generate(z[s:s + batch_size].to(device), y[s:s + batch_size].to(device)), max_dim)
                      for s in range(0, n_fake, batch_size)]
            ys.append(y.numpy().astype(np.int64))
            real.append(np.zeros(n_fake, bool))
    finally:
        for k, m in method.nets.items():
            m.train(modes[k])
    is_real = np.concatenate(real)
    index = np.full(len(is_real), -1, np.int64)
    index[: len(idx)] = idx
    return FeatureSet(np.concatenate(feats).astype(np.float32), np.concatenate(ys), is_real, index)


def knn_label_agreement(real_feats, real_labels, fake_feats, fake_labels, k: int = 5) -> float:
    """Fraction of generated points whose k nearest real neighbours' majority label (ties: the smallest
    label) equals their conditioning label: 1.0 = every generated feature lies among its class."""
    if len(fake_feats) == 0 or len(real_feats) == 0:
        raise ValueError("knn_label_agreement needs at least one real and one generated point")
    k = min(k, len(real_feats))
    r, f = np.asarray(real_feats, np.float64), np.asarray(fake_feats, np.float64)
    # exact squared distances in float64 as one product, about as fast as sklearn's search on the raw
    # features (1000 × 1000 points of 16,384 dims: ~0.8 s on one thread); ties at the k-th distance go to the
    # lower real index
    d2 = (f * f).sum(1)[:, None] - 2 * (f @ r.T) + (r * r).sum(1)[None, :]
    nn_idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
    neigh = np.asarray(real_labels)[nn_idx]  # (n_fake, k)
    votes = np.array([np.bincount(row).argmax() for row in neigh])
    return float(np.mean(votes == np.asarray(fake_labels)))


def separability(real_feats, fake_feats, *, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated balanced accuracy of a logistic regression telling real from generated
    (0.5 = indistinguishable, 1.0 = perfectly separable)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x = np.concatenate([real_feats, fake_feats])
    y = np.r_[np.ones(len(real_feats)), np.zeros(len(fake_feats))]
    folds = min(folds, len(real_feats), len(fake_feats))
    if folds < 2:
        raise ValueError("separability needs at least 2 real and 2 generated points")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, x, y, cv=cv, scoring="balanced_accuracy").mean())


def feature_metrics(fs: FeatureSet, *, k: int = 5, seed: int = 0) -> dict:
    """kNN label agreement on the features themselves (exact), separability on their first PRE_PCA principal
    components (seeded randomized PCA, as the projections see them; a logistic regression on 16,384 dims would
    take minutes); None without generated points."""
    if fs.is_real.all() or not fs.is_real.any():
        return {"knn_label_agreement": None, "separability": None, "k": k, "negative_generated": None}
    r, f = fs.is_real, ~fs.is_real
    # real features follow a ReLU (never negative); G ends with BatchNorm (Table A.4), so its values can be
    # negative, which alone lets a linear model tell them apart: the share of such values, when real has none
    negative = float((fs.features[f] < 0).mean()) if (fs.features[r] >= 0).all() else None
    with one_thread():
        knn = knn_label_agreement(fs.features[r], fs.labels[r], fs.features[f], fs.labels[f], k)
        x = pca(fs.features, PRE_PCA, seed) if fs.features.shape[1] > PRE_PCA else fs.features
        return {"knn_label_agreement": knn, "separability": separability(x[r], x[f], seed=seed), "k": k,
                "negative_generated": negative, "separability_dims": x.shape[1]}


# -- per-run embedding with caches ---------------------------------------------------------------
MEMORY_ENTRIES, FEATURE_ENTRIES = 32, 2   # features of a VGG run at n=1000: 2000×16384 floats = 131 MB
_memory: OrderedDict[tuple, dict] = OrderedDict()
_features: OrderedDict[tuple, tuple] = OrderedDict()


def _remember(cache: OrderedDict, key, value, limit: int):
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)
    return value


def clear_cache() -> None:
    _memory.clear()
    _features.clear()


# bumped when what an entry holds changes: 2 = as many generated points as real ones, kNN on the features
CACHE_FORMAT = 3  # 3: entries hold the config they were computed with


def _disk_path(run: Run, step: int, method: str, n: int, seed: int):
    return run.path / "cache" / f"emb_{step}_{method}_{n}_{seed}.npz"


def _load_disk(run: Run, ckpt: tuple, method: str, n: int, seed: int) -> dict | None:
    """An on-disk entry made from this very checkpoint file (same mtime and size), else None."""
    for path in sorted((run.path / "cache").glob(f"emb_*_{method}_{n}_{seed}.npz")):
        try:
            with np.load(path) as z:
                if (int(z["ckpt_mtime_ns"]), int(z["ckpt_size"])) == ckpt[1:] and int(z["format"]) == CACHE_FORMAT:
                    return {**json.loads(str(z["meta"])), "xy": z["xy"], "labels": z["labels"],
                            "is_real": z["is_real"], "index": z["index"]}
        except (OSError, ValueError, KeyError):
            continue  # a foreign, damaged or older-format file: recompute
    return None


def _save_disk(run: Run, ckpt: tuple, entry: dict) -> None:
    buf = io.BytesIO()
    meta = {k: v for k, v in entry.items() if k not in ("xy", "labels", "is_real", "index")}
    np.savez(buf, xy=entry["xy"], labels=entry["labels"], is_real=entry["is_real"], index=entry["index"],
             ckpt_mtime_ns=np.int64(ckpt[1]), ckpt_size=np.int64(ckpt[2]), meta=np.array(json.dumps(meta)),
             format=np.int64(CACHE_FORMAT))
    try:
        (run.path / "cache").mkdir(exist_ok=True)
        atomic_write_bytes(_disk_path(run, entry["step"], entry["method"], entry["n"], entry["seed"]), buf.getvalue())
    except OSError:
        pass  # read-only run folder: the in-memory cache still works


def embed_run(run: Run, method: str = "pca", n: int = 1000, seed: int = 0, progress: Progress | None = None,
              *, device: torch.device | str | None = None, disk_cache: bool = True, images: bool = False) -> dict:
    """2-D embedding of n real + n generated features of the run's last checkpoint, ready for plotly.

    Returns {"points": {"x", "y", "label", "class_name", "kind" ("real"/"generated"), "index" (test index,
    −1 generated)[, "image" (PNG data-URI, "" generated)]}, "run_id", "step", "method", "n", "seed",
    "class_names", "has_generator", "metrics" (feature_metrics), "cache" ("memory", "disk" or None)}."""
    progress = progress or (lambda f, m: None)
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}")
    ckpt = checkpoint_key(run)
    key = (*ckpt, n, seed, method, str(device))
    entry, source = _memory.get(key), "memory"
    if entry is None and disk_cache:
        entry, source = _load_disk(run, ckpt, method, n, seed), "disk"
    if entry is None:
        entry, source = _compute(run, ckpt, method, n, seed, device, progress), None
        if disk_cache:
            _save_disk(run, ckpt, entry)
    # an entry (or its features) may come from an earlier restore: config.json must still be what it trained with
    from .config import from_dict
    from .checkpoint import refuse_changed_config
    refuse_changed_config(run, entry["config"], entry["step"], from_dict(run.config()), INSPECT_WHY)
    _remember(_memory, key, entry, MEMORY_ENTRIES)
    if images and "images" not in entry:
        progress(0.95, "encoding hover images")
        entry["images"] = hover_images(run_data(run, device), entry["index"])
    progress(1.0, "done")
    return _as_result(entry, source)


def run_data(run: Run, device=None):
    """The run's DataBundle: from a restored run when one is cached, else rebuilt (no source model)."""
    from .restored import cached_runs, inspect_device
    if any(k[:3] == checkpoint_key(run) and k[3] == str(inspect_device(device)) for k in cached_runs()):
        return restore_cached(run, device)[1]
    from .config import from_dict
    from .loop import load_data
    return load_data(from_dict(run.config()))


def _compute(run: Run, ckpt: tuple, method: str, n: int, seed: int, device, progress: Progress) -> dict:
    fkey = (*ckpt, n, seed, str(device))
    hit = _features.get(fkey)  # features and scores shared by every projection of this checkpoint
    if hit is None:
        progress(0.05, "restoring the run from its checkpoint")
        cfg, data, m, step = restore_cached(run, device)
        progress(0.3, "extracting real and generating features")
        fs = collect_features(m, data, n_real=n, seed=seed, device=device)
        progress(0.4, "scoring label agreement and real/generated separability")
        meta = {"run_id": run.id, "step": int(step), "n": n, "seed": seed, "class_names": list(data.class_names),
                "config": cfg.to_dict(),  # what restore checked against the checkpoint: a later hit is checked too
                "has_generator": has_generator(m), "metrics": feature_metrics(fs, seed=seed),
                "feature_name": m.feature_name, "weighted": getattr(m, "channel_weights", lambda: None)() is not None}
        hit = _remember(_features, fkey, (fs, meta), FEATURE_ENTRIES)
    fs, meta = hit
    progress(0.5, f"projecting {len(fs.labels)} points with {method.upper()}")
    xy = project(fs.features, method, seed=seed)
    return {"xy": xy, "labels": fs.labels, "is_real": fs.is_real, "index": fs.index, "method": method, **meta}


def _as_result(entry: dict, source: str | None) -> dict:
    names, labels = entry["class_names"], entry["labels"]
    points = {"x": entry["xy"][:, 0], "y": entry["xy"][:, 1], "label": labels,
              "class_name": [names[int(c)] for c in labels],
              "kind": ["real" if r else "generated" for r in entry["is_real"]], "index": entry["index"]}
    if "images" in entry:
        points["image"] = entry["images"]
    meta = {k: v for k, v in entry.items() if k not in ("xy", "labels", "is_real", "index", "images", "config")}
    return {"points": points, **meta, "cache": source}
