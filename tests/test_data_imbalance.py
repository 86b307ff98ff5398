"""Imbalance sampling (dfg.data.imbalance): exact step counts, the long-tailed profile, seeded draws,
the validation split, the balanced test cap, and the enumeration of majority-class sets."""
import itertools

import numpy as np
import pytest

from dfg.data import DataError, build_data, majority_combinations
from dfg.data.imbalance import balanced_cap, per_class, select_indices, split_validation, target_counts
from dfg.data.offline import mnist5k_arrays

FMNIST_LIKE = np.repeat(np.arange(10), 6000)      # 6,000 per class, like Fashion-MNIST's training split


def test_step_counts_fmnist_like_are_exact():
    counts = target_counts(per_class(FMNIST_LIKE, 10), "step", ratio=40, n_max=6000, majority=(2, 7))
    assert counts == [150, 150, 6000, 150, 150, 150, 150, 6000, 150, 150]
    kept = select_indices(FMNIST_LIKE, counts, seed=0)
    assert per_class(FMNIST_LIKE[kept], 10).tolist() == counts


def test_step_counts_on_mnist5k_are_exact():
    _, labels = mnist5k_arrays()
    counts = target_counts(per_class(labels, 10), "step", ratio=10, n_max=500, majority=(0, 9))
    kept = select_indices(labels, counts, seed=1)
    assert per_class(labels[kept], 10).tolist() == [500] + [50] * 8 + [500]


def test_paper_ratios_round_correctly():
    assert target_counts([5000] * 10, "step", ratio=10, n_max=5000, majority=(0,))[1] == 500
    assert target_counts([750] * 101, "step", ratio=5, n_max=750, majority=(0,))[1] == 150
    assert target_counts([9000] * 10, "step", ratio=10, n_max=9000, majority=(0,))[1] == 900
    # quotients that floating point puts just below a whole number: 110 / 2.2 = 49.99999999999999
    assert 110 / 2.2 < 50 and 110 / 1.1 < 100
    assert target_counts([110] * 2, "step", ratio=2.2, n_max=110, majority=(0,)) == [110, 50]
    assert target_counts([110] * 2, "step", ratio=1.1, n_max=110, majority=(0,)) == [110, 100]


def test_longtail_is_monotone_from_n_max_to_n_max_over_ratio():
    counts = target_counts([6000] * 10, "longtail", ratio=100, n_max=5000)
    assert counts[0] == 5000 and counts[-1] == 50
    assert all(a > b for a, b in zip(counts, counts[1:]))


def test_none_keeps_everything_and_default_n_max_is_smallest_class():
    assert target_counts([7, 9, 8], "none", ratio=10, n_max=None) == [7, 9, 8]
    assert target_counts([700, 900, 800], "step", ratio=10, n_max=None, majority=(1,)) == [70, 700, 70]


def test_same_seed_same_samples_and_not_first_n():
    counts = [100] * 10
    a = select_indices(FMNIST_LIKE, counts, seed=5)
    b = select_indices(FMNIST_LIKE, counts, seed=5)
    c = select_indices(FMNIST_LIKE, counts, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a[:100], np.arange(100))           # drawn, not the first N in file order


def test_too_many_requested_is_a_clear_error():
    with pytest.raises(DataError, match="only 400 are available"):
        target_counts([400] * 10, "step", ratio=10, n_max=500, majority=(0,), dataset="mnist5k")
    with pytest.raises(DataError, match="majority"):
        target_counts([400] * 10, "step", ratio=10, n_max=100, majority=(3, 3))


def test_validation_split_is_stratified_disjoint_and_seeded():
    kept = select_indices(FMNIST_LIKE, [600] * 2 + [60] * 8, seed=0)
    tr, va = split_validation(kept, FMNIST_LIKE, 0.1, seed=0)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(kept)
    assert per_class(FMNIST_LIKE[va], 10).tolist() == [60, 60] + [6] * 8
    assert np.array_equal(va, split_validation(kept, FMNIST_LIKE, 0.1, seed=0)[1])


def test_validation_never_takes_a_class_s_last_training_image():
    labels = np.array([0, 0] + [1] * 10)
    tr, va = split_validation(np.arange(12), labels, 0.9, seed=0)
    assert per_class(labels[tr], 2).tolist() == [1, 1] and per_class(labels[va], 2).tolist() == [1, 9]
    tr, va = split_validation(np.arange(1), labels[:1], 0.9, seed=0)  # a class of one image keeps it
    assert tr.tolist() == [0] and va.tolist() == []


def test_balanced_test_cap():
    idx = balanced_cap(FMNIST_LIKE, 55, 10, seed=0)
    assert len(idx) == 55 and per_class(FMNIST_LIKE[idx], 10).tolist() == [6] * 5 + [5] * 5


def test_majority_combinations_all_and_sampled():
    allc = majority_combinations(10, 2)
    assert len(allc) == 45 == len(set(allc))
    assert allc == list(itertools.combinations(range(10), 2)) and all(list(t) == sorted(t) for t in allc)
    assert len(majority_combinations(10, 8)) == 45
    s1, s2 = majority_combinations(10, 2, sample=7, seed=0), majority_combinations(10, 2, sample=7, seed=0)
    assert s1 == s2 and len(set(s1)) == 7 and set(s1) <= set(allc)
    assert s1 != majority_combinations(10, 2, sample=7, seed=1)
    big = majority_combinations(257, 8, sample=5, seed=0)      # C(257, 8) ≈ 1.6e14: sampled, not enumerated
    assert len(set(big)) == 5 and all(len(t) == 8 and list(t) == sorted(t) for t in big)


def test_build_data_counts_and_val(tmp_path):
    b = build_data("mnist5k", backbone="lenet", root=str(tmp_path), imbalance="step", ratio=10, n_max=400,
                   majority=(1, 2), val_fraction=0.1, seed=3)
    kept = [c["kept"] + c["val"] for c in b.class_counts]
    assert kept == [40, 400, 400] + [40] * 7 and b.majority == (1, 2)
    assert sum(c["kept"] for c in b.class_counts) == len(b.train)
    assert sum(c["val"] for c in b.class_counts) == len(b.val) == 4 + 40 + 40 + 4 * 7
    assert sum(c["test"] for c in b.class_counts) == len(b.test) == 1000


# SVHN's official training split per class (digits 0-9; they sum to its 73,257 images). Classes 0 and 9 have
# fewer than the 5,000 that §4.1 gives a majority class.
SVHN_TRAIN = [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659]


def test_svhn_preset_takes_every_majority_pair_the_paper_draws():
    from dfg.config import make_config

    cfg = make_config("svhn")
    assert sum(SVHN_TRAIN) == 73257 and cfg.short_classes == "all"
    refused = 0
    for pair in itertools.combinations(range(10), 2):
        notes: list[str] = []
        counts = target_counts(SVHN_TRAIN, "step", ratio=cfg.ratio, n_max=cfg.n_max, majority=pair,
                               dataset="svhn", short_classes=cfg.short_classes, warnings=notes)
        assert counts == [min(5000, have) if k in pair else 500 for k, have in enumerate(SVHN_TRAIN)]
        short = [k for k in pair if SVHN_TRAIN[k] < 5000]
        assert [n.split(" has ")[0] for n in notes] == [f"svhn: class {k}" for k in short]
        try:
            target_counts(SVHN_TRAIN, "step", ratio=cfg.ratio, n_max=cfg.n_max, majority=pair, dataset="svhn")
        except DataError as e:
            refused += 1
            assert short and "set short_classes=all" in str(e) and f"only {SVHN_TRAIN[short[0]]}" in str(e)
        else:
            assert not short
    assert refused == 17  # 9 pairs with class 0, 9 with class 9, one with both


def test_short_classes_all_keeps_what_a_class_has_and_says_so(tmp_path):
    with pytest.raises(DataError, match="short_classes=all"):
        build_data("mnist5k", backbone="lenet", root=str(tmp_path), ratio=10, n_max=600, majority=(1, 2))
    b = build_data("mnist5k", backbone="lenet", root=str(tmp_path), ratio=10, n_max=600, majority=(1, 2),
                   short_classes="all")
    assert [c["kept"] for c in b.class_counts] == [60, 400, 400] + [60] * 7  # MNIST 5k's train split: 400 a class
    assert len(b.train) == 800 + 8 * 60
    short = [w for w in b.warnings if "short_classes=all" in w]
    assert len(short) == 2 and "class 1" in short[0] and "fewer than the 600" in short[0]
    assert b.summary()["warnings"] == b.warnings
    with pytest.raises(DataError, match="short_classes='some' is invalid"):
        target_counts([500] * 10, "step", ratio=10, n_max=600, majority=(1,), short_classes="some")
