"""Filter weights (Eq. 5-7, threshold): batched ablation equals the per-filter reference; a dead
filter gets the lowest weight; rows average 1; ρ and δ behave as the paper says."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dfg import filter_weights as fw
from dfg.networks import build_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from reference import per_filter_class_weights  # noqa: E402

from conftest import small_bn_nets  # noqa: E402


def _digits_32(n=400, seed=0):
    """scikit-learn's 8x8 digits blown up to 32x32 in [-1, 1]: tiny real data that is always there."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(d.target))[:n]
    x = torch.tensor(d.images[idx], dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False) * 2 - 1
    return x, torch.tensor(d.target[idx])


@pytest.fixture(scope="module")
def trained_lenet():
    torch.manual_seed(0)
    x, y = _digits_32(600)
    e, c = build_backbone("lenet", num_classes=10)
    opt = torch.optim.Adam(list(e.parameters()) + list(c.parameters()), lr=3e-3)
    for i in range(150):
        b = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(c(e(x[b])), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return e, c, x, y


@pytest.mark.parametrize("backbone", ["lenet", "vgg16"])
@pytest.mark.parametrize("keep_bias", [False, True])
def test_batched_equals_per_filter_reference(backbone, keep_bias):
    """The batched ablation is the per-filter one exactly, so the two are compared in float64 (1e-10), where
    the CPU's summation order cannot hide a wrong filter; the float32 weights the run uses stay within
    float32 noise of them (VGG-16's float32 batched and per-filter weights differed by up to 8.8e-6 on an AMD EPYC,
    each ~8e-6 from float64)."""
    import copy

    torch.manual_seed(1)
    e, c = build_backbone(backbone, num_classes=4)
    for m in e.modules():  # non-zero biases so keep_bias matters
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    cin = 1 if backbone == "lenet" else 3
    n = 12 if backbone == "lenet" else 4  # VGG-16's 25088x4096 FC makes every sample costly on a CPU
    x, y = torch.randn(n, cin, 32, 32), torch.arange(n) % 4
    batched32 = fw.compute_class_weights(e, c, x, y, 4, keep_bias=keep_bias)
    e64, c64, x64 = copy.deepcopy(e).double(), copy.deepcopy(c).double(), x.double()
    batched = fw.compute_class_weights(e64, c64, x64, y, 4, keep_bias=keep_bias)
    reference = per_filter_class_weights(e64, c64, x64, y, 4, keep_bias=keep_bias)
    assert batched.shape == batched32.shape == (4, e.num_filters)
    assert batched.dtype == reference.dtype == torch.float64 and batched32.dtype == torch.float32
    torch.testing.assert_close(batched, reference, atol=1e-10, rtol=0)
    torch.testing.assert_close(batched32.double(), batched, atol=5e-5, rtol=5e-5)


def test_dead_filter_gets_the_lowest_weight(trained_lenet):
    e, c, x, y = trained_lenet
    with torch.no_grad():  # plant a dead filter: removing it changes nothing
        e.last_conv.weight[3] = 0
        e.last_conv.bias[3] = 0
    idx = fw.balanced_sample(y.numpy(), 10, seed=0)
    w = fw.compute_class_weights(e, c, x[idx], y[idx], 10)
    assert w.mean(0).argmin().item() == 3
    assert (w.argmin(1) == 3).float().mean().item() >= 0.8  # lowest for (nearly) every class
    assert torch.allclose(w.mean(1), torch.ones(10), atol=1e-5)  # Eq. 6: each class row averages 1


def test_pass_restores_train_mode_and_does_not_touch_gradients(trained_lenet):
    e, c, x, y = trained_lenet
    e.train()
    c.eval()
    before = [p.detach().clone() for p in e.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in e.parameters()]
    fw.compute_class_weights(e, c, x[:20], y[:20], 10)
    assert e.training and not c.training
    assert all(torch.equal(a, p) for a, p in zip(before, e.parameters()))
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad) for g, p in zip(grads, e.parameters()))


def test_rho_blend_and_delta_threshold():
    ws = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]])
    wt = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    assert torch.equal(fw.blend(ws, wt, 1.0), ws) and torch.equal(fw.blend(ws, wt, 0.0), wt)
    w = fw.blend(ws, wt, 0.75)
    assert torch.allclose(w[0], torch.tensor([1.5, 1.0, 0.5]))
    star = fw.attention(ws, wt, rho=0.75, delta=0.95)
    assert torch.allclose(star[0], torch.tensor([1.5, 1.0, 0.0]))  # 0.5 < 0.95 deactivated
    assert torch.allclose(star[1], torch.tensor([0.0, 0.0, 1.75]))
    # official switches: ρ discarded (W(E) only) and weights with mean 1/nf
    assert torch.allclose(fw.attention(ws, wt, rho=0.75, delta=0.95, discard_rho=True)[0],
                          torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(fw.attention(ws, wt, rho=0.75, delta=0.95, unscaled=True), star / 3)
    # W ≥ δ is kept: a weight exactly at δ stays on
    assert torch.equal(fw.threshold(torch.tensor([[0.95, 0.5, 1.55]]), 0.95), torch.tensor([[0.95, 0.0, 1.55]]))


def test_dfg_blends_the_source_weights_with_rho_and_the_target_ones_with_one_minus_rho():
    """DFG.set_weights: W* = threshold(ρ·W(E_S) + (1−ρ)·W(E), δ) (Eq. 7), recorded with both inputs."""
    from types import SimpleNamespace

    from dfg.methods.dfg import DFG

    cfg = SimpleNamespace(rho=0.75, delta=0.95, official_discard_rho=False, official_unscaled_weights=False)
    logged = {}
    m = SimpleNamespace(ctx=SimpleNamespace(cfg=cfg, log_weights=lambda step, **a: logged.update(step=step, **a)),
                        w_source=torch.tensor([[2.0, 1.0, 0.0]]), w_target=torch.ones(1, 3),
                        w_star=torch.ones(1, 3))
    DFG.set_weights(m, 7, torch.tensor([[0.0, 1.0, 2.0]]))
    assert torch.allclose(m.w_star, torch.tensor([[1.5, 1.0, 0.0]]))  # 0.75·[2,1,0] + 0.25·[0,1,2] = [1.5,1,0.5]
    assert logged["step"] == 7 and np.allclose(logged["w_target"], [[0.0, 1.0, 2.0]])
    assert np.allclose(logged["w_source"], [[2.0, 1.0, 0.0]]) and np.allclose(logged["w_star"], [[1.5, 1.0, 0.0]])


def test_sign_flip_reverses_order():
    inc = torch.tensor([[0.0, 1.0, 2.0]])
    assert fw.sample_weights(inc).argmax().item() == 2
    assert fw.sample_weights(inc, flip_sign=True).argmax().item() == 0


def test_balanced_sample_is_seeded_and_balanced():
    labels = np.repeat(np.arange(3), [50, 5, 20])
    a, b = fw.balanced_sample(labels, 10, 7), fw.balanced_sample(labels, 10, 7)
    assert np.array_equal(a, b)
    assert np.bincount(labels[a]).tolist() == [10, 5, 10]
    assert not np.array_equal(a, fw.balanced_sample(labels, 10, 8))


def test_first_conv_shortcut_equals_the_plain_batched_path():
    """C starting with a conv takes the one-grouped-conv shortcut; hiding that conv behind an
    Identity forces the plain path (every ablated map through all of C). Both must agree."""
    torch.manual_seed(3)
    e, c = build_backbone("lenet", num_classes=5)
    for m in e.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    e.eval(), c.eval()
    x, y = torch.randn(10, 1, 32, 32), torch.arange(10) % 5
    plain_c = torch.nn.Sequential(torch.nn.Identity(), *c)
    assert fw._first_conv_split(c) is not None and fw._first_conv_split(plain_c) is None
    for keep_bias in (False, True):
        fast = fw.loss_increase(e, c, x, y, keep_bias=keep_bias)
        plain = fw.loss_increase(e, plain_c, x, y, keep_bias=keep_bias)
        assert fast.abs().max() > 1e-3  # removing a filter does change the loss
        assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)


def test_class_weights_keep_float64_and_average_per_class():
    """Eq. 6 in the inputs' dtype (float64 stays float64, as the float64 checks of the ablations need)."""
    per_sample = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], dtype=torch.float64)
    w = fw.class_weights(per_sample, torch.tensor([0, 0, 2]), num_classes=3)
    assert w.dtype == torch.float64
    torch.testing.assert_close(w, torch.tensor([[0.8, 1.2], [1.0, 1.0], [1.0, 1.0]], dtype=torch.float64),
                               atol=1e-15, rtol=0)



def test_train_mode_pass_normalises_each_ablation_alone():
    """The official code's train-mode pass (official_loss_gate) on nets whose BN normalises over the batch
    (ResNet-50's E ends in bn3, its C is full of BN): each removed filter must be its own batch, as in one
    full forward per filter. Batching several removals together mixed their BN statistics (on a random
    ResNet-50 the loss increases were off by up to ~8). A small E and C with BN in the same places."""
    import copy

    torch.manual_seed(3)
    e, c = small_bn_nets(3)
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6) % 3
    with torch.no_grad():
        got = fw.loss_increase(e, c, x, y)
        base = F.cross_entropy(c(e(x)), y, reduction="none")
        want = torch.empty_like(got)
        for j in range(e.num_filters):
            ablated = copy.deepcopy(e)
            ablated.last_conv.weight[j] = 0
            ablated.last_conv.bias[j] = 0
            want[:, j] = F.cross_entropy(c(ablated(x)), y, reduction="none") - base
    assert got.shape == (6, 8) and want.abs().max() > 0.01  # removals that matter
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_paper_s_pass_uses_bn_running_statistics_and_leaves_them_as_they_were():
    """W(E) is measured in eval mode (the default, eval_mode=True), also when the nets arrive in train mode:
    with BN (ResNet-50) the result is the eval-mode one, not a batch-statistics one, and the running statistics
    do not move. The nets leave in the mode they came in."""
    torch.manual_seed(4)
    e, c = small_bn_nets(3)
    for bn in (e.tail[0], c[1]):  # running statistics far from any batch's, so the two modes differ
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(4.0)
    x, y = torch.randn(9, 3, 8, 8), torch.arange(9) % 3
    buffers = {k: v.clone() for net in (e, c) for k, v in net.state_dict().items() if "running" in k or "batches" in k}
    got = fw.compute_class_weights(e.train(), c.train(), x, y, 3)
    assert e.training and c.training
    after = {k: v for net in (e, c) for k, v in net.state_dict().items() if k in buffers}
    assert all(torch.equal(buffers[k], after[k]) for k in buffers)
    e.eval(), c.eval()
    want = fw.compute_class_weights(e, c, x, y, 3)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    batch_stats = fw.compute_class_weights(e.train(), c.train(), x, y, 3, eval_mode=False)
    assert (batch_stats - want).abs().max() > 1e-3  # the other mode gives other weights: the check can fail
