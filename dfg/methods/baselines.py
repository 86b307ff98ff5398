"""The paper's baselines through the same loop: Original, Fine-tuning, DELTA, DIFA+cMWGAN."""
from __future__ import annotations

import torch

from .. import losses
from ..gan import FeatureCritic, FeatureGenerator
from ..networks import init_scheme, last_linear
from .base import Method, sample_noise
from .dfg import DFG, has_batchnorm

# Index in C's children where C's last conv block starts (fine-tuning trains from there on).
LAST_CONV_BLOCK = {"lenet": 0, "vgg16": 19, "resnet50": 2}


class Original(Method):
    """E and C from scratch on the imbalanced target (plain cross-entropy)."""
    name = "original"
    from_source = False

    def update(self, step, batches):
        self.start_update(step)
        return self.update_extractor_classifier(*batches.next())


class FineTune(Original):
    """Start from the source model; freeze everything before C's last conv block, train the rest."""
    name = "finetune"
    from_source = True

    def configure_trainable(self):
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        for child in list(self.classifier.children())[: LAST_CONV_BLOCK[self.ctx.cfg.backbone]]:
            for p in child.parameters():
                p.requires_grad_(False)


class Delta(Original):
    """DELTA (Li et al. 2019): fine-tune all of E/C from the source with the attention-weighted
    feature-map distance to the frozen source E (α) and L2 on the new head (β); see Method.transfer_penalty."""
    name = "delta"
    from_source = True
    transfer_reg = "delta"  # whatever cfg.transfer_reg says: the regulariser is what DELTA is


class DifaCMWGAN(DFG):
    """Our reading of DIFA (Volpi et al. 2018) + cMWGAN (Zhang et al. 2018), refs [14, 15]: three
    phases over the same step budget — (1) fine-tune E/C on the target; (2) E/C frozen, train a
    class-conditional WGAN-GP feature generator (no class-wise attention); (3) train the classifier on
    real ⊕ generated features (Eq. 4c), G frozen.

    difa_level="fc" (default, as refs [14, 15]): the features are the input of C's last Linear, made by
    an FC generator against an FC critic, and phase 3 trains that Linear. "conv": E's feature maps with
    DFG's G and D, and phase 3 trains all of C (the level DFG works at, §1)."""
    name = "difa_cmwgan"
    attention = False
    default_transfer_reg = "none"  # refs [14, 15] fine-tune without a source regulariser

    def __init__(self, ctx):
        self.fc_level = ctx.cfg.difa_level == "fc"
        self.conditional = ctx.cfg.difa_critic == "conditional"  # D scores (feature, class): refs [14, 15]
        # made once: a copy from the host inside a captured CUDA graph would fail
        self.class_cdf = torch.tensor(ctx.class_counts, dtype=torch.float64, device=ctx.device).cumsum(0) \
            if self.conditional and ctx.class_counts else None
        super().__init__(ctx)
        if self.fc_level:
            self.feature_head, self.feature_name = self.classifier[-1], "the input of C's last layer"
            # one forward of all nD batches needs no BN on the way to the features
            self.batch_real = not (has_batchnorm(self.extractor) or has_batchnorm(self.classifier))

    def build_gan(self, slope):
        if not self.fc_level:
            return super().build_gan(slope)
        cfg = self.ctx.cfg
        dim, init = last_linear(self.classifier).in_features, init_scheme(cfg)
        return (FeatureGenerator(dim, num_classes=self.ctx.num_classes, init=init, negative_slope=slope),
                FeatureCritic(dim, init=init, negative_slope=slope,
                              num_classes=self.ctx.num_classes if self.conditional else 0))

    def gan_noise(self, n):
        """A conditional D's fakes take the real batch's classes (`_critic_inputs`); G's own update draws ŷ
        with the same frequencies, those of the training set. (Phase 3 draws ŷ uniformly, to augment every class
        alike.)"""
        z, y_hat = super().gan_noise(n)
        if self.class_cdf is not None:
            u = torch.rand(n, device=z.device, dtype=torch.float64, generator=self.ctx.rng) * self.class_cdf[-1]
            y_hat = torch.searchsorted(self.class_cdf, u, right=True).clamp_(max=len(self.class_cdf) - 1)
        return z, y_hat

    def features(self, x):
        """fc: the input of C's last Linear (84-d LeNet, 512-d VGG-16, 2048-d ResNet-50); conv: E's output."""
        return self.classifier[:-1](self.extractor(x)) if self.fc_level else self.extractor(x)

    def phase(self, step: int) -> int:
        f = self.ctx.cfg.difa_phase_fraction * self.ctx.cfg.steps
        return 1 if step <= f else 2 if step <= 2 * f else 3

    def on_start(self):
        pass  # no filter weights

    def graph_key(self, step):
        return (*super().graph_key(step), self.phase(step))

    def frozen_parts(self, step):
        """Phase 2 holds E and C fixed; phase 3 E, and at the fc level all of C but its last Linear."""
        phase = self.phase(step)
        if phase == 1:
            return super().frozen_parts(step)
        if phase == 2:
            return [self.extractor, self.classifier]
        return [self.extractor, self.classifier[:-1]] if self.fc_level else [self.extractor]

    def update(self, step, batches):
        cfg, ctx = self.ctx.cfg, self.ctx
        phase = self.phase(step)
        self.start_update(step)
        if phase == 1:
            return {**self.update_extractor_classifier(*batches.next()), "phase": 1.0}
        m, nz = cfg.batch_size, self.generator.noise_dim
        if phase == 2:  # E/C frozen: the conditional WGAN-GP alone, without the class-wise attention
            out = self.update_critic(batches)
            out.update(self.update_generator(*self.gan_noise(m)))
            return {**out, "phase": 2.0}
        x, y = batches.next()
        z, y_hat = sample_noise(ctx, m, nz)
        with torch.no_grad():
            real, fake = self.features(x), self.generate(z, y_hat)
        lr_, lg_ = self.classify_concat(real, fake)  # fc: only C's last Linear gets gradients
        loss = losses.concat_loss(lr_, y, lg_, y_hat)
        self._zero(("classifier",))
        loss.backward()
        self._step(("classifier",))
        return {"L_cC": loss.detach(), "L_rC": losses.extractor_loss(lr_, y).detach(), "phase": 3.0}
