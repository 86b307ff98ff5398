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
    assert gc.default_layer(type("M", (), {"extractor": e, "classifier": c})) is c[0]
    e, c = build_backbone("vgg16", num_classes=10)
    convs = [m for m in c.modules() if isinstance(m, nn.Conv2d)]
    assert gc.default_layer(type("M", (), {"extractor": e, "classifier": c})) is convs[-1]
    e, c = build_backbone("resnet50", num_classes=10)
    layer = gc.default_layer(type("M", (), {"extractor": e, "classifier": c}))
    assert isinstance(layer, Bottleneck) and layer is c[2][-1]  # layer4's last block


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
            "cam", "image", "overlay"}
    assert all(set(e) == keys for e in out)
    e = out[0]
    assert e["cam"].shape == (32, 32) and e["image"].shape == e["overlay"].shape == (32, 32, 3)
    assert e["label"] == int(data.test.labels[0]) and e["label_name"] == data.class_names[e["label"]]
    assert e["step"] == 20 and e["method"] == "dfg" and 0 < e["conf"] <= 1

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
