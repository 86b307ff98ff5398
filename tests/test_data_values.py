"""Value checks of the data pipeline that a mutation review found missing: the normalisation, where a 28×28
image lands in 32×32, the centre crop, transparency and 16-bit decoding, the training augmentation of
file-backed data, which split and which label each image ends up in, seeded draws, caches, class-name
order, the torchvision adapters and what a failed download leaves behind. Tiny synthetic data only."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfg.data import BatchStream, DataError, FileImages, TensorImages, build_data, build_source_data
from dfg.data import build, download, glyphs, offline
from dfg.data.classnames import CALTECH256, CIFAR10, FMNIST, FOOD101, STL10
from dfg.data.files import load_caltech256, load_cinic10
from dfg.data.imbalance import draw_majority, target_counts
from dfg.data.raw import RawSplits, fixed_split
from dfg.data.transforms import (BACKBONE_INPUT, adapt_array, center_crop, image_to_input, resize_image, to_float,
                                 to_mode)

VGG, LENET = BACKBONE_INPUT["vgg16"], BACKBONE_INPUT["lenet"]


def _u8(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# -- transforms ------------------------------------------------------------------------------------------

def test_to_float_maps_black_to_minus_one_and_white_to_one():
    x = to_float(torch.tensor([0, 255, 51], dtype=torch.uint8))
    assert torch.allclose(x, torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


def test_a_28_pixel_image_is_centred_in_32_on_both_paths():
    x = _u8(2, 28, 28, seed=1) | 1                                # no zero pixel inside the image
    t = adapt_array(x, LENET)
    assert t.shape == (2, 1, 32, 32)
    assert torch.equal(t[:, 0, 2:30, 2:30], torch.from_numpy(x))
    assert int(t[:, :, :2].sum()) == int(t[:, :, 30:].sum()) == int(t[..., :2].sum()) == int(t[..., 30:].sum()) == 0
    pil = np.asarray(resize_image(Image.fromarray(x[0]), 32))     # the file path (folders, FileImages)
    assert np.array_equal(pil, t[0, 0].numpy())


def test_arrays_keep_rows_columns_and_channels():
    x = _u8(3, 32, 32, 3, seed=2)                                 # already 32: no resize, no padding
    assert torch.equal(adapt_array(x, VGG), torch.from_numpy(x).permute(0, 3, 1, 2))


@pytest.mark.parametrize("spec", [VGG, LENET], ids=["rgb", "gray"])
def test_array_and_file_paths_give_the_same_test_view(spec):
    """A native array adapted in memory (TensorImages) and the same image decoded per sample (FileImages)
    give identical inputs: same resize, same gray conversion, same orientation."""
    x = _u8(4, 20, 36, 3, seed=3)                                 # not square: a transposition shows
    mem = to_float(adapt_array(x, spec))
    files = FileImages(x, np.arange(4), spec, train=False)
    for i in range(4):
        assert torch.equal(files[i][0], mem[i])
        assert torch.equal(image_to_input(Image.fromarray(x[i]), spec, None), mem[i])


def test_centre_crop_takes_the_middle():
    x = torch.arange(36).view(1, 1, 6, 6)
    assert torch.equal(center_crop(x, 4), x[..., 1:5, 1:5])
    img = _u8(256, 256, 3, seed=4)
    out = image_to_input(Image.fromarray(img), BACKBONE_INPUT["resnet50"], None)   # ResNet-50's test view
    assert torch.equal(out, to_float(torch.from_numpy(img[16:240, 16:240]).permute(2, 0, 1)))


def test_transparent_pixels_become_black():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[...] = (255, 255, 255, 0)                                # white, fully transparent
    rgba[0, 0] = (10, 20, 30, 255)                                # one opaque pixel
    out = np.asarray(to_mode(Image.fromarray(rgba, "RGBA"), 3))
    assert out[0, 0].tolist() == [10, 20, 30] and (out[1, 1] == 0).all()


def test_16_bit_images_are_scaled_by_their_range_not_clipped():
    a = np.array([[0, 65535], [32768, 256]], dtype=np.uint16)
    out = np.asarray(to_mode(Image.fromarray(a), 1))
    assert out.tolist() == [[0, 255], [128, 1]]


def test_gray_for_an_rgb_backbone_is_gray_in_every_channel():
    img = Image.fromarray(_u8(8, 8, 3, seed=5))
    out = np.asarray(to_mode(img, 3, gray=True))
    gray = np.asarray(img.convert("L"))
    assert all(np.array_equal(out[..., c], gray) for c in range(3))


def _find_crop(out, padded, crop):
    """(top, left, flipped) of the window of `padded` that `out` is, or None."""
    hits = [(t, lft, f) for t in range(padded.shape[1] - crop + 1) for lft in range(padded.shape[2] - crop + 1)
            for f in (False, True)
            if torch.equal(out, (lambda w: w.flip(-1) if f else w)(padded[:, t:t + crop, lft:lft + crop]))]
    return hits[0] if len(hits) == 1 else None


def test_file_training_augmentation_is_vgg_pad_4_random_crop_and_horizontal_flip():
    """VGG-16's per-sample augmentation: zero-pad 4, a 32×32 window anywhere in the 40×40 (all 9 offsets
    each way), flipped left-right half the time; a fixed aug_seed draws the same view again."""
    assert VGG.pad == 4 and VGG.crop == 32
    img = _u8(32, 32, 3, seed=6) | 1
    padded = torch.nn.functional.pad(to_float(torch.from_numpy(img).permute(2, 0, 1)), (4,) * 4, value=-1.0)
    draws = [_find_crop(image_to_input(Image.fromarray(img), VGG, s), padded, 32) for s in range(120)]
    assert None not in draws
    assert {t for t, _, _ in draws} == set(range(9)) and {lft for _, lft, _ in draws} == set(range(9))
    assert {f for _, _, f in draws} == {False, True}
    assert torch.equal(image_to_input(Image.fromarray(img), VGG, 7), image_to_input(Image.fromarray(img), VGG, 7))


def test_an_int_index_gives_the_unaugmented_view_even_of_a_training_set():
    x = _u8(5, 32, 32, 3, seed=7)
    centre = to_float(adapt_array(x, VGG))
    for train in (True, False):
        ds = FileImages(x, np.arange(5), VGG, train=train)
        assert all(torch.equal(ds[i][0], centre[i]) for i in range(5))


# -- build_data on coded synthetic splits ----------------------------------------------------------------

def _coded_raw(n_train=12, n_test=3, rgb=False) -> RawSplits:
    """10 classes in shuffled order; pixel [1, 1] = 20·label + split (1 train, 2 test), pixel [0, 0] = index."""
    rng = np.random.default_rng(0)

    def split(n, marker):
        y = rng.permutation(np.repeat(np.arange(10), n))
        x = np.zeros((len(y), 32, 32), np.uint8)
        x[:, 1, 1] = 20 * y + marker
        x[:, 0, 0] = np.arange(len(y))
        if rgb:   # R as above, G and B different: a gray conversion changes them
            x = np.stack([x, 255 - x, x // 2], axis=-1)
        return x, y

    (xtr, ytr), (xte, yte) = split(n_train, 1), split(n_test, 2)
    return RawSplits(xtr, ytr, xte, yte, tuple(str(d) for d in range(10)))


@pytest.fixture()
def coded(monkeypatch):
    raw = _coded_raw()
    monkeypatch.setattr(build, "_load", lambda name, root, **kw: raw)
    return raw


def _codes(ds: TensorImages):
    return ds.images[:, 0, 1, 1].long(), ds.images[:, 0, 0, 0].long()


@pytest.mark.parametrize("backbone", ["lenet", "vgg16"])
def test_every_split_holds_its_own_images_with_their_labels(coded, backbone):
    b = build_data("digits", backbone=backbone, root=None, imbalance="none", val_fraction=0.25, seed=0)
    for ds, marker in ((b.train, 1), (b.val, 1), (b.test, 2)):
        code, _ = _codes(ds)
        assert torch.equal(code, 20 * ds.labels + marker)
    assert len(b.test) == 30 and len(b.train) + len(b.val) == 120
    assert b.train.augment == (None if backbone == "lenet" else "flipcrop")
    assert b.val.augment is None and b.test.augment is None      # never augment what is evaluated


def test_seeds_draw_other_majorities_and_other_samples(coded):
    assert len({draw_majority(10, 2, s) for s in range(6)}) > 1
    majorities = {build_data("digits", backbone="lenet", root=None, ratio=4, n_max=12, seed=s).majority
                  for s in range(6)}
    assert len(majorities) > 1
    kept = [set(_codes(build_data("digits", backbone="lenet", root=None, ratio=4, n_max=12, majority=(0, 1),
                                  seed=s).train)[1].tolist()) for s in (0, 1)]
    assert len(kept[0]) == len(kept[1]) == 2 * 12 + 8 * 3 and kept[0] != kept[1]


def test_a_given_majority_is_recorded_sorted(coded):
    b = build_data("digits", backbone="lenet", root=None, ratio=4, n_max=12, majority=(5, 2))
    assert b.majority == (2, 5) and b.summary()["majority"] == [2, 5]
    assert [c["kept"] for c in b.class_counts] == [3, 3, 12, 3, 3, 12, 3, 3, 3, 3]


def test_grayscale_makes_an_rgb_dataset_gray_for_vgg(monkeypatch):
    raw = _coded_raw(rgb=True)
    monkeypatch.setattr(build, "_load", lambda name, root, **kw: raw)
    colour = build_data("digits", backbone="vgg16", root=None, imbalance="none")
    assert not torch.equal(colour.train.images[:, 0], colour.train.images[:, 1])
    gray = build_data("digits", backbone="vgg16", root=None, imbalance="none", grayscale=True)
    x = gray.train.images
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_a_source_subset_follows_the_seed_and_its_test_set_is_not_augmented(coded):
    a, b = (build_source_data("digits", backbone="vgg16", root=None, n_per_class=4, seed=s) for s in (0, 1))
    assert [c["kept"] for c in a.class_counts] == [4] * 10
    assert set(_codes(a.train)[1].tolist()) != set(_codes(b.train)[1].tolist())
    assert a.train.augment == "flipcrop" and a.test.augment is None


def test_glyphs_and_mnist_concatenated_keep_labels_with_their_images():
    g = np.zeros((4, 32, 32), np.uint8)
    g[:, 5, 5] = [10, 11, 12, 13]
    m = np.zeros((3, 28, 28), np.uint8)
    m[:, 0, 0] = [20, 21, 22]                                    # 28×28 top-left → (2, 2) after padding
    a = RawSplits(g, np.array([0, 1, 2, 3]), g[:1], np.array([0]), ("0", "1", "2", "3"))
    b = RawSplits(m, np.array([3, 2, 1]), m[:1], np.array([3]), ("0", "1", "2", "3"))
    cat = build._concat(a, b)
    assert cat.train_items.shape == (7, 32, 32)
    codes = np.concatenate([cat.train_items[:4, 5, 5], cat.train_items[4:, 2, 2]])
    assert codes.tolist() == [10, 11, 12, 13, 20, 21, 22]
    assert cat.train_labels.tolist() == [0, 1, 2, 3, 3, 2, 1] and cat.test_labels.tolist() == [0, 3]


def test_glyphs_never_create_a_missing_data_root_but_cache_in_an_existing_one(tmp_path, monkeypatch):
    def fake_render(n, seed):
        return np.full((n, 32, 32), seed, np.uint8), np.arange(n, dtype=np.int64) % 10

    monkeypatch.setattr(glyphs, "render_glyphs", fake_render)
    absent = tmp_path / "absent"
    build.load_raw("glyphs", absent, glyphs_train=20)
    assert not absent.exists()
    (tmp_path / "root").mkdir()
    raw = build.load_raw("glyphs", tmp_path / "root", glyphs_train=20)
    assert len(raw.train_labels) == 20 and len(list((tmp_path / "root" / "glyphs").glob("*.npz"))) == 2
    assert (raw.train_items == 0).all() and (raw.test_items == 1).all()   # train seed 0, test seed 1


# -- glyphs ----------------------------------------------------------------------------------------------

def test_a_broken_glyph_cache_file_is_rendered_again(tmp_path):
    path = tmp_path / f"glyphs_n20_s3_{glyphs.glyphs_tag()}.npz"
    path.write_bytes(b"not an npz file")
    x, y = glyphs.load_glyphs(20, 3, tmp_path)
    ref, ref_y = glyphs.render_glyphs(20, 3)
    assert np.array_equal(x, ref) and np.array_equal(y, ref_y)
    with np.load(path) as z:                                      # and the broken file is replaced
        assert np.array_equal(z["images"], ref)


def test_rendered_glyphs_are_the_callers_own_copy():
    x, y = glyphs.render_glyphs(12, 5)
    keep = x.copy()
    x[:] = 0
    y[:] = 0
    again, labels = glyphs.render_glyphs(12, 5)
    assert np.array_equal(again, keep) and labels.tolist() == [i % 10 for i in range(12)]


# -- offline loaders -------------------------------------------------------------------------------------

def test_sklearn_digits_are_scaled_from_0_16_to_0_255():
    raw = offline.load_digits()
    values = np.unique(np.concatenate([raw.train_items.ravel(), raw.test_items.ravel()]))
    assert values.min() == 0 and values.max() == 255
    assert set(values.tolist()) <= {int(round(k * 255 / 16)) for k in range(17)}


def _write_idx(path, array: np.ndarray, gz=True):
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    (gzip.open if gz else open)(path, "wb").write(head + array.astype(np.uint8).tobytes())


def test_idx_files_round_trip_and_a_truncated_one_is_a_data_error(tmp_path):
    a = _u8(3, 4, 5, seed=8)
    _write_idx(tmp_path / "a.gz", a)
    _write_idx(tmp_path / "b", a, gz=False)
    assert np.array_equal(offline.read_idx(tmp_path / "a.gz"), a) and np.array_equal(offline.read_idx(tmp_path / "b"), a)
    (tmp_path / "short").write_bytes((tmp_path / "b").read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated"):
        offline.read_idx(tmp_path / "short")


def test_fmnist_files_in_the_data_root(tmp_path, monkeypatch):
    """Without Debian's package: a missing set names <root>/fmnist and the command; four tiny IDX files there
    are read as train/test images/labels, the 28×28 images centred in 32×32."""
    monkeypatch.setattr(offline, "DEBIAN_FMNIST", str(tmp_path / "no-debian"))
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        offline.load_fmnist(root)
    msg = str(err.value)
    assert str(root / "fmnist" / "train-images-idx3-ubyte.gz") in msg
    assert f"python -m dfg data --download fmnist --data-root {root}" in msg
    (root / "fmnist").mkdir(parents=True)
    xtr, xte = _u8(20, 28, 28, seed=9) | 1, _u8(10, 28, 28, seed=10) | 1
    ytr, yte = np.arange(20) % 10, (np.arange(10) * 3) % 10
    for stem, arr in (("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                      ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)):
        _write_idx(root / "fmnist" / f"{stem}.gz", arr)
    b = build_data("fmnist", backbone="lenet", root=str(root), imbalance="none")
    assert torch.equal(b.test.images[:, 0, 2:30, 2:30], torch.from_numpy(xte))
    assert b.test.labels.tolist() == yte.tolist() and b.class_names == FMNIST
    assert np.array_equal(b.train.images[:, 0, 2:30, 2:30].numpy(), xtr)      # all kept, in file order
    assert b.train.labels.tolist() == ytr.tolist()


def test_fixed_split_is_constant_disjoint_and_tests_every_class():
    labels = np.repeat(np.arange(3), [2, 5, 11])
    tr, te = fixed_split(labels, 0.2, 7)
    assert np.intersect1d(tr, te).size == 0 and np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(18))
    assert np.bincount(labels[te], minlength=3).tolist() == [1, 1, 2]     # 0.4 → 1 (at least one), 1, 2.2 → 2
    again = fixed_split(labels, 0.2, 7)
    assert np.array_equal(tr, again[0]) and np.array_equal(te, again[1])


# -- folders ---------------------------------------------------------------------------------------------

def _save(path, r, g):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), (r, g, 9), np.uint8)).save(path)


NAMES = ("zebra", "ant", "moose", "bee", "yak", "cow", "emu")     # created unsorted


def test_folder_train_and_test_trees_classes_in_sorted_order(tmp_path):
    """train/ and test/ are read as such (3 vs 1 per class), upper-case extensions count, and a class's
    label is its index in sorted name order whatever order the file system lists the folders in."""
    for name in NAMES:
        k = sorted(NAMES).index(name)
        for i in range(3):
            _save(tmp_path / "train" / name / (f"{i}.PNG" if i == 0 else f"{i}.png"), 30 * k + 10, 100)
        _save(tmp_path / "test" / name / "0.png", 30 * k + 10, 200)
    b = build_data("folder", backbone="vgg16", root=str(tmp_path), folder=str(tmp_path), imbalance="none")
    assert b.class_names == tuple(sorted(NAMES))
    assert len(b.train) == 3 * len(NAMES) and len(b.test) == len(NAMES)
    for ds, g in ((b.train, 100), (b.test, 200)):
        assert torch.equal(ds.images[:, 0, 5, 5].long(), 30 * ds.labels + 10)
        assert (ds.images[:, 1] == g).all()


def test_folder_class_with_a_single_image_is_refused(tmp_path):
    for i in range(3):
        _save(tmp_path / "a" / f"{i}.png", 1, 1)
    _save(tmp_path / "b" / "0.png", 2, 2)
    with pytest.raises(DataError, match=r"\['b'\] .*single readable image"):
        build_data("folder", backbone="vgg16", root=str(tmp_path), folder=str(tmp_path))


# -- file-backed sets ------------------------------------------------------------------------------------

def test_caltech_train_and_test_images_are_disjoint(tmp_path):
    for cat in ("001.ak47", "002.american-flag"):
        d = tmp_path / "caltech256" / "256_ObjectCategories" / cat
        d.mkdir(parents=True)
        for i in range(6):
            (d / f"{i}.jpg").write_bytes(b"")                    # the split needs names only
    raw = load_caltech256(tmp_path, seed=3, n_train=3, n_test=2)
    assert len(raw.train_items) == 6 and len(raw.test_items) == 4
    assert not set(raw.train_items) & set(raw.test_items)
    assert raw.train_labels.tolist() == [0] * 3 + [1] * 3 and raw.test_labels.tolist() == [0, 0, 1, 1]


def test_cinic_labels_follow_the_class_folder_each_file_is_in(tmp_path):
    for part in ("train", "test"):
        for name in CIFAR10:
            (tmp_path / "cinic10" / part / name).mkdir(parents=True)
            (tmp_path / "cinic10" / part / name / f"{name}-0.png").write_bytes(b"")   # the loader lists names only
    raw = load_cinic10(tmp_path)
    for items, labels in ((raw.train_items, raw.train_labels), (raw.test_items, raw.test_labels)):
        assert len(items) == 10 and [raw.class_names[k] for k in labels] == [Path(f).parent.name for f in items]


def test_class_name_lists_are_in_the_datasets_own_order():
    import torchvision.datasets as tvd

    assert FMNIST == tuple(tvd.FashionMNIST.classes)             # label k's name in the IDX files
    assert CIFAR10 == tuple(sorted(CIFAR10)) and STL10 == tuple(sorted(STL10))   # both are alphabetical
    assert FOOD101 == tuple(sorted(FOOD101)) and len(FOOD101) == 101
    assert len(CALTECH256) == 257 and CALTECH256[0] == "ak47" and CALTECH256[-1] == "clutter"


# -- torchvision adapters (fake dataset classes, no files read) -----------------------------------------

def _fake_tv(monkeypatch, tmp_path, name):
    from dfg.data import torchvision_sets as tvs
    import torchvision.datasets as tvd

    folder, files, _ = tvs.TORCHVISION_FILES[name]
    for f in files:
        (tmp_path / folder / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / f).write_bytes(b"")
    made = {}

    def data(train, shape):
        x = _u8(*shape, seed=11 + train)
        made[train] = x
        return x

    class SVHN:
        def __init__(self, where, split, download):
            self.data, self.labels = data(split == "train", (3, 3, 4, 4)), np.array([1, 2, 3]) + (split == "train")

    class CIFAR10:
        def __init__(self, where, train, download):
            self.data, self.targets = data(train, (3, 4, 4, 3)), [1 + train, 2, 3]

    class EMNIST:
        def __init__(self, where, split, train, download):
            assert split == "digits"
            self.data, self.targets = torch.from_numpy(data(train, (3, 4, 4))), torch.tensor([1 + train, 2, 3])

    for cls in (SVHN, CIFAR10, EMNIST):
        monkeypatch.setattr(tvd, cls.__name__, cls)
    return tvs.load_torchvision(name, tmp_path), made


def test_torchvision_sets_keep_train_and_test_apart_and_images_upright(tmp_path, monkeypatch):
    raw, made = _fake_tv(monkeypatch, tmp_path / "s", "svhn")
    assert np.array_equal(raw.train_items, made[True].transpose(0, 2, 3, 1)) and raw.train_labels.tolist() == [2, 3, 4]
    assert np.array_equal(raw.test_items, made[False].transpose(0, 2, 3, 1)) and raw.test_labels.tolist() == [1, 2, 3]
    raw, made = _fake_tv(monkeypatch, tmp_path / "c", "cifar10")
    assert np.array_equal(raw.train_items, made[True]) and raw.train_labels.tolist() == [2, 2, 3]
    assert np.array_equal(raw.test_items, made[False]) and raw.test_labels.tolist() == [1, 2, 3]
    raw, made = _fake_tv(monkeypatch, tmp_path / "e", "emnist")  # EMNIST stores images transposed
    assert np.array_equal(raw.train_items, made[True].transpose(0, 2, 1)) and raw.train_labels.tolist() == [2, 2, 3]
    assert np.array_equal(raw.test_items, made[False].transpose(0, 2, 1))


# -- download clean-up -----------------------------------------------------------------------------------

def test_a_failed_download_keeps_a_partial_archive_and_an_existing_root(tmp_path, monkeypatch):
    def offline_with_partial(name, root):
        (root / name).mkdir(parents=True)
        (root / name / "part.tar.gz").write_bytes(b"half")
        (root / "empty").mkdir()
        raise OSError("Name or service not known")

    monkeypatch.setattr(download, "_download", offline_with_partial)
    with pytest.raises(DataError, match="offline"):
        download.download_dataset("svhn", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svhn"] and (tmp_path / "svhn" / "part.tar.gz").is_file()

    def offline_empty(name, root):
        raise OSError("Name or service not known")

    monkeypatch.setattr(download, "_download", offline_empty)
    (tmp_path / "root").mkdir()                                   # an existing, empty data root stays
    with pytest.raises(DataError):
        download.download_dataset("svhn", tmp_path / "root")
    assert (tmp_path / "root").is_dir()


# -- batch streams and imbalance -------------------------------------------------------------------------

def test_file_backed_batches_augment_each_sample_on_its_own_and_resume_on_the_same_stream():
    img = _u8(1, 32, 32, 3, seed=12)
    ds = FileImages(np.repeat(img, 8, axis=0), np.zeros(8, np.int64), VGG, train=True)
    s = BatchStream(ds, 8, seed=0)
    first = [s.next() for _ in range(3)]
    x = first[0][0]
    assert len({tuple(row.flatten()[:64].tolist()) for row in x}) > 1   # the same image, different crops
    s.load_state_dict({"drawn": 1})                               # back on the same stream: batch 1 again
    assert torch.equal(s.next()[0], first[1][0])


def test_no_imbalance_with_n_max_caps_every_class():
    assert target_counts([7, 9, 8], "none", ratio=10, n_max=8) == [7, 8, 8]
