"""The written-out WGAN-GP backward (dfg/wgan_gp.py) against autograd's double backward."""
import pytest
import torch
from torch import nn

from dfg import wgan_gp
from dfg.gan import Critic
from dfg.networks import BACKBONES


def grads_both_ways(critic, real, fake, mixed, lam=10.0):
    critic.zero_grad(set_to_none=True)
    ref = wgan_gp.reference_critic_loss(critic, real, fake, mixed, lam)
    ref.loss.backward()
    expected = {n: p.grad.clone() for n, p in critic.named_parameters()}
    critic.zero_grad(set_to_none=True)
    got = wgan_gp.critic_loss_and_grads(critic, real, fake, mixed, lam)
    return ref, got, expected, {n: p.grad.clone() for n, p in critic.named_parameters()}


@pytest.mark.parametrize("backbone,slope,nhwc",
                         [("lenet", 0.2, False), ("vgg16", 0.2, False), ("resnet50", 0.2, False),
                          ("lenet", 1.0, False), ("lenet", 0.2, True)])
def test_closed_form_gradients_equal_autograd(backbone, slope, nhwc):
    torch.manual_seed(0)
    critic = Critic(backbone, negative_slope=slope).double()
    if nhwc:  # the layout DFG trains D in on the CPU
        critic.to(memory_format=torch.channels_last)
    batch = 2 if backbone == "resnet50" else 8
    shape = (batch, *BACKBONES[backbone].feature_shape)
    real, fake = torch.randn(shape, dtype=torch.double), torch.randn(shape, dtype=torch.double)
    eps = torch.rand(batch, 1, 1, 1, dtype=torch.double)
    mixed = eps * real + (1 - eps) * fake
    ref, got, expected, grads = grads_both_ways(critic, real, fake, mixed)
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-10)
    assert got.penalty.item() == pytest.approx(ref.penalty.item(), rel=1e-10)
    assert got.penalty.item() > 1e-3  # a penalty that actually bites, so its gradient is exercised
    for name, g in expected.items():
        assert torch.allclose(grads[name], g, rtol=1e-9, atol=1e-12), name


def test_closed_form_gradients_of_difa_s_feature_critic_equal_autograd():
    """DIFA+cMWGAN at fc level scores (B, 84) vectors with an MLP critic: the same written-out backward."""
    from dfg.gan import FeatureCritic
    torch.manual_seed(1)
    critic = FeatureCritic(84, init="xavier").double()
    real, fake = torch.rand(8, 84, dtype=torch.double), torch.rand(8, 84, dtype=torch.double)
    eps = torch.rand(8, 1, dtype=torch.double)
    ref, got, expected, grads = grads_both_ways(critic, real, fake, eps * real + (1 - eps) * fake)
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-10) and got.penalty.item() > 1e-3
    for name, g in expected.items():
        assert torch.allclose(grads[name], g, rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("backbone", ["lenet", "vgg16"])
def test_a_fused_adam_step_on_the_written_out_gradients_equals_one_after_backward(backbone):
    """DFG's CPU set-up: float32, D channels-last (its last conv as a dense product), fused Adam. The fused step
    reads .grad with the parameter's strides, so a gradient with other strides (a view) would be stepped into
    the wrong elements: the parameters after one step must match the autograd path's."""
    torch.manual_seed(3)
    nets = [Critic(backbone).to(memory_format=torch.channels_last) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    shape = (16, *BACKBONES[backbone].feature_shape)
    real, fake = torch.randn(shape), torch.randn(shape)
    mixed = (real + fake) / 2
    for i, net in enumerate(nets):
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.9), fused=True)
        if i == 0:
            wgan_gp.reference_critic_loss(net, real, fake, mixed, 10.0).loss.backward()
        else:
            wgan_gp.critic_loss_and_grads(net, real, fake, mixed, 10.0)
            assert all(p.grad.stride() == p.stride() for p in net.parameters())
        opt.step()
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        # float32 gradients near Adam's eps give slightly other first steps; a wrong element's is off by up to 2·lr
        assert (a - b).abs().max() < 1e-4, name


def test_frozen_critic_parameters_get_no_gradient():
    torch.manual_seed(4)
    critic = Critic("lenet")
    critic.net[0].weight.requires_grad_(False)
    x = [torch.randn(4, 6, 14, 14) for _ in range(3)]
    wgan_gp.critic_loss_and_grads(critic, *x, lam=10.0)
    assert critic.net[0].weight.grad is None and critic.net[0].bias.grad is not None


def test_linear_critic_penalty_gradient_is_closed_form():
    """D(x) = ⟨w, x⟩ + b: GP = (‖w‖ − 1)², so ∂(λ·GP)/∂w = 2λ(‖w‖ − 1)·w/‖w‖ and the score terms add
    mean(fake) − mean(real)."""
    torch.manual_seed(1)
    critic = nn.Module()
    critic.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    real, fake = torch.randn(4, 3, 2, 2, dtype=torch.double), torch.randn(4, 3, 2, 2, dtype=torch.double)
    critic.double()
    w = critic.net[1].weight.detach().clone()
    out = wgan_gp.critic_loss_and_grads(critic, real, fake, (real + fake) / 2, lam=10.0)
    norm = w.norm()
    assert out.penalty.item() == pytest.approx(((norm - 1) ** 2).item(), rel=1e-12)
    expected = 20 * (norm - 1) * w / norm + (fake.flatten(1).mean(0) - real.flatten(1).mean(0))
    assert torch.allclose(critic.net[1].weight.grad, expected, atol=1e-12)
    assert critic.net[1].bias.grad.item() == pytest.approx(0.0, abs=1e-12)  # +1/B·B − 1/B·B


def test_gradients_accumulate_like_backward_and_other_critics_are_refused():
    torch.manual_seed(2)
    critic = Critic("lenet").double()
    x = [torch.randn(4, 6, 14, 14, dtype=torch.double) for _ in range(3)]
    wgan_gp.critic_loss_and_grads(critic, *x, lam=10.0)
    once = critic.net[0].weight.grad.clone()
    wgan_gp.critic_loss_and_grads(critic, *x, lam=10.0)
    assert torch.allclose(critic.net[0].weight.grad, 2 * once)
    odd = nn.Module()
    odd.net = nn.Sequential(nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 12 * 12, 1))
    assert not wgan_gp.supports_closed_form(odd)
    with pytest.raises(ValueError, match="reference_critic_loss"):
        wgan_gp.critic_loss_and_grads(odd, *[t.float() for t in x], lam=10.0)


def test_every_paper_critic_takes_the_closed_form():
    """DFG falls back to autograd only for critics of another shape; the paper's three all qualify,
    the official code's identity 'LeakyReLU' included."""
    for backbone in BACKBONES:
        for slope in (0.2, 1.0):
            assert wgan_gp.supports_closed_form(Critic(backbone, negative_slope=slope))
