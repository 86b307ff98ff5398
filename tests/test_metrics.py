"""dfg.metrics against scikit-learn on edge cases, and minority recall only where minority classes are tested."""
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

from dfg.metrics import confusion, scores


@pytest.mark.filterwarnings("ignore:A single label was found", "ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("y, p", [([0, 1, 2, 2, 1], [0, 2, 2, 2, 1]),   # mixed
                                  ([1, 1, 1], [0, 1, 1]),                # a predicted class absent from the test
                                  ([0, 0, 1, 2], [0, 0, 0, 0]),          # classes never predicted
                                  ([2, 2], [2, 2])])                     # a single class
def test_scores_match_scikit_learn_over_the_tested_classes(y, p):
    s = scores(confusion(np.array(y), np.array(p), 4), minority=[1, 2])
    tested = np.unique(y)
    assert s["top1"] == pytest.approx(np.mean(np.array(y) == np.array(p)))
    assert s["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, p))
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, labels=tested, average="macro", zero_division=0))
    recall = recall_score(y, p, labels=[1, 2], average=None, zero_division=0)
    minority = [r for c, r in zip([1, 2], recall) if c in tested]
    assert s["minority_recall"] == (pytest.approx(np.mean(minority)) if minority else None)


def test_minority_recall_is_absent_without_tested_minority_classes():
    cm = confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), 3)
    assert scores(cm, minority=())["minority_recall"] is None       # imbalance=none or longtail: none defined
    assert scores(cm, minority=[2])["minority_recall"] is None      # defined, but not in this test set
    assert scores(cm, minority=[1, 2])["minority_recall"] == pytest.approx(0.5)


def test_macro_f1_equals_scikit_learn_to_the_last_bit():
    """F1 from counts (2tp / (2tp + fp + fn)), as scikit-learn computes it: 2PR/(P+R) was off by up to 2.2e-16
    on about a third of these."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        k, n = int(rng.integers(2, 12)), int(rng.integers(1, 400))
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        assert scores(confusion(y, p, k))["macro_f1"] == f1_score(y, p, labels=np.unique(y), average="macro",
                                                                 zero_division=0)
