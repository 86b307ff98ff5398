"""Class-wise filter weights — the supervised attention of §3.2 (Eq. 5, 6, 7, δ threshold).

All nf ablations of E's last conv run batched: E's stem runs once, C's first conv runs once plus one
grouped conv for all nf one-channel changes, and only the rest of C runs per filter, in large chunks
(one full forward per filter is the slow reference in bench/reference.py)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .networks import Extractor, run_sequential

CHUNK_ELEMENTS = 1 << 24  # activations per ablation chunk (~64 MB fp32) — bounds memory on any backbone


def balanced_sample(labels: np.ndarray | torch.Tensor, per_class: int, seed: int) -> np.ndarray:
    """Seeded, class-balanced indices: up to `per_class` of each class (all of a smaller class)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def _ablated_channels(extractor: Extractor, h: torch.Tensor, ctx, fill) -> torch.Tensor:
    """E^{\\j}(x)[:, j] for every j at once: `finish` is channel-wise (ReLU, max-pool, eval-mode BN,
    the residual add), so finishing an h with *every* channel removed gives, in channel j, exactly
    channel j of the output with only filter j removed. (N, nf, H, W)."""
    removed = torch.zeros_like(h) if fill is None else fill.expand_as(h).contiguous()
    return extractor.finish(removed, ctx)


def _first_conv_split(classifier: nn.Module) -> tuple[nn.Conv2d, list[nn.Module]] | None:
    if isinstance(classifier, nn.Sequential) and len(classifier) > 1 and isinstance(classifier[0], nn.Conv2d) \
            and classifier[0].groups == 1 and classifier[0].padding_mode == "zeros":
        return classifier[0], list(classifier)[1:]
    return None


@torch.no_grad()
def loss_increase(extractor: Extractor, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                  keep_bias: bool = False) -> torch.Tensor:
    """Δ_ij = CE(C(E^{\\j}(x_i)), y_i) − CE(C(E(x_i)), y_i) for every filter j of E's last conv.

    x: (N, C, H, W), y: (N,). Returns (N, nf). Removing filter j zeroes channel j of the last conv's
    output (weights and bias); keep_bias=True zeroes the weights only, so the channel becomes its bias
    (the official code, DESIGN §2 item 6). Runs in whatever mode the nets are in.

    Fast path (C starts with a conv, and no net normalises over the batch): removing filter j changes
    only channel j of E's output, so C's first conv of the ablated features is its output on the full
    features plus that conv applied to the one changed channel — all nf of those come from one grouped
    conv. Only the rest of C runs once per filter."""
    h, ctx = extractor.stem(x)  # h: (N, nf, H', W')
    n, nf = h.shape[:2]
    e = extractor.finish(h, ctx)
    base = F.cross_entropy(classifier(e), y, reduction="none")  # (N,)
    bias = extractor.last_conv.bias
    fill = bias.view(nf, 1, 1) if (keep_bias and bias is not None) else None
    out = torch.empty(n, nf, device=h.device, dtype=base.dtype)
    split = _first_conv_split(classifier)
    batch_stats = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                      for net in (extractor, classifier) for m in net.modules())
    if split is not None and not batch_stats:
        conv, rest = split
        z = conv(e)  # (N, cout, H2, W2)
        delta = _ablated_channels(extractor, h, ctx, fill) - e  # (N, nf, H, W): what removing j does to channel j
        cout = conv.out_channels
        per_variant = max(1, CHUNK_ELEMENTS // max(1, z[0].numel() * n))
        folded: dict = {}
        for j0 in range(0, nf, per_variant):
            v = min(nf, j0 + per_variant) - j0
            w = conv.weight[:, j0:j0 + v].transpose(0, 1).reshape(v * cout, 1, *conv.weight.shape[2:])
            dz = F.conv2d(delta[:, j0:j0 + v], w, None, conv.stride, conv.padding, conv.dilation, groups=v)
            zv = (z.unsqueeze(0) + dz.view(n, v, *z.shape[1:]).transpose(0, 1)).reshape(v * n, *z.shape[1:])
            if zv.device.type == "cpu":  # oneDNN's NHWC convs: ~1.2x on VGG-16's C
                zv = zv.contiguous(memory_format=torch.channels_last)
            ce = F.cross_entropy(run_sequential(rest, zv, folded), y.repeat(v), reduction="none").view(v, n)
            out[:, j0:j0 + v] = (ce - base).T
        return out
    # Filters per chunk. A net that normalises over the batch (train-mode BN: the official code's pass,
    # DESIGN §2 item 7) must see each ablation alone, or its statistics would mix the removals.
    per_variant = 1 if batch_stats else max(1, CHUNK_ELEMENTS // max(1, h[0].numel() * n))
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


def loss_increase_batched(extractor: Extractor, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                          keep_bias: bool = False, batch_size: int = 256) -> torch.Tensor:
    """`loss_increase` over a sample of any size, `batch_size` samples per pass (bounds memory). (N, nf)."""
    return torch.cat([loss_increase(extractor, classifier, x[i:i + batch_size], y[i:i + batch_size],
                                    keep_bias=keep_bias) for i in range(0, len(x), batch_size)])


def sample_weights(increase: torch.Tensor, *, flip_sign: bool = False) -> torch.Tensor:
    """Eq. 5: softmax over filters of the loss increase, per sample. (N, nf) -> (N, nf), rows sum to 1.
    flip_sign=True uses base − ablated (official code, DESIGN §2 item 1)."""
    return torch.softmax(-increase if flip_sign else increase, dim=1)


def class_weights(per_sample: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 6: W(c) = nf · mean_{i: y_i = c} W(x_i) — each class row averages 1. Returns (K, nf);
    a class with no sample gets the uniform row (all ones)."""
    nf = per_sample.shape[1]
    sums = torch.zeros(num_classes, nf, device=per_sample.device, dtype=per_sample.dtype).index_add_(0, y, per_sample)
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
    train-mode pass (DESIGN §2 item 7): BN then normalises each ablation by its own batch of up to
    `batch_size` samples, and its running statistics move, as they do in the official code."""
    modes = [(m, m.training) for m in (extractor, classifier)]
    try:
        if eval_mode:
            extractor.eval()
            classifier.eval()
        inc = loss_increase_batched(extractor, classifier, x, y, keep_bias=keep_bias, batch_size=batch_size)
        return class_weights(sample_weights(inc, flip_sign=flip_sign), y, num_classes)
    finally:
        for m, was_training in modes:
            m.train(was_training)
