"""Losses of Eq. 1-4 and the regularisers, checked against closed forms."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dfg import losses


def test_gradient_penalty_of_a_linear_critic_is_weight_norm_closed_form():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 1))
    w_norm = critic[1].weight.norm().item()
    real, fake = torch.randn(16, 6, 4, 4), torch.randn(16, 6, 4, 4)
    mixed = losses.interpolate(real, fake)
    gp = losses.gradient_penalty(mixed, critic(mixed).squeeze(1))
    assert gp.item() == pytest.approx((w_norm - 1) ** 2, rel=1e-5)
    # and with a scaled critic, the norm scales: ‖3w‖
    with torch.no_grad():
        critic[1].weight.mul_(3)
    gp3 = losses.gradient_penalty(mixed, critic(mixed).squeeze(1))
    assert gp3.item() == pytest.approx((3 * w_norm - 1) ** 2, rel=1e-5)


def test_gradient_penalty_is_differentiable_wrt_critic():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(8, 1))
    mixed = losses.interpolate(torch.randn(4, 2, 2, 2), torch.randn(4, 2, 2, 2))
    losses.gradient_penalty(mixed, critic(mixed).squeeze(1)).backward()
    assert critic[1].weight.grad is not None and critic[1].weight.grad.abs().sum() > 0


def test_interpolates_lie_between_real_and_fake():
    real, fake = torch.ones(32, 1, 1, 1), torch.zeros(32, 1, 1, 1)
    mixed = losses.interpolate(real, fake, torch.Generator().manual_seed(1))
    assert (mixed >= 0).all() and (mixed <= 1).all() and mixed.std() > 0.1
    # one ε per sample, shared by all of its elements: x̂ = fake + ε·(real − fake) row by row
    torch.manual_seed(0)
    real, fake = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    mixed = losses.interpolate(real, fake, torch.Generator().manual_seed(2))
    eps = torch.rand(6, generator=torch.Generator().manual_seed(2))  # the same draw, one per row
    torch.testing.assert_close(mixed, fake + eps[:, None, None, None] * (real - fake))
    assert mixed.requires_grad and mixed.is_leaf


def test_critic_loss_standard_sign():
    d_real, d_fake = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, 1.0])
    # E[D(fake)] - E[D(real)] + λ·GP = 0 - 3 + 10*0.5
    assert losses.critic_loss(d_real, d_fake, torch.tensor(0.5), lam=10).item() == pytest.approx(2.0)
    assert losses.generator_loss(d_fake).item() == pytest.approx(0.0)
    assert losses.generator_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)  # Eq. 2: −E[D(G(z))]


def test_classifier_loss_combines_4a_4b_4c():
    torch.manual_seed(0)
    lr, lg = torch.randn(5, 3), torch.randn(5, 3)
    y, yg = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([2, 2, 1, 0, 0])
    l_rc, l_gc = F.cross_entropy(lr, y), F.cross_entropy(lg, yg)
    l_cc = losses.concat_loss(lr, y, lg, yg)
    assert l_cc.item() == pytest.approx((l_rc.item() + l_gc.item()) / 2, rel=1e-6)  # equal halves
    total = losses.classifier_loss(l_rc, l_gc, l_cc, 0.5, 0.3, 0.2)
    assert total.item() == pytest.approx(0.5 * l_rc.item() + 0.3 * l_gc.item() + 0.2 * l_cc.item(), rel=1e-6)


def test_delta_regulariser_zero_when_equal_and_grows_with_distance():
    torch.manual_seed(0)
    fm = torch.randn(4, 6, 5, 5)
    w = losses.delta_attention(torch.tensor([0.1, 0.5, 0.2, 0.0, 0.3, 0.9]))
    assert w.sum().item() == pytest.approx(1.0)
    assert w.argmax().item() == 5 and w.argmin().item() == 3
    assert losses.delta_feature_distance(fm, fm, w).item() == 0.0
    d1 = losses.delta_feature_distance(fm + 0.1, fm, w).item()
    d2 = losses.delta_feature_distance(fm + 0.5, fm, w).item()
    assert 0 < d1 < d2
    # a constant shift of 0.1: ½ · Σ over 4 samples · Σ_j 6·w_j · 0.1² = ½ · 4 · 6 · 0.01 (Σ w = 1)
    assert d1 == pytest.approx(0.5 * 4 * 6 * 0.01, rel=1e-5)


def test_delta_regulariser_has_the_scale_of_deltas_code():
    """DELTA's published code: channel weights softmax(z-score / 5) with numpy's std (ddof 0); the distance
    0.5 · Σ_batch Σ_c c · w_c · ‖FM_t − FM_s‖² / (h·w). Written out here with numpy, independently."""
    inc = np.array([0.3, 0.05, 0.7, 0.2, 0.0, 0.45])
    z = (inc - inc.mean()) / inc.std()
    w_ref = np.exp(z / 5) / np.exp(z / 5).sum()
    w = losses.delta_attention(torch.tensor(inc, dtype=torch.float64))
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-9)  # ddof 1 would be off by ~1e-2
    rng = np.random.default_rng(0)
    ft, fs = rng.normal(size=(3, 6, 4, 5)), rng.normal(size=(3, 6, 4, 5))
    dist = ((ft - fs).reshape(3, 6, -1) ** 2).sum(2)  # (b, c): ‖·‖² per channel
    ref = 0.5 * (6 * w_ref[None] * dist / (4 * 5)).sum()
    got = losses.delta_feature_distance(torch.tensor(ft), torch.tensor(fs), w).item()
    assert got == pytest.approx(ref, rel=1e-12)


def test_l2_sp_and_l2_carry_deltas_half():
    p = [torch.tensor([1.0, 2.0])]
    assert losses.l2_sp(p, [torch.tensor([1.0, 0.0])]).item() == 2.0  # ½ · 2²
    assert losses.l2(p).item() == 2.5                                  # ½ · (1 + 4)
