"""Your own images (dfg.data.folder): a tiny generated tree with a corrupt, a truncated, a grayscale, an
RGBA, a CMYK, a palette, a 16-bit and a non-image file; the errors a user can hit before training."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from dfg.data import DataError, TensorImages, build_data


def _img(mode: str, size=(40, 30), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (size[1], size[0])).astype(np.uint16))
    return rgb.convert(mode)


def _make_tree(base):
    """cat: 4 good (RGB, gray, RGBA, CMYK jpg) + corrupt.png + truncated.jpg + notes.txt + .DS_Store;
    dog: 5 good (3 RGB, palette, 16-bit), one in a nested sub-folder."""
    (base / "cat").mkdir(parents=True)
    (base / "dog" / "nested").mkdir(parents=True)
    _img("RGB", seed=1).save(base / "cat" / "rgb.png")
    _img("L", seed=2).save(base / "cat" / "gray.png")
    _img("RGBA", seed=3).save(base / "cat" / "rgba.png")
    _img("CMYK", seed=4).save(base / "cat" / "cmyk.jpg")
    (base / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    buf = io.BytesIO()
    _img("RGB", size=(64, 64), seed=5).save(buf, format="JPEG")
    (base / "cat" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (base / "cat" / "notes.txt").write_text("not an image")
    (base / "cat" / ".DS_Store").write_bytes(b"\0\1")
    for i in range(3):
        _img("RGB", size=(50 + i, 20), seed=10 + i).save(base / "dog" / f"d{i}.png")
    _img("P", seed=20).save(base / "dog" / "palette.png")
    _img("I;16", seed=21).save(base / "dog" / "nested" / "sixteen.png")


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "data"
    _make_tree(root / "pets")
    return root


@pytest.mark.parametrize("backbone,channels", [("vgg16", 3), ("lenet", 1)])
def test_folder_loads_good_files_and_counts_skipped(tree, backbone, channels):
    b = build_data("folder", backbone=backbone, root=str(tree), folder=str(tree / "pets"), imbalance="none")
    assert b.class_names == ("cat", "dog") and b.num_classes == 2
    assert len(b.train) + len(b.test) == 9                       # 4 cats + 5 dogs readable
    assert [c["available"] + c["test"] for c in b.class_counts] == [4, 5]
    skipped = [w for w in b.warnings if w.startswith("skipped")]
    assert len(skipped) == 1 and "skipped 3 " in skipped[0]
    for name in ("corrupt.png", "truncated.jpg", "notes.txt"):
        assert name in skipped[0]
    assert isinstance(b.train, TensorImages) and b.in_channels == channels and b.image_size == 32
    x, y = b.train[0]
    assert x.shape == (channels, 32, 32) and -1 <= x.min() and x.max() <= 1 and y in (0, 1)


def test_folder_relative_to_root_and_grayscale_rgb(tree):
    b = build_data("folder", backbone="vgg16", root=str(tree), folder="pets", imbalance="none", grayscale=True)
    x = b.train.images
    assert x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_folder_train_test_layout(tmp_path):
    for part in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / part / c).mkdir(parents=True)
            for i in range(2):
                _img("RGB", seed=i).save(tmp_path / part / c / f"{i}.png")
    b = build_data("folder", backbone="lenet", root=str(tmp_path), folder=str(tmp_path), imbalance="none")
    assert len(b.train) == 4 and len(b.test) == 4 and not b.warnings
    (tmp_path / "test" / "c").mkdir()  # a class only the test split has: its images would be dropped silently
    _img("RGB").save(tmp_path / "test" / "c" / "0.png")
    with pytest.raises(DataError, match=r"has class sub-folder\(s\) \['c'\] that .*train lacks; add them to train/"):
        build_data("folder", backbone="lenet", root=str(tmp_path), folder=str(tmp_path), imbalance="none")


def test_one_class_folder_is_an_error(tmp_path):
    (tmp_path / "only").mkdir()
    _img("RGB").save(tmp_path / "only" / "x.png")
    with pytest.raises(DataError, match="at least 2"):
        build_data("folder", backbone="vgg16", root=str(tmp_path), folder=str(tmp_path))


def test_empty_class_is_an_error(tree):
    (tree / "pets" / "fish").mkdir()
    (tree / "pets" / "fish" / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"'fish' has no readable images"):
        build_data("folder", backbone="vgg16", root=str(tree), folder=str(tree / "pets"))


def test_path_escape_is_rejected(tmp_path):
    _make_tree(tmp_path / "outside")
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="outside the allowed data root"):
        build_data("folder", backbone="vgg16", root=str(tmp_path / "data"),
                   folder=str(tmp_path / "data" / ".." / "outside"))
    with pytest.raises(DataError, match="outside the allowed data root"):
        build_data("folder", backbone="vgg16", root=str(tmp_path / "data"), folder="../outside")


@pytest.mark.parametrize("backbone,size,hint", [("vgg16", 64, "image_size=32"), ("lenet", 28, "image_size=32"),
                                                ("resnet50", 224, "image_size=256")])
def test_image_size_the_backbone_cannot_take(tree, backbone, size, hint):
    with pytest.raises(DataError, match=hint):
        build_data("folder", backbone=backbone, root=str(tree), folder=str(tree / "pets"), image_size=size)


def test_resnet_folder_is_file_backed(tree):
    b = build_data("folder", backbone="resnet50", root=str(tree), folder=str(tree / "pets"), imbalance="none")
    assert b.image_size == 224 and len(b.train.labels) == len(b.train)
    x, _ = b.test[0]
    assert x.shape == (3, 224, 224)


@pytest.mark.parametrize("backbone,grayscale", [("vgg16", True), ("vgg16", None), ("lenet", None)])
def test_a_folder_read_per_batch_gives_the_pixels_it_gives_in_memory(tmp_path, monkeypatch, backbone, grayscale):
    """A folder over the memory limit is read per batch from its files. Both paths must decode a JPEG the
    same way: made gray for an RGB backbone, the file path once converted libjpeg's RGB while the array
    path decoded gray, a few levels apart."""
    import warnings

    import dfg.data.folder as folder

    for c in ("a", "b"):
        (tmp_path / "jpgs" / c).mkdir(parents=True)
        for i in range(3):
            _img("RGB", size=(48, 40), seed=30 + 3 * (c == "b") + i).save(tmp_path / "jpgs" / c / f"{i}.jpg")
    kw = dict(backbone=backbone, root=str(tmp_path), folder="jpgs", imbalance="none", grayscale=grayscale)
    in_memory = build_data("folder", **kw)
    monkeypatch.setattr(folder, "MEMORY_LIMIT", 0)
    per_batch = build_data("folder", **kw)
    assert isinstance(in_memory.test, TensorImages) and not isinstance(per_batch.test, TensorImages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # no "non-writable NumPy array" warning per image either
        views = [(in_memory.test[i][0], per_batch.test[i][0]) for i in range(len(in_memory.test))]
    assert all(torch.equal(a, b) for a, b in views)
