"""Plain reference implementations kept for benchmarks and tests (not used by the library):
filter weights with one full E+C forward per removed filter, and an eager, unbatched Algorithm 1
iteration written the straightforward way (separate critic forwards, DataLoader batches)."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from dfg import gan, networks


def plain_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose layers are torch's own, with the same parameters: G's CPU-fast transposed convs
    (dfg.gan.ConvTranspose2d, with and without grad) become nn.ConvTranspose2d, and C (networks.Classifier,
    which folds VGG-16's pooled Linear) a plain nn.Sequential."""
    copied = copy.deepcopy(module)
    for m in copied.modules():
        if isinstance(m, gan.ConvTranspose2d):
            m.__class__ = nn.ConvTranspose2d
        elif isinstance(m, networks.Classifier):
            m.__class__ = nn.Sequential
    return copied


@torch.no_grad()
def per_filter_class_weights(extractor, classifier, x, y, num_classes: int, keep_bias: bool = False):
    """Eq. 5-6 the slow way: for each filter j, copy E, zero filter j, run E and C in full."""
    extractor.eval()
    classifier.eval()
    base = F.cross_entropy(classifier(extractor(x)), y, reduction="none")
    nf = extractor.last_conv.out_channels
    inc = torch.zeros(len(x), nf, device=x.device, dtype=base.dtype)  # the nets' dtype (float64 stays float64)
    for j in range(nf):
        ablated = copy.deepcopy(extractor)
        ablated.last_conv.weight[j] = 0
        if ablated.last_conv.bias is not None and not keep_bias:
            ablated.last_conv.bias[j] = 0
        inc[:, j] = F.cross_entropy(classifier(ablated(x)), y, reduction="none") - base
    soft = torch.softmax(inc, dim=1)
    w = torch.stack([soft[y == c].mean(0) * nf for c in range(num_classes)])
    return w


def extractor_then_classifier(E, C, opt_e, opt_c, x, y) -> dict:
    """Algorithm 1 lines 16-17 written plainly: E on Eq. 3, then C on Eq. 4a through the updated E."""
    loss_e = F.cross_entropy(C(E(x)), y)
    opt_e.zero_grad()
    loss_e.backward()
    opt_e.step()
    loss_rc = F.cross_entropy(C(E(x).detach()), y)
    opt_c.zero_grad()
    loss_rc.backward()
    opt_c.step()
    return {"L_E": loss_e.item(), "L_rC": loss_rc.item()}


class EagerAlgorithm1:
    """One Algorithm 1 iteration per call, written plainly: every batch from a DataLoader iterator,
    D(real), D(fake) and D(x̂) as three forwards, G and E recomputed for each use, losses read with
    .item() as they are produced. Same updates, same batch size, same nD/nC1/nC2 as the library."""

    def __init__(self, E, C, G, D, dataset, cfg, num_classes, w_star, device="cpu"):
        self.E, self.C, self.G, self.D = E, C, G, D
        self.cfg, self.k, self.w_star, self.device = cfg, num_classes, w_star, device
        betas = (cfg.adam_beta1, cfg.adam_beta2)
        self.opt = {n: torch.optim.Adam(m.parameters(), lr=lr, betas=betas) for n, m, lr in
                    (("E", E, cfg.lr_extractor), ("C", C, cfg.lr_classifier), ("G", G, cfg.lr_generator),
                     ("D", D, cfg.lr_critic))}
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
        self.it = iter(self.loader)

    def batch(self):
        try:
            x, y = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            x, y = next(self.it)
        return x.to(self.device), y.to(self.device)

    def noise(self):
        m = self.cfg.batch_size
        return (torch.rand(m, self.G.noise_dim, device=self.device) * 2 - 1,
                torch.randint(0, self.k, (m,), device=self.device))

    def step(self, step: int) -> dict:
        cfg, E, C, G, D, opt = self.cfg, self.E, self.C, self.G, self.D, self.opt
        log = {}
        for _ in range(cfg.n_critic):
            x, _ = self.batch()
            real = E(x).detach()
            z, yh = self.noise()
            fake = G(z, yh, self.w_star).detach()
            eps = torch.rand(x.shape[0], 1, 1, 1, device=self.device)
            mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
            grad = torch.autograd.grad(D(mixed), mixed, grad_outputs=torch.ones(x.shape[0], device=self.device),
                                       create_graph=True)[0]
            gp = ((grad.view(grad.size(0), -1).norm(2, dim=1) - 1) ** 2).mean()
            loss_d = D(fake).mean() - D(real).mean() + cfg.gp_lambda * gp
            opt["D"].zero_grad()
            loss_d.backward()
            opt["D"].step()
            log["L_D"] = loss_d.item()
        z, yh = self.noise()
        loss_g = -D(G(z, yh, self.w_star)).mean()
        opt["G"].zero_grad()
        loss_g.backward()
        opt["G"].step()
        log["L_G"] = loss_g.item()
        x, y = self.batch()
        if step % cfg.n_c1 == 0:
            logits = C(torch.cat([E(x).detach(), G(z, yh, self.w_star)]))
            loss = F.cross_entropy(logits, torch.cat([y, yh]))
            opt["G"].zero_grad()
            loss.backward()
            opt["G"].step()
        log.update(extractor_then_classifier(E, C, opt["E"], opt["C"], x, y))
        if step % cfg.n_c2 == 0:
            z2, y2 = self.noise()
            real, fake = E(x).detach(), G(z2, y2, self.w_star).detach()
            l_rc = F.cross_entropy(C(real), y)
            l_gc = F.cross_entropy(C(fake), y2)
            l_cc = F.cross_entropy(C(torch.cat([real, fake])), torch.cat([y, y2]))
            loss_c = cfg.alpha * l_rc + cfg.beta * l_gc + cfg.gamma * l_cc
            opt["C"].zero_grad()
            loss_c.backward()
            opt["C"].step()
        return log
