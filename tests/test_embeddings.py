"""Feature embeddings: what is collected from a real tiny DFG run, deterministic projections, the two
feature scores on constructed data, hover thumbnails and the memory/disk cache of embed_run."""
import base64
import io
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from dfg import embeddings as emb
from dfg.restored import restore_cached, to_rgb
from dfg.runstore import Run


@pytest.fixture(scope="module")
def restored(tiny_dfg_run):
    return restore_cached(tiny_dfg_run.run)  # (cfg, data, method, step)


@pytest.fixture(scope="module")
def feats(restored):
    _, data, method, _ = restored
    return emb.collect_features(method, data, n_real=100, n_fake=60, seed=3)


def test_collect_features_shapes_labels_and_balance(feats, restored):
    _, data, _, _ = restored
    fs = feats
    assert fs.features.shape == (160, 6 * 14 * 14) and fs.features.dtype == np.float32
    assert np.isfinite(fs.features).all()
    assert fs.is_real.sum() == 100 and (~fs.is_real).sum() == 60
    assert fs.labels.min() >= 0 and fs.labels.max() < data.num_classes
    real_idx = fs.index[fs.is_real]
    assert len(set(real_idx.tolist())) == 100 and real_idx.min() >= 0 and real_idx.max() < len(data.test)
    assert (fs.index[~fs.is_real] == -1).all()
    np.testing.assert_array_equal(fs.labels[fs.is_real], np.asarray(data.test.labels)[real_idx])
    assert np.bincount(fs.labels[fs.is_real], minlength=10).tolist() == [10] * 10   # class-balanced real
    assert np.bincount(fs.labels[~fs.is_real], minlength=10).tolist() == [6] * 10   # uniform ŷ


def test_collect_features_is_seeded_and_uses_w_star(feats, restored):
    _, data, method, _ = restored
    again = emb.collect_features(method, data, n_real=100, n_fake=60, seed=3)
    np.testing.assert_array_equal(again.index, feats.index)
    np.testing.assert_array_equal(again.labels, feats.labels)
    if next(method.generator.parameters()).is_cuda:  # cuDNN's transposed convs are not bit-deterministic
        np.testing.assert_allclose(again.features, feats.features, rtol=0, atol=1e-5)
    else:
        np.testing.assert_array_equal(again.features, feats.features)
    other = emb.collect_features(method, data, n_real=100, n_fake=60, seed=4)
    assert not np.array_equal(other.index, feats.index)
    saved = method.w_star
    try:  # G's output is weighted by the run's W*: other weights, other generated features, same real ones
        method.w_star = saved * 0.5
        changed = emb.collect_features(method, data, n_real=100, n_fake=60, seed=3)
    finally:
        method.w_star = saved
    np.testing.assert_array_equal(changed.features[:100], feats.features[:100])
    assert not np.allclose(changed.features[100:], feats.features[100:])


def test_method_without_generator_gives_real_points_only(restored):
    _, data, method, _ = restored
    plain = SimpleNamespace(extractor=method.extractor, classifier=method.classifier, features=method.extractor,
                            nets={"extractor": method.extractor, "classifier": method.classifier})
    fs = emb.collect_features(plain, data, n_real=30, n_fake=30)
    assert fs.is_real.all() and len(fs.labels) == 30
    assert emb.feature_metrics(fs)["separability"] is None


def test_wide_feature_maps_are_pooled_to_max_dim():
    import torch
    maps = torch.arange(2 * 256 * 56 * 56, dtype=torch.float32).reshape(2, 256, 56, 56)  # ResNet-50's E(x)
    flat = emb._flat(maps, emb.MAX_DIM)
    assert flat.shape == (2, 256 * 8 * 8)  # 8×8 per channel: the largest side within 16384 values
    assert flat[0, 0] == pytest.approx(maps[0, 0, :7, :7].mean().item())  # average of a 7×7 window
    assert emb._flat(maps[:, :6, :14, :14], emb.MAX_DIM).shape == (2, 6 * 14 * 14)  # LeNet: untouched


def test_pca_is_deterministic_and_ordered(feats):
    a = emb.project(feats.features, "pca", seed=0)
    b = emb.project(feats.features, "pca", seed=0)
    assert a.shape == (160, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert a[:, 0].var() >= a[:, 1].var()  # first component carries the most variance


def _clusters(n=300, k=3, dim=100, seed=0, spread=8.0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    centers = rng.normal(size=(k, dim)) * spread
    return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_tsne_umap_deterministic_finite_and_keep_clusters(method):
    x, labels = _clusters()
    a = emb.project(x, method, seed=1)
    b = emb.project(x, method, seed=1)
    assert a.shape == (300, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    # the 2-D map keeps the three clusters apart: each point's 5 nearest 2-D neighbours share its label
    assert emb.knn_label_agreement(a, labels, a, labels, k=5) == 1.0


def test_project_rejects_bad_input():
    x, _ = _clusters(n=20)
    with pytest.raises(ValueError, match="unknown projection"):
        emb.project(x, "mds")
    with pytest.raises(ValueError, match="at least 5 points"):
        emb.project(x[:3], "pca")
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        emb.project(x, "pca")


def test_knn_label_agreement_on_constructed_data():
    x, labels = _clusters(n=400, k=10, dim=20, seed=2)
    real, fake = slice(0, 200), slice(200, 400)
    assert emb.knn_label_agreement(x[real], labels[real], x[fake], labels[fake], k=5) == 1.0
    shuffled = np.random.default_rng(0).permutation(labels[fake])
    score = emb.knn_label_agreement(x[real], labels[real], x[fake], shuffled, k=5)
    assert score < 0.25  # chance is 0.1 for 10 classes


def test_knn_label_agreement_equals_a_plain_neighbour_search():
    """Overlapping classes (the score is neither 0 nor 1): the same score as a per-point loop over Euclidean
    distances, and feature_metrics reports it on the features themselves, not on their principal components."""
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(150, 80)), rng.normal(size=(90, 80))
    real_y, fake_y = rng.integers(0, 4, 150), rng.integers(0, 4, 90)
    real[:, 0] += real_y * 0.8  # some class signal
    fake[:, 0] += fake_y * 0.8
    votes = []
    for point in fake:
        near = np.argsort(np.linalg.norm(real - point, axis=1), kind="stable")[:5]
        votes.append(np.bincount(real_y[near]).argmax())
    expected = float(np.mean(np.array(votes) == fake_y))
    assert 0.2 < expected < 0.9
    assert emb.knn_label_agreement(real, real_y, fake, fake_y, k=5) == expected
    fs = emb.FeatureSet(np.concatenate([real, fake]).astype(np.float32), np.r_[real_y, fake_y],
                        np.r_[np.ones(150, bool), np.zeros(90, bool)], np.r_[np.arange(150), -np.ones(90, int)])
    m = emb.feature_metrics(fs)
    assert m["knn_label_agreement"] == emb.knn_label_agreement(fs.features[:150], real_y, fs.features[150:], fake_y)
    assert m["separability_dims"] == 50


def test_as_many_generated_points_as_real_ones_when_the_test_set_is_small(restored):
    _, data, method, _ = restored
    fs = emb.collect_features(method, data, n_real=len(data.test) + 500, seed=1)
    assert fs.is_real.sum() == len(data.test) == (~fs.is_real).sum()


def test_separability_indistinguishable_vs_shifted():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(200, 10)), rng.normal(size=(200, 10))
    assert 0.35 < emb.separability(real, fake) < 0.65
    assert emb.separability(real, fake + 3.0) > 0.95


def test_hover_images_are_the_test_images(restored):
    from PIL import Image
    _, data, _, _ = restored
    uris = emb.hover_images(data, [5, -1, 5, 7], size=64)
    assert uris[1] == "" and uris[0] == uris[2] and uris[0] != uris[3]
    png = Image.open(io.BytesIO(base64.b64decode(uris[3].split(",", 1)[1])))
    assert png.size == (64, 64)
    small = np.asarray(png)[::2, ::2]  # nearest-neighbour ×2: every other pixel is the original
    np.testing.assert_array_equal(small, to_rgb(data.test[7][0]))
    with pytest.raises(IndexError, match="out of range"):
        emb.thumbnail(data, len(data.test))


def test_embed_run_caches_in_memory_and_on_disk(tiny_dfg_run, tmp_path, monkeypatch):
    src = tiny_dfg_run.run
    shutil.copytree(src.path, tmp_path / src.id)  # copy2 keeps the checkpoint's mtime
    run = Run(tmp_path, src.id)
    calls = {"collect": 0, "project": 0, "restore": 0}
    real_collect, real_project = emb.collect_features, emb.project
    cached = restore_cached(src)

    def restore(r, device=None):
        calls["restore"] += 1
        return cached

    def collect(*a, **k):
        calls["collect"] += 1
        return real_collect(*a, **k)

    def project(*a, **k):
        calls["project"] += 1
        return real_project(*a, **k)

    monkeypatch.setattr(emb, "restore_cached", restore)
    monkeypatch.setattr(emb, "collect_features", collect)
    monkeypatch.setattr(emb, "project", project)
    emb.clear_cache()
    seen = []
    first = emb.embed_run(run, "pca", n=40, seed=0, progress=lambda f, m: seen.append(f))
    assert first["cache"] is None and calls == {"collect": 1, "project": 1, "restore": 1}
    assert seen == sorted(seen) and seen[-1] == 1.0
    p = first["points"]
    assert len(p["x"]) == 80 and p["kind"].count("real") == 40 and first["step"] == 20
    assert p["class_name"][0] == first["class_names"][int(p["label"][0])]
    assert 0 <= first["metrics"]["knn_label_agreement"] <= 1 and 0 <= first["metrics"]["separability"] <= 1
    assert (run.path / "cache" / "emb_20_pca_40_0.npz").exists()

    hit = emb.embed_run(run, "pca", n=40, seed=0)
    assert hit["cache"] == "memory" and calls["project"] == 1
    np.testing.assert_array_equal(hit["points"]["x"], p["x"])

    emb.embed_run(run, "tsne", n=40, seed=0)  # another view: features reused, only the projection runs
    assert calls == {"collect": 1, "project": 2, "restore": 1}

    emb.clear_cache()
    disk = emb.embed_run(run, "pca", n=40, seed=0)
    assert disk["cache"] == "disk" and calls["project"] == 2
    np.testing.assert_array_equal(disk["points"]["y"], p["y"])
    assert disk["points"]["class_name"] == p["class_name"] and disk["metrics"] == first["metrics"]

    st = run.checkpoint_path.stat()  # a new checkpoint (the run trained on) invalidates both caches
    os.utime(run.checkpoint_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    emb.embed_run(run, "pca", n=40, seed=0)
    assert calls == {"collect": 2, "project": 3, "restore": 2}
    emb.clear_cache()


def _python_without_numba_switch(code: str) -> list[str]:
    """stdout words of `python -c code` run from the repo, without the environment switch (ours sets it)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_ERROR_MESSAGE_HIGHLIGHTING"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.split()


def test_umaps_numba_leaves_sys_stdout_alone():
    """With colorama installed, numba swaps sys.stdout around each compile unless error highlighting is off;
    from the UMAP prewarm thread that swap clobbered the main thread's stdout (pytest's capsys lost a test's
    output). Importing dfg.projections turns the highlighting off before numba loads."""
    out = _python_without_numba_switch("import dfg.projections, numba.core.errors as e; "
                                       "print(type(e.termcolor()).__name__)")
    assert out[-1] == "NOPColorScheme"


def test_numba_imported_first_still_leaves_sys_stdout_alone():
    """User code that imports numba before dfg.projections (too late for the environment switch) still gets
    plain error messages: numba's colour scheme no longer swaps sys.stdout around its markup."""
    out = _python_without_numba_switch(
        "import sys, numba.core.errors as e; import dfg.projections as p; before = sys.stdout; "
        "t = e.termcolor(); m = t.highlight('x') + t.errmsg('y'); "
        "print(type(t).__name__, m, sys.stdout is before, getattr(p, '_plain_numba_messages', bool)())")
    assert out[-4:] == ["PlainScheme", "xy", "True", "False"]  # replaced once; the second call has nothing to do


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_identical_features_are_refused_with_the_reason(method):
    """A dead extractor gives identical vectors: t-SNE returned NaN coordinates (a blank chart) and UMAP
    an invented spread; now every projection names the cause."""
    with pytest.raises(ValueError, match="all 40 feature vectors are identical"):
        emb.project(np.zeros((40, 60), np.float32), method, seed=0)


def test_embedding_caption_follows_the_runs_features():
    from dfg.views_inspect import embedding_caption
    dfg = embedding_caption({"feature_name": "E(x)", "has_generator": True, "weighted": True})
    difa = embedding_caption({"feature_name": "C[:-1](E(x))", "has_generator": True, "weighted": False})
    plain = embedding_caption({"feature_name": "E(x)", "has_generator": False, "weighted": False})
    assert "real E(x)" in dfg and "generated G(z, ŷ) with the run's W*" in dfg
    assert "real C[:-1](E(x))" in difa and "generated" in difa and "W*" not in difa
    assert "real E(x)" in plain and "generated" not in plain


def test_negative_generated_values_are_counted_and_explained(feats):
    """Real E(x) follows a ReLU; G ends with BatchNorm (Table A.4), so some generated values are negative,
    which by itself separates them: the share is measured and the page's summary says so."""
    from dfg.views_inspect import embedding_summary
    real, fake = feats.features[feats.is_real], feats.features[~feats.is_real]
    assert (real >= 0).all() and (fake < 0).any()
    m = emb.feature_metrics(feats)
    assert m["negative_generated"] == pytest.approx(float((fake < 0).mean()))
    shifted = emb.FeatureSet(**{**vars(feats), "features": feats.features - 1.0})  # real ones negative too
    assert emb.feature_metrics(shifted)["negative_generated"] is None
    text = embedding_summary({"metrics": m, "step": 20, "points": {"kind": ["real"] * 100 + ["generated"] * 60}})
    assert f"{m['negative_generated']:.0%} of generated values are" in text


def test_collection_leaves_every_nets_state_and_mode_alone(restored):
    """Collection runs every net in eval mode: G's and E's BatchNorm running statistics do not move (in train
    mode a no-grad pass still updates them), and each net gets its own mode back."""
    import torch

    _, data, method, _ = restored
    modes = {k: m.training for k, m in method.nets.items()}
    before = {k: {n: b.clone() for n, b in m.named_buffers()} for k, m in method.nets.items()}
    assert any(len(b) for b in before.values()), "the demo nets should have BN buffers"
    try:
        for m in method.nets.values():
            m.train()
        emb.collect_features(method, data, n_real=40, n_fake=40, seed=1)
        assert all(m.training for m in method.nets.values())
        for k, m in method.nets.items():
            for n, b in m.named_buffers():
                assert torch.equal(b, before[k][n]), f"{k}.{n} moved during collection"
    finally:
        for k, m in method.nets.items():
            m.train(modes[k])


def _copied_run(tiny_dfg_run, tmp_path):
    src = tiny_dfg_run.run
    shutil.copytree(src.path, tmp_path / src.id)  # copy2 keeps the checkpoint's mtime
    return Run(tmp_path, src.id)


def test_embedding_caches_are_keyed_by_n_and_seed(tiny_dfg_run, tmp_path, monkeypatch, restored):
    run = _copied_run(tiny_dfg_run, tmp_path)
    monkeypatch.setattr(emb, "restore_cached", lambda r, device=None: restored)
    emb.clear_cache()
    try:
        small = emb.embed_run(run, "pca", n=20, seed=0, disk_cache=False)
        assert small["points"]["kind"].count("real") == 20
        larger = emb.embed_run(run, "pca", n=40, seed=0, disk_cache=False)  # not the n=20 entry
        assert larger["cache"] is None and larger["points"]["kind"].count("real") == 40
        # another projection of another seed: neither the features nor the indices of seed 0
        other = emb.embed_run(run, "tsne", n=20, seed=1, disk_cache=False)
        idx0 = np.asarray(small["points"]["index"])[np.asarray(small["points"]["kind"]) == "real"]
        idx1 = np.asarray(other["points"]["index"])[np.asarray(other["points"]["kind"]) == "real"]
        labels = np.asarray(restored[1].test.labels)
        np.testing.assert_array_equal(idx1, emb.balanced_indices(labels, 20, 1))
        assert not np.array_equal(idx0, idx1)
    finally:
        emb.clear_cache()


def test_disk_entry_of_another_format_is_recomputed(tiny_dfg_run, tmp_path, monkeypatch, restored):
    run = _copied_run(tiny_dfg_run, tmp_path)
    monkeypatch.setattr(emb, "restore_cached", lambda r, device=None: restored)
    emb.clear_cache()
    try:
        first = emb.embed_run(run, "pca", n=20, seed=0)
        path = run.path / "cache" / f"emb_{first['step']}_pca_20_0.npz"
        with np.load(path) as z:
            fields = {k: z[k] for k in z.files}
        assert int(fields["format"]) == emb.CACHE_FORMAT
        fields["format"] = np.int64(emb.CACHE_FORMAT - 1)
        fields["xy"] = fields["xy"] + 100.0  # an old entry's points must not be shown
        with open(path, "wb") as f:
            np.savez(f, **fields)
        emb.clear_cache()
        again = emb.embed_run(run, "pca", n=20, seed=0)
        assert again["cache"] is None
        np.testing.assert_allclose(again["points"]["x"], first["points"]["x"], rtol=0, atol=1e-6)
        with np.load(path) as z:  # and the file was rewritten in the current format
            assert int(z["format"]) == emb.CACHE_FORMAT
    finally:
        emb.clear_cache()
