"""Batch streams (dfg.data.batches): reproducible from (seed, batches drawn), resumable without replaying,
and the vectorised VGG augmentation keeps shapes and the [−1, 1] range and matches a per-sample reference."""
import numpy as np
import pytest
import torch

from dfg.data import BatchStream, FileImages, TensorImages, build_data, iterate_batches
from dfg.data.transforms import BACKBONE_INPUT, crop_flip


def _toy(n=50, augment=None) -> TensorImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return TensorImages(images, torch.arange(n) % 10, augment=augment)


def _draw(stream, k):
    return [stream.next() for _ in range(k)]


def _same(a, b):
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


@pytest.mark.parametrize("augment", [None, "flipcrop"])
def test_same_seed_same_batches(augment):
    ds = _toy(augment=augment)
    a, b = _draw(BatchStream(ds, 8, seed=1), 9), _draw(BatchStream(ds, 8, seed=1), 9)   # 9 > 6 per epoch
    assert _same(a, b)
    assert not _same(a, _draw(BatchStream(ds, 8, seed=2), 9))
    x, y = a[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_each_batch_gets_its_own_crops_and_flips():
    """flipcrop draws new offsets and flips for every batch: the same images in two batches differ."""
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ds = TensorImages(image.repeat(16, 1, 1, 1), torch.zeros(16, dtype=torch.int64), augment="flipcrop")
    s = BatchStream(ds, 8, seed=0)
    batches = [s.next()[0] for _ in range(4)]
    assert all(not torch.equal(a, b) for i, a in enumerate(batches) for b in batches[i + 1:])
    assert not all(torch.equal(batches[0][0], row) for row in batches[0][1:])  # and every row its own


def test_epochs_are_permutations_drop_last():
    ds = _toy(n=50)
    s = BatchStream(ds, 8, seed=0)
    assert s.batches_per_epoch == 6
    seen = torch.cat([s.indices(k) for k in range(6)])
    assert len(set(seen.tolist())) == 48                       # one epoch: 48 distinct, 2 dropped
    assert not torch.equal(s.indices(0), s.indices(6))         # the next epoch reshuffles


@pytest.mark.parametrize("augment", [None, "flipcrop"])
def test_resume_jumps_to_the_same_next_batch(augment):
    ds = _toy(augment=augment)
    full = _draw(BatchStream(ds, 8, seed=3), 12)
    first = BatchStream(ds, 8, seed=3)
    _draw(first, 5)
    state = first.state_dict()
    assert state == {"drawn": 5}
    resumed = BatchStream(ds, 8, seed=3)
    resumed.load_state_dict({"drawn": 9})                       # a jump, nothing replayed
    assert resumed.drawn == 9 and _same(_draw(resumed, 3), full[9:12])
    resumed.load_state_dict(state)
    assert _same(_draw(resumed, 2), full[5:7])


def test_file_backed_stream_resumes_too():
    rng = np.random.default_rng(0)
    items = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    ds = FileImages(items, np.arange(30) % 3, BACKBONE_INPUT["vgg16"], train=True)
    full = _draw(BatchStream(ds, 4, seed=0), 10)
    resumed = BatchStream(ds, 4, seed=0)
    resumed.load_state_dict({"drawn": 8})
    assert _same(_draw(resumed, 2), full[8:10])
    x, _ = full[0]
    assert x.shape == (4, 3, 32, 32) and -1 <= x.min() and x.max() <= 1


def test_vgg_augmentation_keeps_shape_and_range_and_changes_images(tmp_path):
    b = build_data("glyphs", backbone="vgg16", root=str(tmp_path), imbalance="none", limit_test=10)
    assert b.train.augment == "flipcrop"
    s = BatchStream(b.train, 64, seed=0)
    x, _ = s.next()
    assert x.shape == (64, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    plain = torch.stack([b.train[int(i)][0] for i in s.indices(0)])
    assert not torch.equal(x, plain)


def test_crop_flip_matches_a_per_sample_reference():
    batch = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = crop_flip(batch, 32, 4, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)                                  # replay the same draws
    oy, ox = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(batch, (4, 4, 4, 4))
    for i in range(16):
        ref = padded[i, :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        assert torch.equal(out[i], ref.flip(-1) if flip[i] else ref)


def test_iterate_batches_is_one_ordered_pass():
    ds = _toy(n=21)
    batches = list(iterate_batches(ds, 8))
    assert [len(y) for _, y in batches] == [8, 8, 5]
    assert torch.equal(torch.cat([y for _, y in batches]), ds.labels)
    assert torch.equal(batches[0][0][0], ds[0][0])
