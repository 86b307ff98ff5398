"""DFG — Algorithm 1: critic, generator, extractor and classifier updates with class-wise
filter-weight attention (Eq. 1-9). `update` and `after_update` below are the whole algorithm; pieces
live in losses.py and filter_weights.py."""
from __future__ import annotations

import torch
from torch import nn

from .. import losses, wgan_gp
from ..filter_weights import attention, compute_class_weights
from ..gan import Critic, Generator
from ..networks import init_scheme
from .base import Method, TrainContext, make_optimizer, sample_noise


# On the CPU the critic phase makes all nD fakes before its nD updates when they take at most this much
# memory. A G forward between two D updates evicts D's weights and Adam state from the caches: with
# LeNet's networks (1.5 MB for all five fakes), Algorithm 1 went from 1.62x to 1.66x the reference's
# speed on 2 threads (median of 8 alternating pairs of bench/alg1_speed.py, up to +8 % in a pair). The
# numbers do not change: G is fixed during the phase and the noise is drawn in the same order. Larger
# features keep one fake at a time: VGG-16's (21 MB) measured 1.47x/1.49x -> 1.42x/1.46x made first.
FAKES_FIRST_BYTES = 4 << 20


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class DFG(Method):
    name = "dfg"
    attention = True  # DIFA+cMWGAN reuses this step without the class-wise attention
    conditional = False  # D sees the features alone; DIFA+cMWGAN's conditional critic also sees the class
    default_transfer_reg = "delta"  # §3: E and C "are regularized ... similar to Li et al. [13]" (DELTA)

    def __init__(self, ctx: TrainContext):
        super().__init__(ctx)
        cfg = ctx.cfg
        slope = 1.0 if cfg.official_lrelu_identity else 0.2
        self.generator, self.critic = (net.to(ctx.device) for net in self.build_gan(slope))
        if ctx.device.type == "cpu":  # oneDNN's NHWC convs are up to 3x faster for D's small maps
            self.critic.to(memory_format=torch.channels_last)
        self.nets.update(generator=self.generator, critic=self.critic)
        self.opts["generator"] = make_optimizer(self.generator.parameters(), cfg.lr_generator, cfg)
        self.opts["critic"] = make_optimizer(self.critic.parameters(), cfg.lr_critic, cfg)
        nf = self.extractor.num_filters
        ones = torch.ones(ctx.num_classes, nf, device=ctx.device)
        self.w_source = ctx.source.class_weights.to(ctx.device) if ctx.source is not None else ones
        self.w_target, self.w_star = ones.clone(), ones.clone()
        self.last_loss_e: torch.Tensor | float = float("inf")  # L_E of the last step (official_loss_gate)
        self.c_has_bn = has_batchnorm(self.classifier)  # Eq. 4a/4b then need batches of their own
        self.feature_head = self.classifier  # what classifies generated features (DIFA at fc level: C's last Linear)
        self.batch_real = not has_batchnorm(self.extractor)

    def build_gan(self, slope: float) -> tuple[nn.Module, nn.Module]:
        """G and D on E's feature maps (Tables A.4, A.6, A.8)."""
        cfg = self.ctx.cfg
        init = init_scheme(cfg)
        return (Generator(cfg.backbone, num_classes=self.ctx.num_classes, negative_slope=slope,
                          weight_after_bn=cfg.official_weight_after_bn, init=init),
                Critic(cfg.backbone, negative_slope=slope, init=init,
                       num_classes=self.ctx.num_classes if self.conditional else 0))

    # -- filter weights (Eq. 5-7, threshold) ----------------------------------------------------
    def recompute_weights(self, step: int) -> None:
        cfg = self.ctx.cfg
        if not self.attention:
            return
        if cfg.official_loss_gate and float(self.last_loss_e) >= 0.05:
            return  # official code: W only refreshed once L_E < 0.05 (DESIGN §2 item 7)
        x, y = self.ctx.fw_sample
        self.set_weights(step, compute_class_weights(
            self.extractor, self.classifier, x, y, self.ctx.num_classes, flip_sign=cfg.official_flip_sign,
            keep_bias=cfg.official_keep_bias, eval_mode=not cfg.official_loss_gate))

    def set_weights(self, step: int, w_target: torch.Tensor) -> None:
        """W(E) := w_target, then W* (Eq. 7 and the δ threshold), and the record of both for the app."""
        cfg = self.ctx.cfg
        # in place: a captured step (cudagraphs.py) reads W* from this very tensor
        self.w_target.copy_(w_target)
        self.w_star.copy_(attention(self.w_source, self.w_target, rho=cfg.rho, delta=cfg.delta,
                                    discard_rho=cfg.official_discard_rho, unscaled=cfg.official_unscaled_weights))
        self.ctx.log_weights(step, w_source=self.w_source.cpu().numpy(), w_target=self.w_target.cpu().numpy(),
                             w_star=self.w_star.cpu().numpy())

    def on_start(self) -> None:
        """Alg. 1 lines 2-4: before the first step, W* comes from W(E_S) alone. E starts as E_S, so step 0
        records W(E) = W(E_S); measuring it through C instead would see a re-initialised head as noise
        (start_head=random) and otherwise give W(E_S) again."""
        if self.attention:
            self.set_weights(0, self.w_source)

    def channel_weights(self) -> torch.Tensor | None:
        return self.w_star if self.attention else None

    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.generator(z, y, self.channel_weights())

    def classify_concat(self, real: torch.Tensor, fake: torch.Tensor):
        """C's logits on x̃ = real ⊕ generated as one batch (Eq. 4c: with BN in C, its statistics are those of
        the mixed batch), split back into the real and the generated rows."""
        logits = self.feature_head(torch.cat([real, fake]))
        return logits[: len(real)], logits[len(real):]

    # -- the GAN half (lines 6-12), shared with DIFA+cMWGAN ------------------------------------
    def update_critic(self, batches) -> dict[str, torch.Tensor]:
        """Lines 6-9: nD critic updates on Eq. 1. E is fixed during them, so without BN in E one
        forward of all nD batches gives exactly the per-batch features (`features`: E's output), cut back at
        the batches' own sizes (a training set smaller than the batch gives shorter batches). D's
        gradients come from the written-out WGAN-GP backward (wgan_gp.py) when D has the standard shape,
        else from autograd."""
        cfg, D = self.ctx.cfg, self.critic
        xs, ys = zip(*(batches.next() for _ in range(cfg.n_critic)))
        with torch.no_grad():
            reals = self.features(torch.cat(xs)).split([len(x) for x in xs]) if self.batch_real \
                else list(map(self.features, xs))
        closed_form = wgan_gp.supports_closed_form(D)
        pairs = (self._critic_inputs(real, y) for real, y in zip(reals, ys))  # lazy: each G forward before its update
        if reals[0].device.type == "cpu" and len(reals) * reals[0].numel() * reals[0].element_size() \
                <= FAKES_FIRST_BYTES:
            pairs = list(pairs)  # all fakes first (same draws in the same order), then D's updates back to back
        for real, fake, mixed, y in pairs:
            self._zero(("critic",))
            if closed_form:
                out = wgan_gp.critic_loss_and_grads(D, real, fake, mixed, cfg.gp_lambda)
            else:
                out = wgan_gp.reference_critic_loss(D, real, fake, mixed, cfg.gp_lambda,
                                                    labels=y if self.conditional else None)
                out.loss.backward()
            self._step(("critic",))
        return {"L_D": out.loss.detach(), "GP": out.penalty.detach(),
                "W_dist": (out.d_real.mean() - out.d_fake.mean()).detach()}

    def _critic_inputs(self, real: torch.Tensor, y: torch.Tensor):
        """(real, fake, x̂, labels) for one critic update: z and ŷ, then ε, from the run's noise generator. A
        conditional critic's fakes take the real rows' classes, so each x̂ lies between two features of one
        class and the real and generated class frequencies match (else D could tell them apart by the class)."""
        with torch.no_grad():
            z, y_hat = self.gan_noise(real.shape[0])
            y_hat = y if self.conditional else y_hat
            fake = self.generate(z, y_hat)
        return real, fake, losses.interpolate(real, fake, self.ctx.rng), y_hat

    def gan_noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """z and ŷ for the GAN's own updates (lines 6-12): ŷ uniform over the classes, as the paper says."""
        return sample_noise(self.ctx, n, self.generator.noise_dim)

    def update_generator(self, z: torch.Tensor, y_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Lines 10-12: one G update on Eq. 2."""
        # a label-free D (DFG's: the class reaches G through C, Eq. 4c) ignores the labels
        loss_g = losses.generator_loss(self.critic(self.generate(z, y_hat), y_hat))
        self._zero(("generator",))
        loss_g.backward(inputs=list(self.generator.parameters()))
        self._step(("generator",))
        return {"L_G": loss_g.detach()}

    # -- Algorithm 1, one iteration -------------------------------------------------------------
    def graph_key(self, step: int) -> tuple:
        cfg = self.ctx.cfg
        return (*super().graph_key(step), step % cfg.n_c1 == 0, step % cfg.n_c2 == 0)

    def update(self, step: int, batches) -> dict[str, torch.Tensor | float]:
        """Lines 5-20 (the device work); lines 21-25 run in `after_update`."""
        cfg, ctx = self.ctx.cfg, self.ctx
        E, G = self.extractor, self.generator
        m, nz = cfg.batch_size, G.noise_dim
        self.start_update(step)
        out = self.update_critic(batches)                      # lines 6-9
        z, y_hat = self.gan_noise(m)
        out.update(self.update_generator(z, y_hat))            # lines 10-12
        x, y = batches.next()
        # lines 13-15: every nC1 steps, G through C on real ⊕ generated (Eq. 4c)
        if step % cfg.n_c1 == 0:
            with torch.no_grad():
                real = E(x)
            lr_, lg_ = self.classify_concat(real, self.generate(z, y_hat))
            loss_cg = losses.concat_loss(lr_, y, lg_, y_hat)
            self._zero(("generator",))
            loss_cg.backward(inputs=list(G.parameters()))
            self._step(("generator",))
            out["L_cC_G"] = loss_cg.detach()
        # lines 16-17: E (Eq. 3) then C (Eq. 4a); the official code runs them inside the nC1 block
        if not cfg.official_ec_every_nc1 or step % cfg.n_c1 == 0:
            out.update(self.update_extractor_classifier(x, y))
        # lines 18-20: every nC2 steps, C on the full Eq. 4
        if step % cfg.n_c2 == 0:
            z2, y2 = sample_noise(ctx, m, nz)
            with torch.no_grad():
                real, fake = E(x), self.generate(z2, y2)
            lr_, lg_ = self.classify_concat(real, fake)
            l_cc = losses.concat_loss(lr_, y, lg_, y2)
            if self.c_has_bn:  # 4a and 4b on the real and the generated batch alone; without BN the same numbers
                lr_, lg_ = self.classifier(real), self.classifier(fake)
            l_rc, l_gc = losses.extractor_loss(lr_, y), losses.extractor_loss(lg_, y2)
            loss_c = losses.classifier_loss(l_rc, l_gc, l_cc, cfg.alpha, cfg.beta, cfg.gamma)
            self._zero(("classifier",))
            loss_c.backward()
            self._step(("classifier",))
            out.update(L_gC=l_gc.detach(), L_cC=l_cc.detach(), L_C=loss_c.detach())
        return out

    def after_update(self, step: int, out: dict) -> None:
        """Lines 21-25: every nW steps, W(E) and W*."""
        if "L_E" in out:
            self.last_loss_e = out["L_E"]
        if step % self.ctx.cfg.n_w == 0:
            self.recompute_weights(step)

    def extra_state(self) -> dict:
        return {"w_target": self.w_target, "w_star": self.w_star,
                "last_loss_e": torch.as_tensor(self.last_loss_e).detach().float()}

    def load_extra_state(self, state: dict) -> None:
        if state:
            self.w_target.copy_(state["w_target"])
            self.w_star.copy_(state["w_star"])
            self.last_loss_e = float(state["last_loss_e"])
