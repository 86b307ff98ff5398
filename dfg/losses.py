"""Losses of Eq. 1-4 and the transfer regularizers, as small pure functions (shapes in docstrings)."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def interpolate(real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x̂ = ε·real + (1−ε)·fake, ε ~ U(0, 1) per sample — the points where WGAN-GP penalises D.
    real, fake: (B, C, H, W) -> (B, C, H, W) leaf tensor requiring grad."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, generator=generator)
    return (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)


def gradient_penalty(mixed: torch.Tensor, d_mixed: torch.Tensor) -> torch.Tensor:
    """WGAN-GP term E_x̂[(‖∇_x̂ D(x̂)‖₂ − 1)²] from the critic's scores d_mixed = D(x̂), (B,).

    Keeps the graph (create_graph) so D can be updated through it. For a linear critic
    D(x) = ⟨w, x⟩ + b the gradient is w everywhere, so the penalty is (‖w‖₂ − 1)²."""
    (grad,) = torch.autograd.grad(d_mixed.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor, penalty: torch.Tensor, lam: float = 10.0) -> torch.Tensor:
    """Eq. 1 in the standard WGAN-GP sign: L_D = E[D(G(z,ŷ))] − E[D(E(x))] + λ·GP.

    The printed Eq. 1 swaps the two expectation signs (it would teach D to score fakes as real);
    this is the form of Gulrajani et al. that the method depends on. d_*: (B,) critic scores."""
    return d_fake.mean() - d_real.mean() + lam * penalty


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Eq. 2: L_G = −E[D(G(z, ŷ))]. d_fake: (B,)."""
    return -d_fake.mean()


def extractor_loss(logits_real: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 3 (= Eq. 4a): L_E = E[−y·log C(E(x))], cross-entropy on real features. logits: (B, K)."""
    return F.cross_entropy(logits_real, y)


def concat_loss(logits_real: torch.Tensor, y: torch.Tensor, logits_fake: torch.Tensor, y_fake: torch.Tensor):
    """Eq. 4c: L_cC = CE(C(x̃), ỹ) with x̃ = E(x) ⊕ G(z, ŷ), ỹ = y ⊕ ŷ — one batch of 2B samples,
    so the mean runs over real and generated together (not the mean of two means)."""
    return F.cross_entropy(torch.cat([logits_real, logits_fake]), torch.cat([y, y_fake]))


def classifier_loss(l_real: torch.Tensor, l_gen: torch.Tensor, l_concat: torch.Tensor,
                    alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """Eq. 4: L_C = α·L_rC + β·L_gC + γ·L_cC, α+β+γ = 1 (the printed Eq. 4 repeats L_rC; the second
    term is L_gC = CE(C(G(z, ŷ)), ŷ), Eq. 4b)."""
    return alpha * l_real + beta * l_gen + gamma * l_concat


def delta_attention(loss_increase: torch.Tensor, temperature: float = 5.0) -> torch.Tensor:
    """DELTA's channel weights (Li et al. 2019): softmax(z-score(Δloss_j) / T) over the nf channels, the
    z-score with the population std (ddof 0), as DELTA's code computes it.

    loss_increase: (nf,) mean loss increase when channel j is removed. Returns (nf,) summing to 1."""
    z = (loss_increase - loss_increase.mean()) / (loss_increase.std(correction=0) + 1e-12)
    return torch.softmax(z / temperature, dim=0)


def delta_feature_distance(fm_target: torch.Tensor, fm_source: torch.Tensor, channel_weights: torch.Tensor) -> torch.Tensor:
    """DELTA behaviour regulariser Ω' = ½ Σ_i Σ_j nf·w_j · ‖FM_j^t(x_i) − FM_j^s(x_i)‖² / (h·w), summed
    over the batch's samples i: the scale of DELTA's code, where its α = 0.01 was chosen. The weights w
    sum to 1, so nf·w_j averages 1 over the channels.

    fm_*: (B, nf, h, w) feature maps of target and (frozen) source extractor; channel_weights: (nf,).
    Zero when the two extractors agree; grows with their squared distance."""
    per_channel = (fm_target - fm_source.detach()).pow(2).flatten(2).mean(2)  # (B, nf): ‖·‖²/(h·w)
    return 0.5 * (per_channel * (per_channel.shape[1] * channel_weights)).sum()


def l2_sp(params: list[torch.Tensor], source_params: list[torch.Tensor]) -> torch.Tensor:
    """L2-SP (Li et al. 2018): ½ Σ ‖θ − θ_S‖² over parameters that have a source counterpart."""
    return 0.5 * sum(((p - s.detach()) ** 2).sum() for p, s in zip(params, source_params))


def l2(params: list[torch.Tensor]) -> torch.Tensor:
    """½ ‖θ‖² (DELTA's penalty on the new head)."""
    return 0.5 * sum((p ** 2).sum() for p in params)
