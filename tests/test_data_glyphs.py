"""Printed glyphs (dfg.data.glyphs): seeded, right shapes and labels, and they look like digits — a small
LeNet-5 trained on them for a few hundred steps reads MNIST 5k well above chance."""
import numpy as np
import torch
from torch import nn

from dfg.data import BatchStream, build_data, build_source_data, iterate_batches
from dfg.data import glyphs


def _fresh(n, seed):
    glyphs._render_cached.cache_clear()   # really re-render, not the memoised arrays
    return glyphs.render_glyphs(n, seed)


def test_glyphs_are_deterministic_for_a_seed():
    a, la = _fresh(300, 3)
    b, lb = _fresh(300, 3)
    c, _ = _fresh(300, 4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert (a != c).mean() > 0.2


def test_glyph_shapes_labels_and_ink():
    x, y = glyphs.render_glyphs(250, 0)
    assert x.shape == (250, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and np.array_equal(y, np.arange(250) % 10)
    assert (x.reshape(250, -1).max(1) > 150).all()              # every glyph has ink
    assert (x[:, 0, :] == 0).mean() > 0.95                       # and a dark border, like MNIST
    assert len(glyphs.font_paths()) >= 2                         # matplotlib's fonts plus Pillow's own


def test_glyph_disk_cache(tmp_path, monkeypatch):
    """The disk cache is named by the draw and by what renders it: a changed renderer, font set or Pillow
    renders anew (and, through the source cache key, pretrains a new source) instead of reusing old images."""
    from dfg.config import make_config
    from dfg.source import source_key

    a, la = glyphs.load_glyphs(40, 7, tmp_path)
    assert (tmp_path / f"glyphs_n40_s7_{glyphs.glyphs_tag()}.npz").is_file()
    b, lb = glyphs.load_glyphs(40, 7, tmp_path)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    key = source_key(make_config("demo"), 1)
    monkeypatch.setattr(glyphs, "GLYPHS_VERSION", glyphs.GLYPHS_VERSION + 1)
    glyphs.glyphs_tag.cache_clear()
    try:
        glyphs.load_glyphs(40, 7, tmp_path)
        assert len(list(tmp_path.glob("glyphs_n40_s7_*.npz"))) == 2
        assert source_key(make_config("demo"), 1) != key
    finally:
        glyphs.glyphs_tag.cache_clear()


def _lenet5() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 10))


def test_lenet_trained_on_glyphs_reads_mnist5k(tmp_path):
    # One intra-op thread: tiny convs gain nothing from two, and with another busy process on a 2-core
    # machine two OpenMP threads spin-wait each other (measured 128 s instead of 1.5 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_and_check(str(tmp_path))
    finally:
        torch.set_num_threads(threads)


def _train_and_check(root):
    torch.manual_seed(0)
    source = build_source_data("glyphs", backbone="lenet", root=root, n_per_class=500)   # 5,000 glyphs
    target = build_data("mnist5k", backbone="lenet", imbalance="none")          # test: 1,000 real digits
    net = _lenet5()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    stream = BatchStream(source.train, 64, seed=0)
    for _ in range(300):
        x, y = stream.next()
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    correct = total = 0
    with torch.no_grad():
        for x, y in iterate_batches(target.test, 500):
            correct += (net(x).argmax(1) == y).sum().item()
            total += len(y)
    # Measured: 0.65 at 300 steps (chance is 0.10); ~3 s on one CPU thread.
    assert total == 1000 and correct / total > 0.40
