"""Transfer regularisers on E/C towards the frozen source model (a mixin of Method): DELTA's
attention-weighted feature-map distance on E's output or ResNet-50's four stage maps, or L2-SP, plus
L2 on the head. The formulas live in losses.py; this picks the maps and their channel weights."""
from __future__ import annotations

import torch

from .. import losses
from ..filter_weights import loss_increase_batched
from ..networks import last_linear, resnet_stage_maps, stage_views


class TransferRegularised:
    """Needs self.ctx, self.extractor, self.classifier, and the class attributes `transfer_reg` (fixed for
    the method, or None) and `default_transfer_reg` (what cfg.transfer_reg = "auto" means)."""

    def init_transfer_reg(self) -> None:
        cfg = self.ctx.cfg
        self.reg_kind = self.transfer_reg or (self.default_transfer_reg if cfg.transfer_reg == "auto"
                                              else cfg.transfer_reg)
        # DELTA's maps: the four stages' conv3 outputs on ResNet-50 (DELTA's code), else E's output
        self.reg_stages = self.reg_kind == "delta" and (
            cfg.delta_layers == "stages" or cfg.delta_layers == "auto" and cfg.backbone == "resnet50")
        self.reg_weights = self._delta_channel_weights() if self.reg_kind == "delta" else None

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """E(x), C(E(x)) and the target's maps that DELTA's regulariser compares: E(x) itself, or the four
        ResNet-50 stage maps (delta_layers=stages)."""
        if self.reg_stages:
            return resnet_stage_maps(self.extractor, self.classifier, x)
        feats = self.extractor(x)
        return feats, self.classifier(feats), [feats]

    def transfer_penalty(self, x: torch.Tensor, maps: list[torch.Tensor]) -> torch.Tensor | None:
        """Optional regulariser towards the source model (DELTA feature maps or L2-SP) + L2 on the head.
        maps: the target's maps from `forward_with_maps`."""
        cfg, src = self.ctx.cfg, self.ctx.source
        if self.reg_kind == "none" or src is None:
            return None
        head = last_linear(self.classifier)
        head_params = [head.weight, head.bias]
        if self.reg_kind == "delta":
            with torch.no_grad():
                source_maps = resnet_stage_maps(src.extractor, src.classifier, x)[2] if self.reg_stages \
                    else [src.extractor(x)]
            dist = sum(losses.delta_feature_distance(t, s, w) for t, s, w in zip(maps, source_maps, self.reg_weights))
        else:  # l2sp: every parameter with a source counterpart, except the re-initialised head
            ids = {id(p) for p in head_params}
            pairs = [(p, q) for p, q in zip(self._trainable_all(), self._source_all()) if id(p) not in ids]
            dist = losses.l2_sp([p for p, _ in pairs], [q for _, q in pairs])
        return cfg.reg_alpha * dist + cfg.reg_beta * losses.l2(head_params)

    # -- helpers ----------------------------------------------------------------------------
    def _trainable_all(self) -> list[torch.Tensor]:
        return list(self.extractor.parameters()) + list(self.classifier.parameters())

    def _source_all(self) -> list[torch.Tensor]:
        src = self.ctx.source
        return list(src.extractor.parameters()) + list(src.classifier.parameters())

    def _delta_channel_weights(self) -> list[torch.Tensor] | None:
        """DELTA's attention per regularised map on the source model: softmax(z-score(Δloss)/5) over its
        channels, Δloss from the same batched ablation as the filter weights (no second implementation):
        E's last conv, or each ResNet-50 stage's last conv3. One (channels,) tensor per map."""
        src = self.ctx.source
        if src is None:
            return None
        x, y = self.ctx.fw_sample
        views = stage_views(src.extractor, src.classifier) if self.reg_stages else [(src.extractor, src.classifier)]
        return [losses.delta_attention(loss_increase_batched(e, c, x, y).mean(0)) for e, c in views]

