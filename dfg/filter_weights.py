"""Class-wise filter weights — the supervised attention of §3.2 (Eq. 5, 6, 7, δ threshold).

All nf ablations of E's last conv run batched: E's stem runs once, then the nf masked copies go
through the rest of E and C in large chunks (one full forward per filter is the slow reference)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .networks import Extractor

CHUNK_ELEMENTS = 1 << 24  # activations per ablation chunk (~64 MB fp32) — bounds memory on any backbone


def balanced_sample(labels: np.ndarray | torch.Tensor, per_class: int, seed: int) -> np.ndarray:
    """Seeded, class-balanced indices: up to `per_class` of each class (all of a smaller class)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


@torch.no_grad()
def loss_increase(extractor: Extractor, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  keep_bias: bool = False) -> torch.Tensor:
    """Δ_ij = CE(C(E^{\\j}(x_i)), y_i) − CE(C(E(x_i)), y_i) for every filter j of E's last conv.

    x: (N, C, H, W), y: (N,). Returns (N, nf). Removing filter j zeroes channel j of the last conv's
    output (weights and bias); keep_bias=True zeroes the weights only, so the channel becomes its bias
    (the official code, DESIGN §2 item 6). Runs in whatever mode the nets are in."""
    h, ctx = extractor.stem(x)  # h: (N, nf, H', W')
    n, nf = h.shape[:2]
    base = F.cross_entropy(classifier(extractor.finish(h, ctx)), y, reduction="none")  # (N,)
    bias = extractor.last_conv.bias
    fill = bias.view(nf, 1, 1) if (keep_bias and bias is not None) else None
    per_variant = max(1, CHUNK_ELEMENTS // max(1, h[0].numel() * n))  # filters per chunk
    out = torch.empty(n, nf, device=h.device)
    for j0 in range(0, nf, per_variant):
        js = torch.arange(j0, min(nf, j0 + per_variant), device=h.device)
        v = len(js)
        keep = torch.ones(v, nf, device=h.device, dtype=h.dtype)
        keep[torch.arange(v), js] = 0  # (v, nf): variant k drops filter js[k]
        hv = h.unsqueeze(0) * keep[:, None, :, None, None]  # (v, N, nf, H', W')
        if fill is not None:
            hv = hv + (1 - keep)[:, None, :, None, None] * fill
        cv = None if ctx is None else ctx.unsqueeze(0).expand(v, *ctx.shape).reshape(v * n, *ctx.shape[1:])
        logits = classifier(extractor.finish(hv.reshape(v * n, *h.shape[1:]), cv))
        ce = F.cross_entropy(logits, y.repeat(v), reduction="none").view(v, n)
        out[:, j0:j0 + v] = (ce - base).T
    return out


def sample_weights(increase: torch.Tensor, *, flip_sign: bool = False) -> torch.Tensor:
    """Eq. 5: softmax over filters of the loss increase, per sample. (N, nf) -> (N, nf), rows sum to 1.
    flip_sign=True uses base − ablated (official code, DESIGN §2 item 1)."""
    return torch.softmax(-increase if flip_sign else increase, dim=1)


def class_weights(per_sample: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 6: W(c) = nf · mean_{i: y_i = c} W(x_i) — each class row averages 1. Returns (K, nf);
    a class with no sample gets the uniform row (all ones)."""
    nf = per_sample.shape[1]
    sums = torch.zeros(num_classes, nf, device=per_sample.device).index_add_(0, y, per_sample)
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).unsqueeze(1)
    w = nf * sums / counts
    w[torch.bincount(y, minlength=num_classes) == 0] = 1.0
    return w


def blend(w_source: torch.Tensor, w_target: torch.Tensor, rho: float) -> torch.Tensor:
    """Eq. 7: W = ρ·W(E_S) + (1 − ρ)·W(E). Shapes (K, nf)."""
    return rho * w_source + (1 - rho) * w_target


def threshold(w: torch.Tensor, delta: float) -> torch.Tensor:
    """W* = W where W ≥ δ else 0 (rows average 1, so δ = 0.95 means 0.95 of the class mean)."""
    return torch.where(w >= delta, w, torch.zeros_like(w))


def attention(w_source: torch.Tensor, w_target: torch.Tensor, *, rho: float, delta: float,
              discard_rho: bool = False, unscaled: bool = False) -> torch.Tensor:
    """W* fed to the generator. Paper: threshold(blend(W_S, W_E, ρ), δ).
    discard_rho: the official code's ρ-free W* = threshold(W_E) (DESIGN §2 item 2).
    unscaled: the official code's mean-1/nf weights — thresholded at δ, then divided by nf (item 3)."""
    w = w_target if discard_rho else blend(w_source, w_target, rho)
    w_star = threshold(w, delta)
    return w_star / w.shape[1] if unscaled else w_star


def compute_class_weights(extractor: Extractor, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          num_classes: int, *, flip_sign: bool = False, keep_bias: bool = False,
                          eval_mode: bool = True, batch_size: int = 256) -> torch.Tensor:
    """W(E) (K, nf) from a class-balanced sample (x, y): Eq. 5 then Eq. 6, in eval mode under no_grad;
    the nets' previous train/eval modes are restored afterwards. eval_mode=False is the official code's
    train-mode pass (DESIGN §2 item 7)."""
    modes = [(m, m.training) for m in (extractor, classifier)]
    try:
        if eval_mode:
            extractor.eval()
            classifier.eval()
        inc = torch.cat([loss_increase(extractor, classifier, x[i:i + batch_size], y[i:i + batch_size],
                                       keep_bias=keep_bias) for i in range(0, len(x), batch_size)])
        return class_weights(sample_weights(inc, flip_sign=flip_sign), y, num_classes)
    finally:
        for m, was_training in modes:
            m.train(was_training)
