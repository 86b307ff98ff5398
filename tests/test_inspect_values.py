"""The inspection side checked on values worked out by hand, on small synthetic models and run folders (no training):
Grad-CAM of a linear head in closed form (the chosen class, bilinear upsampling of non-square maps, each map scaled by
its own maximum), eval mode and the nets' modes; compare_runs' entries per image and run; the restored-run cache;
projections' seeds, neighbourhoods and pre-PCA; the Filter-weights, Live-losses and Results views; the paper's
labels and Figure-6 points."""
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import small_bn_nets
from dfg import gradcam as gc
from dfg.data.images import TensorImages
from dfg.networks import Extractor
from dfg.runstore import Run


# ---- Grad-CAM ----------------------------------------------------------------------------------------------
def linear_head_method(weight: torch.Tensor, bias: torch.Tensor):
    """E = 2×2 average pooling; C = identity 1×1 conv, ReLU, global average pool, Linear(weight, bias). Grad-CAM on
    the ReLU's maps A (h, w) for class k is then ReLU(Σ_c W[k, c]·A_c) / (h·w): the gradient of the logit is
    W[k, c]/(h·w) at every location."""
    k, c = weight.shape
    conv, head = nn.Conv2d(c, c, 1), nn.Linear(c, k)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(c)[:, :, None, None])
        conv.bias.zero_()
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    classifier = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return SimpleNamespace(extractor=nn.AvgPool2d(2), classifier=classifier.eval())


def closed_form_cams(x, weight, classes):
    a = F.relu(F.avg_pool2d(x, 2))                                       # (B, C, h, w)
    cam = F.relu(torch.einsum("bc,bchw->bhw", weight[classes], a))[:, None]
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]).numpy()


def test_gradcam_of_a_linear_head_is_its_closed_form_for_the_asked_class():
    """Non-square images (8×12, maps 4×6), a batch cut in 2s, targets other than the predictions, and one image
    whose map peaks at ~1e-4: still scaled to 1 by its own maximum."""
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(4, 3, generator=g), torch.randn(4, generator=g) * 0.1
    method = linear_head_method(weight, bias)
    x = torch.randn(5, 3, 8, 12, generator=g)
    x[4] *= 1e-4
    logits = F.relu(F.avg_pool2d(x, 2)).mean((2, 3)) @ weight.T + bias
    pred = logits.argmax(1)
    cams, got_pred, conf = gc.gradcam(method, x, batch_size=2)
    assert cams.shape == (5, 8, 12)
    np.testing.assert_array_equal(got_pred, pred.numpy())
    np.testing.assert_allclose(conf, torch.softmax(logits, 1).max(1).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(cams, closed_form_cams(x, weight, pred), atol=1e-5)
    assert cams[4].max() == pytest.approx(1.0)

    other = (pred + 1) % 4
    cams_other, pred_again, _ = gc.gradcam(method, x, target=other.tolist(), batch_size=2)
    np.testing.assert_array_equal(pred_again, pred.numpy())  # pred stays the prediction
    np.testing.assert_allclose(cams_other, closed_form_cams(x, weight, other), atol=1e-5)
    assert np.abs(cams_other - cams).max() > 0.1  # the asked class really gives other maps


def test_gradcam_runs_in_eval_mode_and_leaves_the_nets_as_they_were():
    """Nets in train mode: the maps, predictions and confidences are those of eval mode (BN's running statistics),
    those statistics do not move, no parameter gets a .grad, and both nets are back in train mode."""
    torch.manual_seed(0)
    e, c = small_bn_nets(4)
    with torch.no_grad():
        for m in [*e.modules(), *c.modules()]:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    method = SimpleNamespace(extractor=e, classifier=c)
    before = [t.clone() for t in [*e.state_dict().values(), *c.state_dict().values()]]
    x = torch.randn(6, 3, 8, 8)
    cams, pred, conf = gc.gradcam(method, x)
    assert e.training and c.training
    assert all(torch.equal(a, b) for a, b in zip(before, [*e.state_dict().values(), *c.state_dict().values()]))
    assert all(p.grad is None for p in [*e.parameters(), *c.parameters()])
    e.eval(), c.eval()
    with torch.no_grad():
        logits = c(e(x))
    np.testing.assert_array_equal(pred, logits.argmax(1).numpy())
    np.testing.assert_allclose(conf, torch.softmax(logits, 1).max(1).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(cams, gc.gradcam(method, x)[0], atol=1e-6)


def test_default_layer_skips_an_in_place_relu_and_falls_back_to_the_extractors_last_conv():
    e = Extractor(nn.Identity(), nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
    c = nn.Sequential(nn.Conv2d(2, 3, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    assert gc.default_layer(SimpleNamespace(extractor=e, classifier=c)) is c[0]  # hooking an in-place ReLU
    head_only = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    method = SimpleNamespace(extractor=e, classifier=head_only)
    assert gc.default_layer(method) is e.last_conv
    d = gc.describe_layer(method, torch.randn(2, 1, 8, 12))
    assert d == {"layer": "the last conv of E (last_conv)", "map_size": (8, 12), "image_size": (8, 12)}
    cams, _, _ = gc.gradcam(method, torch.randn(2, 1, 8, 12))
    assert cams.shape == (2, 8, 12)


def test_test_sets_of_other_files_or_image_sizes_are_different():
    a, b = SimpleNamespace(items=["x/0.png", "x/1.png"]), SimpleNamespace(items=["x/0.png", "y/1.png"])
    assert gc._same_images(a, SimpleNamespace(items=list(a.items))) and not gc._same_images(a, b)

    labels = torch.tensor([0, 1, 0])
    test = TensorImages(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), labels)
    runs = [Run("/nonexistent", "a"), Run("/nonexistent", "b")]
    same = (None, SimpleNamespace(test=test, image_size=8, in_channels=1), None, 0)
    gc._check_same_test_set([same, same], runs)
    with pytest.raises(ValueError, match="'b' has a different test set"):
        gc._check_same_test_set([same, (None, SimpleNamespace(test=test, image_size=16, in_channels=1), None, 0)], runs)


def constant_class_method(cls: int, seed: int):
    """A small E, C whose prediction is always `cls` (a bias of 10 on it), with non-zero Grad-CAM maps."""
    torch.manual_seed(seed)
    e = nn.Conv2d(1, 2, 1)
    c = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        c[-1].bias.copy_(10.0 * F.one_hot(torch.tensor(cls), 3).float())
    e.eval(), c.eval()
    return SimpleNamespace(extractor=e, classifier=c, predict=lambda x: c(e(x)))


@pytest.fixture
def fake_runs(monkeypatch):
    """Three 'restored runs' on one test set of 8 images: a (method dfg) always predicts class 1, b (delta) class
    2, ref (original) class 0."""
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    data = SimpleNamespace(test=TensorImages(images, labels), image_size=8, in_channels=1,
                           class_names=["zero", "one", "two"], majority=[0])
    bundles = {"a": (SimpleNamespace(method="dfg"), data, constant_class_method(1, 0), 30),
               "b": (SimpleNamespace(method="delta"), data, constant_class_method(2, 1), 40),
               "ref": (SimpleNamespace(method="original"), data, constant_class_method(0, 2), 50)}
    monkeypatch.setattr(gc, "restore_cached", lambda run, device=None: bundles[run.id])
    return {k: Run("/nonexistent", k) for k in bundles}, bundles, data


def test_compare_runs_gives_each_image_and_run_its_own_label_prediction_and_map(fake_runs):
    from dfg.restored import to_rgb
    runs, bundles, data = fake_runs
    idx = [5, 2, 7]
    out = gc.compare_runs([runs["a"], runs["b"]], idx)
    assert [(e["index"], e["run_id"]) for e in out] == [(i, r) for i in idx for r in ("a", "b")]
    x = torch.stack([data.test[i][0] for i in idx])
    expected = {r: gc.gradcam(bundles[r][2], x) for r in ("a", "b")}
    for n, e in enumerate(out):
        j, r = n // 2, e["run_id"]
        label = int(data.test.labels[idx[j]])
        assert (e["label"], e["label_name"]) == (label, data.class_names[label])
        p = 1 if r == "a" else 2
        assert (e["pred"], e["pred_name"], e["correct"]) == (p, data.class_names[p], p == label)
        assert (e["method"], e["step"]) == (("dfg", 30) if r == "a" else ("delta", 40))
        cams, _, conf = expected[r]
        np.testing.assert_allclose(e["cam"], cams[j], atol=1e-6)
        assert e["conf"] == pytest.approx(float(conf[j]))
        np.testing.assert_array_equal(e["image"], to_rgb(data.test[idx[j]][0]))
    assert [e["label"] for e in out[::2]] == [2, 2, 1] and not out[0]["correct"]

    wrong = gc.compare_runs([runs["a"]], list(range(8)), only="misclassified", reference_run=runs["ref"])
    assert [e["index"] for e in wrong] == [1, 2, 4, 5, 7]  # judged by ref (predicts 0), not by a (predicts 1)
    assert [e["index"] for e in gc.compare_runs([runs["a"]], None, only="misclassified", limit=2)] == [0, 2]
    with pytest.raises(IndexError, match="out of range"):
        gc.compare_runs([runs["a"]], [-1])


def test_the_grid_marks_right_and_wrong_and_the_caption_gives_height_by_width():
    from dfg.views_inspect import gradcam_grid, gradcam_layer_caption
    base = {"index": 4, "label_name": "cat", "image": None, "overlay": None, "step": 10}
    entries = [{**base, "run_id": "a", "method": "dfg", "correct": True, "pred_name": "cat", "conf": 0.9},
               {**base, "run_id": "b", "method": "delta", "correct": False, "pred_name": "dog", "conf": 0.25}]
    grid = gradcam_grid(entries)
    assert [(c["title"], c["caption"]) for c in grid[0]["cells"]] == [("DFG", "✓ cat (90%)"), ("DELTA", "✗ dog (25%)")]
    caption = gradcam_layer_caption([{"layer": "the last conv of E (last_conv)", "map_size": (2, 3),
                                      "image_size": (8, 12), "method": "dfg"}])
    assert caption == "Each map weighs the last conv of E (last_conv): 2×3 per image, upsampled bilinearly to 8×12."


# ---- restored runs --------------------------------------------------------------------------------------------
def test_to_rgb_maps_minus_one_to_one_onto_0_255_row_by_column():
    from dfg.restored import to_rgb
    grey = torch.tensor([[[-1.0, 0.0, 1.0], [0.5, -0.5, 1.0]]])  # (1, 2, 3): 2 rows, 3 columns
    out = to_rgb(grey)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[..., 0].tolist() == [[0, 128, 255], [191, 64, 255]]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    colour = to_rgb(torch.stack([-torch.ones(2, 3), torch.zeros(2, 3), torch.ones(2, 3)]))
    assert colour.shape == (2, 3, 3) and colour[0, 2].tolist() == [0, 128, 255]


def test_the_first_test_image_has_a_hover_image_too():
    from dfg.restored import hover_images, image_uri, thumbnail
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = SimpleNamespace(test=TensorImages(images, torch.tensor([0, 1, 2])))
    uris = hover_images(data, [0, -1, 2], size=16)
    assert uris == [image_uri(thumbnail(data, 0, size=16)), "", image_uri(thumbnail(data, 2, size=16))]
    assert uris[0] != uris[2]


def test_restored_runs_are_cached_per_checkpoint_and_device_and_the_least_recently_used_goes(tmp_path, monkeypatch):
    from dfg import restored
    calls = []

    def fake_restore(run, device=None, log=None):
        calls.append((run.id, str(device)))
        return ("restored", run.id, str(device), len(calls))

    monkeypatch.setattr(restored, "restore", fake_restore)
    runs = [Run.create(tmp_path, f"r{i}", {"seed": i}) for i in range(6)]
    for r in runs:
        r.checkpoint_path.write_bytes(b"0" * 16)
    restored.clear()
    try:
        first = restored.restore_cached(runs[0], "cpu")
        assert first[2] == "cpu" and restored.restore_cached(runs[0], "cpu") is first and len(calls) == 1
        auto = restored.restore_cached(runs[0])  # the app's machine: restored again, not the cpu entry
        assert auto[2] == "auto" and len(calls) == 2
        st = runs[0].checkpoint_path.stat()  # a new checkpoint of the same size
        runs[0].checkpoint_path.write_bytes(b"1" * 16)
        os.utime(runs[0].checkpoint_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
        newer = restored.restore_cached(runs[0], "cpu")
        assert newer[3] == 3 and len(calls) == 3
        assert [k for k in restored.cached_runs() if k[3] == "cpu"] == [(*restored.checkpoint_key(runs[0]), "cpu")]

        restored.clear()
        for r in runs[:5]:
            restored.restore_cached(r, "cpu")
        restored.restore_cached(runs[0], "cpu")  # used again: r1 is now the least recently used
        restored.restore_cached(runs[5], "cpu")
        held = {k[0] for k in restored.cached_runs()}
        assert held == {str(runs[i].path.resolve()) for i in (0, 2, 3, 4, 5)}
    finally:
        restored.clear()


# ---- projections ---------------------------------------------------------------------------------------------
@pytest.fixture
def recorded_projections(monkeypatch):
    """openTSNE and umap replaced by recorders: each call's keyword arguments, input and BLAS threads."""
    from threadpoolctl import threadpool_info
    calls = []

    class Recorder:
        def __init__(self, **kw):
            self.kw = kw

        def fit(self, x):
            threads = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            calls.append((self.kw, np.array(x), threads))
            return np.asarray(x)[:, :2]

        fit_transform = fit

    monkeypatch.setitem(sys.modules, "openTSNE", SimpleNamespace(TSNE=Recorder))
    monkeypatch.setitem(sys.modules, "umap", SimpleNamespace(UMAP=Recorder))
    return calls


def test_tsne_and_umap_get_the_seed_their_neighbourhood_and_the_first_50_components(recorded_projections):
    from dfg.projections import project
    calls = recorded_projections
    rng = np.random.default_rng(0)
    small = rng.normal(size=(10, 8)).astype(np.float32)
    project(small, "tsne", seed=7)
    project(small, "umap", seed=8)
    (tsne, x_tsne, _), (um, x_umap, _) = calls
    assert (tsne["perplexity"], tsne["random_state"], tsne["n_jobs"]) == (3.0, 7, 1)  # N > 3·perplexity
    assert (um["n_neighbors"], um["random_state"]) == (9, 8)
    np.testing.assert_array_equal(x_tsne, small)  # 8 dims: no PCA before
    np.testing.assert_array_equal(x_umap, small)

    calls.clear()
    wide = (rng.normal(size=(200, 100)) * np.linspace(3, 0.1, 100)).astype(np.float32)
    project(wide, "tsne", seed=1)
    project(wide, "umap", seed=1)
    (tsne, x50, _), (um, _, _) = calls
    assert tsne["perplexity"] == 30.0 and um["n_neighbors"] == 15
    centred = wide.astype(np.float64) - wide.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    assert x50.shape == (200, 50)
    np.testing.assert_allclose(np.abs(x50), np.abs(centred @ vt[:50].T), atol=1e-3)  # the first 50 components

    calls.clear()
    few = rng.normal(size=(30, 100)).astype(np.float32)  # fewer points than 50: as many components as points
    project(few, "tsne")
    assert calls[0][1].shape == (30, 30)


def test_projections_run_on_one_blas_thread_and_restore_the_callers_limit(recorded_projections):
    from threadpoolctl import threadpool_info, threadpool_limits
    from dfg.projections import project

    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    with threadpool_limits(limits=2, user_api="blas"):
        outer = blas()
        project(x, "tsne")
        assert blas() == outer
    inside = recorded_projections[0][2]
    assert inside and set(inside) == {1} and set(outer) == {2}


def test_one_dimensional_features_get_a_zero_second_coordinate():
    from dfg.projections import project
    x = np.arange(20, dtype=np.float32)[:, None] * 0.5
    out = project(x, "pca")
    assert out.shape == (20, 2) and (out[:, 1] == 0).all()
    np.testing.assert_allclose(np.abs(out[:, 0]), np.abs(x[:, 0] - x[:, 0].mean()), atol=1e-5)


# ---- Filter-weights view ----------------------------------------------------------------------------------------
WS = np.array([[1.2, 0.9, 0.6, 1.3], [0.4, 1.6, 1.0, 1.0], [1.0, 1.0, 0.2, 1.8]])  # W(E_S): 3 classes × 4 filters
WT = np.array([[0.8, 1.1, 1.4, 0.7], [1.2, 0.6, 1.0, 1.2], [0.3, 1.9, 1.0, 0.8]])  # W(E)


@pytest.fixture
def weights_run(tmp_path):
    """A DFG run (ρ = 0.75, δ = 0.95) with one recorded step, 10, and classes cat, dog, eel (eel a minority)."""
    from dfg.filter_weights import attention
    run = Run.create(tmp_path, "w", {"method": "dfg", "rho": 0.75, "delta": 0.95})
    run.write_json("data.json", {"class_names": ["cat", "dog", "eel"], "minority": [2]})
    w_star = attention(torch.as_tensor(WS), torch.as_tensor(WT), rho=0.75, delta=0.95).numpy()
    run.save_filter_weights(10, w_source=WS, w_target=WT, w_star=w_star)
    return run


def test_the_weight_view_at_another_rho_and_delta(weights_run):
    """ρ = 0.3: W = 0.3·W(E_S) + 0.7·W(E) = [[.92, 1.04, 1.16, .88], [.96, .90, 1.0, 1.14], [.51, 1.63, .76, 1.10]],
    thresholded at 0.95."""
    from dfg.views_weights import weight_view
    view = weight_view(weights_run, 10, 0.3, 0.95)
    np.testing.assert_allclose(view["w_star_values"], [[0, 1.04, 1.16, 0], [0.96, 0, 1.0, 1.14], [0, 1.63, 0, 1.10]],
                               atol=1e-9)
    assert view["matches_recorded"] is False and view["config_reproduces"] is True
    table = view["deactivated"]
    assert [(r["class"], r["minority"], r["active"], r["deactivated filters"], r["strongest filter"]) for r in table] == [
        ("cat", False, 2, "f0, f3", "f2"), ("dog", False, 3, "f1", "f3"), ("eel", True, 2, "f0, f2", "f1")]
    heat = view["w_star"].data[0]
    assert list(heat.x) == ["f0", "f1", "f2", "f3"] and list(heat.y) == ["cat", "dog", "eel (minority)"]
    assert weight_view(weights_run, 10, 0.75, 0.95)["matches_recorded"] is True
    other_delta = weight_view(weights_run, 10, 0.75, 0.5)  # W's 0.8 now passes: another W*, the config's still holds
    assert other_delta["matches_recorded"] is False and other_delta["config_reproduces"] is True


def test_the_delta_slider_top_switches_every_weight_off():
    from dfg.filter_weights import attention
    from dfg.views_weights import delta_max
    wt = WT.copy()
    wt[1, 2] = 3.0
    top = delta_max({0: {"w_source": WS, "w_target": wt}}, 0.95)
    for rho in (0.0, 0.5, 1.0):
        assert not attention(torch.as_tensor(WS), torch.as_tensor(wt), rho=rho, delta=top).any()


def test_figure5_draws_the_blend_of_each_filter_per_class(weights_run):
    """Traces: per ρ, per step, per filter. ρ = 0.75, filter 3: 0.75·W(E_S)[:, 3] + 0.25·W(E)[:, 3]."""
    from dfg.views_weights import figure5
    history = {0: {"w_source": WS, "w_target": WT}, 10: {"w_source": WS, "w_target": WT * 0}}
    fig = figure5(weights_run, [1, 3], history, rhos=(0.75, 0.0), selected=10)
    assert len(fig.data) == 8
    trace = fig.data[1]  # ρ = 0.75, step 0, filter 3
    assert list(trace.x) == ["cat", "dog", "eel"] and trace.name == "step 0"
    np.testing.assert_allclose(trace.y, [1.15, 1.05, 1.55])
    np.testing.assert_allclose(fig.data[3].y, [0.975, 0.75, 1.35])  # step 10 (W(E) = 0), filter 3
    np.testing.assert_allclose(fig.data[5].y, WT[:, 3])  # ρ = 0: W(E) alone


def test_fig6_shows_the_papers_points_only_for_svhn(tmp_path):
    from dfg.config import make_config
    from dfg.views_weights import rho_accuracy
    cfg = make_config("demo", {}).to_dict()
    for dataset in ("mnist5k", "svhn"):
        root = tmp_path / dataset
        for rid, rho, top1 in (("a", 0.0, 0.5), ("b", 0.75, 0.7)):
            run = Run.create(root, rid, {**cfg, "dataset": dataset, "rho": rho})
            run.set_status(state="finished", step=cfg["steps"])
            run.write_json("final.json", {"last": {"top1": top1}})
        rows, _ = rho_accuracy(root, Run(root, "a"))
        paper = (None, None) if dataset == "mnist5k" else (79.98, 80.81)
        assert [(r["rho"], r["top1_mean"], r["paper"]) for r in rows] == [
            (0.0, pytest.approx(50.0), paper[0]), (0.75, pytest.approx(70.0), paper[1])]


def test_a_run_with_delta_zero_opens_the_page(tmp_path):
    from dfg.views_weights import page_settings
    assert page_settings(Run.create(tmp_path, "z", {"rho": 0.5, "delta": 0.0, "method": "dfg"})) == (0.5, 0.0, "dfg")


# ---- Live-losses view ----------------------------------------------------------------------------------------
def test_thinning_keeps_both_a_dip_and_a_spike():
    from dfg.views_losses import thin
    x, y = np.arange(1000.0), np.zeros(1000)
    y[123], y[456] = -5.0, 7.0
    tx, ty = thin(x, y, limit=20)
    assert len(tx) <= 22 and {123.0, 456.0} <= set(tx.tolist()) and ty.min() == -5.0 and ty.max() == 7.0


def tails(steps, losses, eval_steps=(), top1=()):
    return {"r": {"train": {"step": np.asarray(steps, float), "L_D": np.asarray(losses, float)},
                  "eval": {"step": np.asarray(eval_steps, float), "top1": np.asarray(top1, float)}}}


def test_loss_curves_are_drawn_in_step_order_with_each_value_at_its_step():
    from dfg.views_losses import metric_figure
    fig = metric_figure(tails([1, 3, 2], [10.0, 30.0, 20.0]), "L_D")
    assert list(fig.data[0].x) == [1, 2, 3] and list(fig.data[0].y) == [10.0, 20.0, 30.0]


def test_smoothing_draws_the_raw_curve_under_its_ema_and_leaves_accuracy_alone():
    """EMA with a = 0.5, debiased: s = [0, 5/0.75, 7.5/0.875]."""
    from dfg.views_losses import metric_figure
    t = tails([1, 2, 3], [0.0, 10.0, 10.0], [10, 20], [0.1, 0.9])
    fig = metric_figure(t, "L_D", smoothing=0.5)
    assert list(fig.data[0].y) == [0.0, 10.0, 10.0]
    np.testing.assert_allclose(fig.data[1].y, [0.0, 5 / 0.75, 7.5 / 0.875])
    acc = metric_figure(t, "top1", smoothing=0.5)
    assert len(acc.data) == 1 and list(acc.data[0].y) == [0.1, 0.9]


def test_the_accuracy_curve_reads_test_evaluations_only(tmp_path):
    from dfg.views_losses import new_tail, update_tail
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.append_metrics([{"kind": "eval", "split": "val", "step": 10, "top1": 0.2},
                        {"kind": "eval", "split": "test", "step": 10, "top1": 0.6},
                        {"kind": "eval", "step": 20, "top1": 0.7}])  # a row from before splits: a test row
    tail = new_tail()
    update_tail(tail, run)
    assert tail["eval"]["step"].tolist() == [10, 20] and tail["eval"]["top1"].tolist() == [0.6, 0.7]


# ---- Results view ----------------------------------------------------------------------------------------------
def test_the_summary_shows_each_score_with_its_own_std_and_a_zero_std():
    from dfg.views_results import format_summary
    raw = [{"dataset": "svhn", "method": "dfg", "n": 2, "top1_mean": 80.0, "top1_std": 0.0,
            "paper_top1_mean": 80.81, "paper_top1_std": 0.25, "balanced_acc_mean": 70.0, "balanced_acc_std": 1.5,
            "macro_f1_mean": 60.0, "macro_f1_std": 2.5, "minority_recall_mean": 50.0, "minority_recall_std": 3.5,
            "best_val_top1_mean": None, "best_val_top1_std": None, "notes": ""}]
    row = format_summary(raw, [])[0]
    assert (row["method"], row["n"], row["top1 (%)"], row["paper top1 (%)"], row["balanced acc (%)"],
            row["macro F1 (%)"], row["minority recall (%)"]) == (
        "DFG", 2, "80.00 ± 0.00", "80.81 ± 0.25", "70.00 ± 1.50", "60.00 ± 2.50", "50.00 ± 3.50")
    one = format_summary([{**raw[0], "n": 1, "top1_std": None}], [])[0]
    assert one["top1 (%)"] == "80.00"


def test_the_final_evaluation_wins_over_the_newest_eval_row(tmp_path):
    from dfg.views_results import last_eval
    run = Run.create(tmp_path, "r", {"seed": 0})
    run.append_metrics([{"kind": "eval", "step": 10, "top1": 0.3, "per_class_recall": [0.3, 0.3]}])
    assert last_eval(run)["top1"] == 0.3
    run.write_json("final.json", {"last": {"kind": "eval", "step": 20, "top1": 0.6, "per_class_recall": [0.6, 0.6]}})
    assert last_eval(run)["top1"] == 0.6


def test_a_confusion_matrix_of_another_size_is_dropped_and_the_recalls_kept():
    from dfg.views_results import usable_eval
    for cm in ([[1, 1], [1, 1]], [[1, 1, 1], [1, 1, 1]]):  # 2×2, and 2 rows of 3 for 3 classes
        ev = usable_eval({"top1": 0.5, "per_class_recall": [0.5, 0.5, 0.5], "confusion": cm})
        assert ev == {"top1": 0.5, "per_class_recall": [0.5, 0.5, 0.5]}


def test_results_tables_and_the_confusion_matrix_per_true_class(tmp_path):
    from dfg.views_results import confusion_figure, confusion_rows, data_rows, finished_runs
    run = Run.create(tmp_path, "r", {"seed": 0})
    counts = [{"class": 0, "name": "a", "available": 10, "kept": 6, "val": 2, "test": 3},
              {"class": 1, "name": "b", "available": 9, "kept": 1, "val": 1, "test": 4}]
    run.write_json("data.json", {"class_names": ["a", "b"], "majority": [0], "minority": [1], "class_counts": counts})
    rows, _ = data_rows(run)
    assert rows == [{"class": 0, "name": "a", "role": "majority", "available": 10, "train": 6, "val": 2, "test": 3},
                    {"class": 1, "name": "b", "role": "minority", "available": 9, "train": 1, "val": 1, "test": 4}]
    ev = {"top1": 7 / 8, "per_class_recall": [0.75, 1.0], "confusion": [[3, 1], [0, 4]]}  # rows: true a, true b
    heat = confusion_figure(run, ev).data[0]
    assert [list(r) for r in heat.z] == [[0.75, 0.25], [0.0, 1.0]] and [list(r) for r in heat.text] == [[3, 1], [0, 4]]
    assert list(heat.x) == ["a", "b"] and list(heat.y) == ["a", "b*"]
    assert confusion_rows(run, ev) == [{"true": "a", "pred a": 3, "pred b": 1}, {"true": "b", "pred a": 0, "pred b": 4}]

    for rid, state in (("s", "stopped"), ("f", "finished"), ("c", "created"), ("x", "failed")):
        Run.create(tmp_path / "runs", rid, {"seed": 0}).set_status(state=state)
    assert [r.id for r in finished_runs(tmp_path / "runs")] == ["f"]


# ---- the paper's numbers ------------------------------------------------------------------------------------------
def test_figure6_points_belong_to_dfg_on_svhn_at_their_rho_only():
    from dfg.paper import figure6_top1
    assert figure6_top1("svhn", "dfg", 0.75) == 80.81 and figure6_top1("svhn", "dfg", 0.0) == 79.98
    assert figure6_top1("svhn", "dfg", 0.5) is None and figure6_top1("svhn", "dfg", 0.25) is None
    assert figure6_top1("svhn", "delta", 0.75) is None and figure6_top1("fmnist", "dfg", 0.75) is None


def test_methods_and_datasets_carry_the_papers_names():
    from dfg.paper import dataset_label, method_label
    assert [method_label(m) for m in ("original", "finetune", "delta", "difa_cmwgan", "dfg", "mine")] == [
        "Original", "Fine-tuning", "DELTA", "DIFA+cMWGAN", "DFG", "mine"]
    assert [dataset_label(d) for d in ("svhn", "fmnist", "stl10", "cinic10", "caltech256", "food101", "mnist5k")] == [
        "SVHN", "F-MNIST", "STL-10", "CINIC-10", "Caltech-256", "Food-101", "mnist5k"]


def test_a_relu_module_used_twice_is_not_the_grad_cam_layer():
    """modules() lists a shared module once; the layer choice must count its every use and take the conv."""
    import torch
    from torch import nn

    from dfg import gradcam as gc
    relu = nn.ReLU()
    c = nn.Sequential(nn.Conv2d(3, 4, 1), relu, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), relu,
                      nn.Linear(5, 3))
    m = SimpleNamespace(extractor=nn.Identity(), classifier=c)
    assert gc.default_layer(m) is c[0]
    cams, pred, _ = gc.gradcam(m, torch.randn(2, 3, 6, 6))
    assert tuple(cams.shape) == (2, 6, 6) and len(pred) == 2
