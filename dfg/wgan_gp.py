"""Eq. 1 (WGAN-GP critic loss) with its parameter gradients written out, for the feature critic D.

Why: autograd gets ∂GP/∂θ by a double backward. For D's piecewise-linear layers (conv/linear +
LeakyReLU) that double backward also pushes zero tensors back through D's forward graph (the
LeakyReLU mask has zero derivative), and it needs D(real ⊕ fake) and D(x̂) as separate graphs.
Written out, one forward of real ⊕ fake ⊕ x̂ (3B samples), one input-gradient pass, one forward
pass of the penalty's direction and one weight-gradient call per layer give the same numbers with
about 20 % fewer FLOPs and in fewer, larger kernels. `tests/test_wgan_gp.py` checks every gradient
against autograd (`reference_critic_loss`).

The algebra, for layers h_k = W_k a_{k-1} + b_k, a_k = s_k ⊙ h_k (s_k = 1 where h_k > 0 else the
LeakyReLU slope at h_k; constant almost everywhere) and score = w·a_{L-1} + b:
  g = ∇_x D(x̂) = W_1ᵀ δ_1,  δ_k = s_k ⊙ W_{k+1}ᵀ δ_{k+1},  δ_L = 1 (per sample)
  GP = mean (‖g‖ − 1)²,  u = ∂GP/∂g = 2(‖g‖ − 1)/‖g‖ · g / B
  ∂⟨u, g⟩/∂W_k = Σ_i δ_k,i ⊗ v_{k-1,i},  v_0 = u,  v_k = s_k ⊙ W_k v_{k-1}   (no bias: ∂GP/∂b = 0)
The score terms' backward uses the same δ recursion seeded with −1/B (real) and +1/B (fake), so one
input-gradient pass serves all 3B rows and one weight-gradient call per layer sums both terms.

On the CPU in float32, a conv with a tiny output map (D's last conv: 4x4 -> 2x2 for LeNet and VGG-16)
runs as one dense matrix product (kernels.DenseConv): forward, input and weight gradients 1.3-1.6x
faster than oneDNN's direct kernels there (bench/dense_conv_speed.py), the same sums in another order.
The input gradient of D's first conv on LeNet's 6-channel features (∇_x̂ D) is one stride-1 conv with
the four output phases stacked as channels (kernels.phase_input_grad): ~1.8x faster there."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from . import losses
from .kernels import DenseConv, phase_input_grad, phase_worthwhile

_conv_backward = torch.ops.aten.convolution_backward
_leaky_backward = torch.ops.aten.leaky_relu_backward


@dataclass
class CriticStep:
    """What one critic update reports: L_D (Eq. 1), the penalty, and the scores on real/fake. (B,) each."""
    loss: torch.Tensor
    penalty: torch.Tensor
    d_real: torch.Tensor
    d_fake: torch.Tensor


def _layers(critic: nn.Module) -> list[tuple[nn.Module, float | None]] | None:
    """(layer, LeakyReLU slope or None) for a Sequential of Conv2d/Linear (+ LeakyReLU) and one Flatten;
    None when the critic has any other shape (then autograd is used)."""
    net = getattr(critic, "net", None)
    if not isinstance(net, nn.Sequential) or getattr(critic, "embed", None) is not None:  # conditional: autograd
        return None
    mods, out, i = list(net), [], 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Flatten):
            i += 1
            continue
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or m.bias is None:
            return None
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
            return None
        slope = None
        if i + 1 < len(mods) and isinstance(mods[i + 1], nn.LeakyReLU):
            slope = mods[i + 1].negative_slope
            i += 1
        out.append((m, slope))
        i += 1
    if not out or not isinstance(out[-1][0], nn.Linear) or out[-1][1] is not None or out[-1][0].out_features != 1:
        return None
    return out


def supports_closed_form(critic: nn.Module) -> bool:
    return _layers(critic) is not None


def _apply(layer: nn.Module, x: torch.Tensor, bias: bool = True) -> torch.Tensor:
    b = layer.bias if bias else None
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, layer.weight, b, layer.stride, layer.padding, layer.dilation)
    return F.linear(x.flatten(1), layer.weight, b)


def _input_grad(layer: nn.Module, grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if phase_worthwhile(layer, grad_out):  # CPU: D's first conv on LeNet's 6 channels (kernels.py)
        return phase_input_grad(grad_out, layer, x.shape[-2:])
    if isinstance(layer, nn.Conv2d):
        return _conv_backward(grad_out, x, layer.weight, None, layer.stride, layer.padding, layer.dilation,
                              False, (0, 0), 1, (True, False, False))[0]
    return (grad_out @ layer.weight).view_as(x)


def _weight_grad(layer: nn.Module, grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return _conv_backward(grad_out, x, layer.weight, None, layer.stride, layer.padding, layer.dilation,
                              False, (0, 0), 1, (False, True, False))[1]
    return grad_out.t() @ x.flatten(1)


def _times_slope(d: torch.Tensor, h: torch.Tensor, slope: float) -> torch.Tensor:
    """d ⊙ s with s = 1 where h > 0 else slope (LeakyReLU's derivative at h), in one kernel."""
    return _leaky_backward(d.view(h.shape) if d.shape != h.shape else d, h, slope, False)


def _accumulate(p: torch.Tensor, grad: torch.Tensor) -> None:
    """p.grad += grad, as backward() would leave it: only for a parameter that trains, and in the parameter's
    own memory layout. A fused optimizer reads .grad as if it had p's strides (a gradient that is a view with
    other strides, as DenseConv.weight_grad's, would be stepped into the wrong elements)."""
    if not p.requires_grad:
        return
    if grad.stride() != p.stride():
        grad = torch.empty_like(p).copy_(grad)  # empty_like keeps p's strides (dense parameters)
    p.grad = grad if p.grad is None else p.grad + grad


@torch.no_grad()
def critic_loss_and_grads(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, mixed: torch.Tensor,
                          lam: float) -> CriticStep:
    """L_D = E[D(fake)] − E[D(real)] + λ·E[(‖∇D(x̂)‖ − 1)²]; adds ∂L_D/∂θ to each parameter's .grad
    (like loss.backward()). real, fake, mixed: (B, C, H, W) features, mixed = x̂ (no grad needed)."""
    layers = _layers(critic)
    if layers is None:
        raise ValueError("critic_loss_and_grads needs a Sequential critic of Conv2d/Linear + LeakyReLU layers; "
                         "use reference_critic_loss for other critics")
    m = real.shape[0]
    acts, pre = [torch.cat([real, fake, mixed])], []
    dense: dict[int, DenseConv] = {}  # CPU: tiny-output convs as one dense product (kernels.py)
    for k, (layer, slope) in enumerate(layers):  # forward of all 3B rows, keeping inputs and pre-activations
        if DenseConv.worthwhile(layer, acts[-1]):
            dense[k] = DenseConv(layer, *acts[-1].shape[-2:])
            h = dense[k].forward(acts[-1])
        else:
            h = _apply(layer, acts[-1])
        pre.append(h)
        acts.append(h if slope is None else F.leaky_relu(h, slope))
    score = acts[-1].squeeze(1)
    d_real, d_fake = score[:m], score[m:2 * m]
    seed = torch.empty(3 * m, 1, dtype=score.dtype, device=score.device)
    seed[:m], seed[m:2 * m], seed[2 * m:] = -1.0 / m, 1.0 / m, 1.0
    deltas: list[torch.Tensor] = [seed] * len(layers)
    d = seed  # δ_k: ∂(score terms)/∂h_k for real/fake rows, ∂D(x̂)/∂h_k for the x̂ rows
    for k in range(len(layers) - 1, -1, -1):
        layer, slope = layers[k]
        if slope is not None:
            d = _times_slope(d, pre[k], slope)
        deltas[k] = d
        if k > 0:
            d = dense[k].input_grad(d) if k in dense else _input_grad(layer, d, acts[k])
    g = _input_grad(layers[0][0], deltas[0][2 * m:], mixed)  # ∇_x̂ D(x̂), (B, C, H, W)
    norm = g.flatten(1).norm(dim=1)
    penalty = ((norm - 1) ** 2).mean()
    # ∂GP/∂g scaled by λ; like autograd, the norm's gradient at g = 0 is taken as 0
    scale = torch.where(norm > 0, 2 * (norm - 1) / norm, torch.zeros_like(norm)) * (lam / m)
    v = g * scale.view(-1, *([1] * (g.dim() - 1)))  # λ·u
    for k, (layer, slope) in enumerate(layers):
        x = torch.cat([acts[k][:2 * m], v])  # score terms pair with the activations, the penalty with v
        _accumulate(layer.weight, dense[k].weight_grad(deltas[k], x) if k in dense
                    else _weight_grad(layer, deltas[k], x))
        dims = [0, 2, 3] if deltas[k].dim() == 4 else [0]
        _accumulate(layer.bias, deltas[k][:2 * m].sum(dims))
        if k + 1 < len(layers):
            v = dense[k].forward(v, bias=False) if k in dense else _apply(layer, v, bias=False)
            if slope is not None:
                v = _times_slope(v, pre[k][2 * m:], slope)
    return CriticStep(d_fake.mean() - d_real.mean() + lam * penalty, penalty, d_real, d_fake)


def reference_critic_loss(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, mixed: torch.Tensor,
                          lam: float, labels: torch.Tensor | None = None) -> CriticStep:
    """The same quantity through autograd (double backward); any critic. Call .loss.backward() after.
    labels: for a conditional critic, the class of each row of real, of fake and of mixed alike (B,)."""
    m = real.shape[0]
    mixed = mixed.detach().requires_grad_(True)
    if labels is None:  # x̂ gets its own forward so the double backward sees only x̂
        scores, d_mixed = critic(torch.cat([real, fake])), critic(mixed)
    else:
        scores, d_mixed = critic(torch.cat([real, fake]), torch.cat([labels, labels])), critic(mixed, labels)
    penalty = losses.gradient_penalty(mixed, d_mixed)
    d_real, d_fake = scores[:m], scores[m:]
    return CriticStep(losses.critic_loss(d_real, d_fake, penalty, lam), penalty, d_real, d_fake)
