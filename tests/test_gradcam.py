"""Grad-CAM: on a hand-made model whose logit sees one quadrant only the CAM lies there; on a real tiny
DFG run the maps, predictions and confidences are consistent; overlays; compare_runs and its filters."""
import numpy as np
import pytest
import torch
from torch import nn

from dfg import gradcam as gc
from dfg.networks import build_backbone
from dfg.restored import restore_cached, to_rgb

QUADRANTS = {"tl": (slice(0, 8), slice(0, 8)), "tr": (slice(0, 8), slice(8, 16)),
             "bl": (slice(8, 16), slice(0, 8)), "br": (slice(8, 16), slice(8, 16))}


class QuadrantSplit(nn.Module):
    """(B, 1, 16, 16) -> (B, 4, 16, 16): channel q is the input inside quadrant q, zero elsewhere."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 4, 16, 16)
        for q, (r, c) in enumerate(QUADRANTS.values()):
            out[:, q, r, c] = x[:, 0, r, c]
        return out


def quadrant_model(q: int):
    """Logit 1 = mean of conv channel q (its quadrant), logit 0 = 0: only quadrant q can matter."""
    conv = nn.Conv2d(4, 4, 1)
    head = nn.Linear(4, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(4)[:, :, None, None])
        conv.bias.zero_()
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1, q] = 1.0
    classifier = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return type("M", (), {"extractor": QuadrantSplit(), "classifier": classifier})()


@pytest.mark.parametrize("q,name", list(enumerate(QUADRANTS)))
def test_cam_mass_lies_in_the_quadrant_the_logit_reads(q, name):
    x = torch.rand(3, 1, 16, 16) + 0.1  # positive everywhere: every quadrant is active
    cams, pred, conf = gc.gradcam(quadrant_model(q), x)
    assert cams.shape == (3, 16, 16) and cams.min() >= 0 and cams.max() <= 1
    logit = x[:, 0][(slice(None), *QUADRANTS[name])].mean((1, 2)) / 4  # pooled over all 4 quadrants
    np.testing.assert_allclose(conf, torch.sigmoid(logit).numpy(), rtol=1e-5)  # softmax([0, l])[1]
    assert (pred == 1).all()
    inside = cams[(slice(None), *QUADRANTS[name])].mean()
    outside = max(cams[(slice(None), *QUADRANTS[o])].mean() for o in QUADRANTS if o != name)
    assert inside > 0.3 and outside < 0.05 * inside


def test_default_layer_per_backbone():
    from torchvision.models.resnet import Bottleneck
    e, c = build_backbone("lenet", num_classes=10)
    assert gc.default_layer(type("M", (), {"extractor": e, "classifier": c})) is c[1]  # the ReLU after C's conv
    e, c = build_backbone("vgg16", num_classes=10)
    last = max(i for i, m in enumerate(c) if isinstance(m, nn.Conv2d))
    layer = gc.default_layer(type("M", (), {"extractor": e, "classifier": c}))
    assert isinstance(layer, nn.ReLU) and layer is c[last + 1]  # rectified maps, as ResNet's block output
    e, c = build_backbone("resnet50", num_classes=10)
    layer = gc.default_layer(type("M", (), {"extractor": e, "classifier": c}))
    assert isinstance(layer, Bottleneck) and layer is c[2][-1]  # layer4's last block


@pytest.mark.parametrize("backbone,size,layer,cam_map", [
    ("lenet", 32, "the ReLU after the last conv of C (1)", (10, 10)),
    ("vgg16", 32, "the ReLU after the last conv of C (", (2, 2)),
    ("resnet50", 64, "the last bottleneck of C (2.2)", (2, 2))])
def test_the_page_names_the_layer_and_how_coarse_its_maps_are(backbone, size, layer, cam_map):
    e, c = build_backbone(backbone, num_classes=10, in_channels=1 if backbone == "lenet" else 3)
    e.eval(), c.train()
    method = type("M", (), {"extractor": e, "classifier": c})()
    x = torch.randn(2, 1 if backbone == "lenet" else 3, size, size)
    d = gc.describe_layer(method, x)
    assert d["layer"].startswith(layer) and d["map_size"] == cam_map and d["image_size"] == (size, size)
    assert c.training and not e.training  # each net's mode put back


@pytest.fixture(scope="module")
def restored(tiny_dfg_run):
    return restore_cached(tiny_dfg_run.run)


def test_gradcam_on_a_real_run(restored):
    _, data, method, _ = restored
    x = torch.stack([data.test[i][0] for i in range(10)])
    cams, pred, conf = gc.gradcam(method, x, batch_size=4)
    assert cams.shape == (10, 32, 32) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1
    peaks = cams.reshape(10, -1).max(1)
    assert np.all((np.isclose(peaks, 1.0)) | (peaks == 0))  # each map scaled by its own maximum
    logits = method.predict(x)
    np.testing.assert_array_equal(pred, logits.argmax(1).numpy())
    np.testing.assert_allclose(conf, torch.softmax(logits, 1).max(1).values.numpy(), rtol=1e-5)
    assert all(m.training is False for m in method.nets.values())  # modes left as they were


def test_overlay_blends_the_colormap_over_the_image():
    image = torch.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8)
    cam = np.zeros((8, 8), np.float32)
    out = gc.overlay(image, cam, alpha=0.0)
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out, to_rgb(image))
    full = gc.overlay(image, cam, alpha=1.0)  # jet(0) is dark blue everywhere
    assert (full[..., 2] > 120).all() and (full[..., :2] == 0).all()
    grey = gc.overlay(torch.zeros(1, 8, 8), cam + 1.0, alpha=0.5)  # jet(1) dark red over mid grey
    assert grey.shape == (8, 8, 3) and (grey[..., 0] > grey[..., 2]).all()
    with pytest.raises(ValueError, match="does not match"):
        gc.overlay(image, np.zeros((4, 4)))


def test_compare_runs_entries_and_filters(tiny_dfg_run, restored):
    run = tiny_dfg_run.run
    _, data, method, _ = restored
    out = gc.compare_runs([run, run], list(range(12)))
    assert len(out) == 24 and [e["index"] for e in out[:4]] == [0, 0, 1, 1]  # image by image, run by run
    keys = {"index", "run_id", "method", "step", "label", "label_name", "pred", "pred_name", "conf", "correct",
            "cam", "image", "overlay", "layer", "map_size", "image_size"}
    assert all(set(e) == keys for e in out)
    e = out[0]
    assert e["cam"].shape == (32, 32) and e["image"].shape == e["overlay"].shape == (32, 32, 3)
    assert e["label"] == int(data.test.labels[0]) and e["label_name"] == data.class_names[e["label"]]
    assert e["step"] == 20 and e["method"] == "dfg" and 0 < e["conf"] <= 1
    assert e["layer"] == "the ReLU after the last conv of C (1)" and e["map_size"] == (10, 10)
    from dfg.views_inspect import gradcam_layer_caption
    assert gradcam_layer_caption(out) == ("Each map weighs the ReLU after the last conv of C (1): 10×10 per image, "
                                          "upsampled bilinearly to 32×32.")

    wrong = gc.compare_runs([run], list(range(60)), only="misclassified")
    preds = method.predict(torch.stack([data.test[i][0] for i in range(60)])).argmax(1).numpy()
    expected = [i for i in range(60) if preds[i] != int(data.test.labels[i])]
    assert [e["index"] for e in wrong] == expected and expected
    assert all(e["pred"] != e["label"] and not e["correct"] for e in wrong)
    first = gc.compare_runs([run], None, only="misclassified", limit=3)  # whole test set, first 3 mistakes
    assert [e["index"] for e in first] == expected[:3]

    minority = gc.compare_runs([run], list(range(60)), only="minority", limit=5)
    assert len(minority) == 5 and all(e["label"] not in data.majority for e in minority)

    with pytest.raises(ValueError, match="unknown filter"):
        gc.compare_runs([run], [0], only="wrong")
    with pytest.raises(IndexError, match="out of range"):
        gc.compare_runs([run], [len(data.test)])


def test_runs_with_different_test_sets_are_refused():
    from types import SimpleNamespace
    from dfg.runstore import Run

    def fake(labels):
        test = type("Test", (), {"labels": np.asarray(labels), "__len__": lambda self: len(labels)})()
        return (None, SimpleNamespace(test=test, image_size=32, in_channels=1), None, 0)

    runs = [Run("/nonexistent", "a"), Run("/nonexistent", "b")]
    gc._check_same_test_set([fake([0, 1, 2]), fake([0, 1, 2])], runs)  # same: accepted
    with pytest.raises(ValueError, match="'b' has a different test set than 'a'"):
        gc._check_same_test_set([fake([0, 1, 2]), fake([0, 2, 1])], runs)


def hand_cam(method, layer, x, target):
    """Grad-CAM by hand on `layer`'s output A: weights = spatial mean of ∂score/∂A, ReLU(Σ_k w_k A_k),
    bilinear upsampling to the image, each map divided by its own maximum."""
    from torch.nn import functional as F
    store = {}
    hook = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            logits = method.classifier(method.extractor(x))
            g, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), store["a"])
    finally:
        hook.remove()
    cam = F.relu((g.mean((2, 3), keepdim=True) * store["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]).detach().numpy()


@pytest.mark.parametrize("backbone", ["lenet", "vgg16"])
def test_maps_weigh_the_rectified_feature_maps(backbone):
    """A^k are the maps after the ReLU that follows C's last conv (what the rest of C reads, as ResNet's block
    output already is): the conv's raw output would let activations the ReLU discards pull the map down."""
    torch.manual_seed(0)
    channels = 1 if backbone == "lenet" else 3
    e, c = build_backbone(backbone, num_classes=10, in_channels=channels)
    e.eval(), c.eval()
    method = type("M", (), {"extractor": e, "classifier": c})()
    x = torch.randn(16, channels, 32, 32)
    cams, pred, _ = gc.gradcam(method, x)
    last = max(i for i, m in enumerate(c) if isinstance(m, nn.Conv2d))
    np.testing.assert_allclose(cams, hand_cam(method, c[last + 1], x, torch.as_tensor(pred)), atol=1e-5)
    raw = hand_cam(method, c[last], x, torch.as_tensor(pred))
    assert np.abs(cams - raw).max() > 0.1  # the two layers really differ here


def test_same_labels_but_other_images_are_a_different_test_set():
    """limit_test's cap is seeded: two runs can draw the same label sequence from different images."""
    from types import SimpleNamespace
    from dfg.data.images import TensorImages
    from dfg.runstore import Run

    labels = torch.tensor([0, 1, 2])
    images = torch.randint(0, 255, (3, 1, 32, 32), dtype=torch.uint8)

    def bundle(imgs):
        return (None, SimpleNamespace(test=TensorImages(imgs, labels), image_size=32, in_channels=1), None, 0)

    runs = [Run("/nonexistent", "a"), Run("/nonexistent", "b")]
    gc._check_same_test_set([bundle(images), bundle(images.clone())], runs)
    with pytest.raises(ValueError, match="'b' has a different test set than 'a'"):
        gc._check_same_test_set([bundle(images), bundle(images.flip(0))], runs)


def test_comparable_runs_share_the_selected_runs_test_set(tiny_dfg_run, tmp_path):
    """The Grad-CAM columns offer only runs whose test images are the selected run's: same dataset, backbone and
    limit_test, and the same seed when limit_test draws a seeded subset or the dataset its split (Caltech-256);
    DIFA+cMWGAN gets a column."""
    import json
    import shutil
    from dfg.runstore import Run
    from dfg.views_inspect import GRADCAM_METHODS, comparable_runs

    changes = {"same": {}, "other_cap": {"limit_test": 100}, "other_seed": {"seed": 99},
               "other_backbone": {"backbone": "vgg16"}, "difa": {"method": "difa_cmwgan"}}
    for name, change in changes.items():
        shutil.copytree(tiny_dfg_run.run.path, tmp_path / name)
        path = tmp_path / name / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    like = Run(tmp_path, "same").config()
    assert like["limit_test"] > 0
    found = comparable_runs(tmp_path, like)
    assert "difa_cmwgan" in GRADCAM_METHODS
    assert sorted(found["dfg"]) == ["same"] and found["difa_cmwgan"] == ["difa"]
    assert comparable_runs(tmp_path, Run(tmp_path, "other_seed").config())["dfg"] == ["other_seed"]
    for name in ("same", "other_seed"):  # without a cap the whole test set is used, whatever the seed
        path = tmp_path / name / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "limit_test": 0}))
    assert sorted(comparable_runs(tmp_path, Run(tmp_path, "same").config())["dfg"]) == ["other_seed", "same"]
    for name in ("same", "other_seed"):  # Caltech-256 draws its 60/20 split per seed: the seed matters again
        path = tmp_path / name / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "dataset": "caltech256"}))
    assert comparable_runs(tmp_path, Run(tmp_path, "same").config())["dfg"] == ["same"]
    for name in ("same", "other_seed"):
        path = tmp_path / name / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "dataset": like["dataset"]}))
    assert sorted(comparable_runs(tmp_path, like["dataset"])["dfg"]) == [
        "other_backbone", "other_cap", "other_seed", "same"]  # a dataset name alone: the dataset decides


def test_image_draw_mixes_classes_before_the_first_evaluation(tiny_dfg_run, tmp_path):
    """A run with a checkpoint but no test evaluation yet still gets a seeded draw over its whole test set
    (from data.json's per-class test counts), not the first images, all of one class."""
    import json
    import shutil
    from dfg.runstore import Run
    from dfg.views_inspect import image_order

    shutil.copytree(tiny_dfg_run.run.path, tmp_path / "noeval")
    (tmp_path / "noeval" / "final.json").unlink()
    metrics = tmp_path / "noeval" / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if json.loads(line).get("kind") != "eval"))
    run = Run(tmp_path, "noeval")
    n = sum(c["test"] for c in run.read_json("data.json")["class_counts"])
    first, second = image_order(run, 0), image_order(run, 1)
    assert sorted(first) == list(range(n)) and first != second
    shown = gc.compare_runs([run], first, limit=6)
    assert len({e["label"] for e in shown}) > 1
