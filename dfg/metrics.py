"""Test metrics every method reports: top-1 (the paper's figure), balanced accuracy, macro-F1,
per-class recall, minority-class mean recall and the confusion matrix."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores(cm: np.ndarray, minority: list[int] | tuple[int, ...] = ()) -> dict:
    """Metrics from a confusion matrix. Classes absent from the test set are left out of the means (as
    balanced accuracy does; sklearn's f1_score(average="macro") would count a predicted-but-absent class as 0)."""
    cm = cm.astype(np.float64)
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    # F1 = 2PR/(P+R) = 2tp/(2tp+fp+fn): the count form, as sklearn computes it, is exact where 2PR/(P+R)
    # differed from sklearn by up to 2.2e-16
    denominator = support + predicted  # (tp + fn) + (tp + fp)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    out = {
        "top1": float(tp.sum() / max(cm.sum(), 1)),
        "balanced_acc": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_recall": recall.tolist(),
    }
    minority = [c for c in minority if present[c]]
    # None (shown as —) when the run defines no minority classes (imbalance=none or longtail) or none is tested:
    # balanced accuracy in its place would be reported under the wrong name
    out["minority_recall"] = float(recall[minority].mean()) if minority else None
    return out


@torch.no_grad()
def evaluate(predict: Callable[[torch.Tensor], torch.Tensor], batches, num_classes: int,
             minority: list[int] | tuple[int, ...] = ()) -> dict:
    """Run `predict` (x -> logits, nets already in eval mode) over (x, y) batches."""
    ys, ps = [], []
    for x, y in batches:
        ps.append(predict(x).argmax(1).cpu())
        ys.append(y.cpu())
    y_true, y_pred = torch.cat(ys).numpy(), torch.cat(ps).numpy()
    cm = confusion(y_true, y_pred, num_classes)
    return {**scores(cm, minority), "confusion": cm.tolist(), "n": int(len(y_true))}
