"""What every method shares: E/C built from scratch or from the source model, their optimisers,
prediction, checkpoint state, and the E/C update with optional transfer regularisers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .. import losses
from ..config import Config
from ..networks import Extractor, backbone_options, build_backbone, init_scheme, replace_head
from .transfer import TransferRegularised


@dataclass
class SourceModel:
    """E_S and C_S (head re-fit on the target classes), frozen, and W(E_S) on the target sample."""
    extractor: Extractor
    classifier: nn.Module
    class_weights: torch.Tensor  # (K, nf) Eq. 6 on the source model


@dataclass
class TrainContext:
    cfg: Config
    device: torch.device
    num_classes: int
    in_channels: int
    rng: torch.Generator                    # z, ŷ, ε of the penalty: seeded, checkpointed
    fw_sample: tuple[torch.Tensor, torch.Tensor]  # class-balanced (x, y) of the target for filter weights
    source: SourceModel | None = None
    log_weights: Callable[..., None] = lambda step, **arrays: None  # run store hook (filter-weight history)
    minority: tuple[int, ...] = ()
    class_counts: tuple[int, ...] = ()      # training images per class (after the imbalance); () = not known


def make_optimizer(params, lr: float, cfg: Config, kind: str = "adam") -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.sgd_momentum)
    # fused: one kernel for the whole update instead of a chain of foreach ops (~3x faster per step
    # on CPU for the critic's 0.26 M parameters); same Adam, same state_dict layout
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), fused=fused or None)


def pack_losses(values: dict) -> tuple[list[str], torch.Tensor | None]:
    """The names of a step's tensor outputs and those values as one float tensor (None if there are none)."""
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    return keys, torch.stack([values[k].reshape(()).float() for k in keys]) if keys else None


def scalars(values: dict) -> dict[str, float]:
    """A step's outputs as floats. Methods return their losses as detached 0-dim tensors so that a GPU
    step queues its kernels without waiting for them; this reads them all back with one device sync."""
    keys, packed = pack_losses(values)
    read = dict(zip(keys, packed.tolist())) if keys else {}
    return {k: read[k] if k in read else float(v) for k, v in values.items()}


class Method(TransferRegularised):
    """Base: owns E and C. Subclasses add networks and implement `train_step`."""

    name = "base"
    from_source = True   # initialise E/C from the source model (False: from scratch)
    transfer_reg: str | None = None  # fixed for the method (DELTA); None: cfg.transfer_reg decides
    default_transfer_reg = "none"    # what cfg.transfer_reg = "auto" means for this method

    def __init__(self, ctx: TrainContext):
        self.ctx, cfg = ctx, ctx.cfg
        if self.from_source and ctx.source is not None:
            self.extractor = _copy_trainable(ctx.source.extractor)
            self.classifier = _copy_trainable(ctx.source.classifier)
            if cfg.start_head == "random":  # App. A (ResNet-50): the last layer replaced by a random one
                replace_head(self.classifier, ctx.num_classes, init_scheme(cfg))
        else:
            self.extractor, self.classifier = build_backbone(cfg.backbone, num_classes=ctx.num_classes,
                                                             in_channels=ctx.in_channels, **backbone_options(cfg))
        self.extractor.to(ctx.device).train()
        self.classifier.to(ctx.device).train()
        self.nets: dict[str, nn.Module] = {"extractor": self.extractor, "classifier": self.classifier}
        self.configure_trainable()
        self.opts: dict[str, torch.optim.Optimizer] = {
            "extractor": make_optimizer(self.extractor.parameters(), cfg.lr_extractor, cfg, cfg.optimizer_ec),
            "classifier": make_optimizer(self.classifier.parameters(), cfg.lr_classifier, cfg, cfg.optimizer_ec),
        } if any(p.requires_grad for p in self.extractor.parameters()) else {
            "classifier": make_optimizer(self.classifier.parameters(), cfg.lr_classifier, cfg, cfg.optimizer_ec)}
        self.init_transfer_reg()

    # -- hooks ------------------------------------------------------------------------------
    def configure_trainable(self) -> None:
        """Freeze parameters here (fine-tuning); everything trains by default."""

    def train_step(self, step: int, batches) -> dict[str, torch.Tensor | float]:
        """One iteration: `update`, then `after_update`. Returns its losses as detached 0-dim tensors
        (or floats): see `scalars`. `cudagraphs.GraphedSteps` replays `update` as a CUDA graph instead."""
        out = self.update(step, batches)
        self.after_update(step, out)
        return out

    def frozen_parts(self, step: int) -> list[nn.Module]:
        """The parts of E/C that do not train at `step`: here every BN layer whose parameters are all frozen
        (fine-tuning's frozen layers); DIFA+cMWGAN adds the networks its phases hold fixed."""
        return [m for net in (self.extractor, self.classifier) for m in net.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())]

    def set_bn_modes(self, step: int) -> None:
        """frozen_bn=eval: the BN layers inside `frozen_parts(step)` normalise with their running statistics and
        keep them, as a frozen network would; every other BN layer of E/C trains. Every `update` sets them first
        (`start_update`): an evaluation puts every net in eval mode and back in between. frozen_bn=train: no change."""
        if self.ctx.cfg.frozen_bn != "eval":
            return
        frozen = {id(m) for part in self.frozen_parts(step) for m in part.modules()}
        for net in (self.extractor, self.classifier):
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train(id(m) not in frozen)

    def update(self, step: int, batches) -> dict[str, torch.Tensor | float]:
        """The iteration's device work: the same ops for every step with the same `graph_key`, no read-back
        to the host, tensors updated in place (a CUDA graph replays it). Subclasses implement it."""
        raise NotImplementedError

    def after_update(self, step: int, out: dict) -> None:
        """The iteration's host-side rest (e.g. filter weights every nW steps), given `update`'s losses;
        runs eagerly after `update` and keeps Python-side state (a graph replay runs no Python)."""

    def graph_key(self, step: int) -> tuple:
        """What decides which ops `update(step)` runs; steps with equal keys run the same ops."""
        return (self.lr_factor(step),)

    def on_start(self) -> None:
        """Called once before the first step of a fresh (not resumed) run."""

    feature_name = "E(x)"  # what `features` returns, as the app names it

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The features a generator imitates (and the app embeds): E's output."""
        return self.extractor(x)

    # -- shared pieces ----------------------------------------------------------------------
    def start_update(self, step: int) -> None:
        """What every `update` does first: the step's SGD learning rate and BN modes (frozen_bn)."""
        self.set_bn_modes(step)
        self.lr_schedule(step)

    def lr_factor(self, step: int) -> float:
        """SGD (ResNet): lr ÷ 10 after lr_drop_at of the steps (App. A); 1 otherwise."""
        cfg = self.ctx.cfg
        return 0.1 if cfg.optimizer_ec == "sgd" and step > cfg.lr_drop_at * cfg.steps else 1.0

    def lr_schedule(self, step: int) -> None:
        cfg = self.ctx.cfg
        if cfg.optimizer_ec != "sgd":
            return
        factor = self.lr_factor(step)
        for name, base in (("extractor", cfg.lr_extractor), ("classifier", cfg.lr_classifier)):
            if name in self.opts:
                for g in self.opts[name].param_groups:
                    g["lr"] = base * factor

    def update_extractor_classifier(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Alg. 1 lines 16-17: E on Eq. 3 (+ regulariser), then C on Eq. 4a with the updated E.
        official_joint_ec: one backward of L_E + L_rC (the official code's CE counted twice)."""
        cfg = self.ctx.cfg
        feats, logits, maps = self.forward_with_maps(x)
        loss_e = losses.extractor_loss(logits, y)
        reg = self.transfer_penalty(x, maps)
        total_e = loss_e if reg is None else loss_e + reg
        out = {"L_E": loss_e.detach()}
        if reg is not None:
            out["L_reg"] = reg.detach()
        if cfg.official_joint_ec:
            self._zero(("extractor", "classifier"))
            (total_e + loss_e).backward()
            self._step(("extractor", "classifier"))
            out["L_rC"] = out["L_E"]
            return out
        c_params = [p for p in self.classifier.parameters() if p.requires_grad]
        if "extractor" in self.opts:
            self._zero(("extractor", "classifier"))
            total_e.backward(inputs=[p for p in self.extractor.parameters() if p.requires_grad],
                             retain_graph=reg is not None)
            self._step(("extractor",))
            with torch.no_grad():
                feats = self.extractor(x)
        loss_rc = losses.extractor_loss(self.classifier(feats.detach()), y)
        self._zero(("classifier",))
        (loss_rc if reg is None else loss_rc + reg).backward(inputs=c_params)  # reg: C's share (head L2, L2-SP)
        self._step(("classifier",))
        out["L_rC"] = loss_rc.detach()
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of images x, computed on the nets' device and returned on x's device (a CPU batch
        gives CPU logits from a model on the GPU)."""
        device = next(self.extractor.parameters()).device
        return self.classifier(self.extractor(x.to(device))).to(x.device)

    def eval(self) -> None:
        for m in self.nets.values():
            m.eval()

    def train(self) -> None:
        for m in self.nets.values():
            m.train()

    def first_nonfinite(self) -> str | None:
        """The first non-finite tensor a checkpoint would hold: a weight, a buffer (BN statistics) or an
        optimizer's state (Adam's moments overflow before the weights do); None when all are finite."""
        for name, net in self.nets.items():
            for kind, named in (("weight", net.named_parameters()), ("buffer", net.named_buffers())):
                for pname, p in named:
                    if p.is_floating_point() and not torch.isfinite(p).all():
                        return f"{kind} {name}.{pname}"
        for name, opt in self.opts.items():
            for i, state in enumerate(opt.state.values()):
                for key, t in state.items():
                    if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
                        return f"{name} optimizer state {key} of parameter {i}"
        return None

    def state_dict(self) -> dict:
        return {"nets": {k: m.state_dict() for k, m in self.nets.items()},
                "opts": {k: o.state_dict() for k, o in self.opts.items()},
                "rng": self.ctx.rng.get_state(), "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        for k, m in self.nets.items():
            m.load_state_dict(state["nets"][k])
        for k, o in self.opts.items():
            o.load_state_dict(state["opts"][k])
        self._load_rng(state["rng"].cpu())  # generator states are CPU byte tensors on every device
        self.load_extra_state(state.get("extra", {}))

    def _load_rng(self, saved: torch.Tensor) -> None:
        """Restore the z/ŷ/ε generator. A CPU and a CUDA generator keep different states (5056 vs 16
        bytes), so a checkpoint written on the other device type cannot continue the same stream: the
        generator is then seeded from the saved state's bytes (deterministic for that checkpoint)."""
        if saved.numel() == self.ctx.rng.get_state().numel():
            self.ctx.rng.set_state(saved)
            return
        import hashlib
        import warnings
        digest = hashlib.sha256(saved.numpy().tobytes()).digest()
        self.ctx.rng.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        warnings.warn(f"this checkpoint was written on another device type than {self.ctx.device}: its noise "
                      "generator cannot be carried over, so z, ŷ and ε continue from a stream seeded from it "
                      "(training resumes, but not bit-for-bit as on the original device)", stacklevel=2)

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # -- helpers ----------------------------------------------------------------------------
    def _zero(self, names) -> None:
        for n in names:
            if n in self.opts:
                self.opts[n].zero_grad(set_to_none=True)

    def _step(self, names) -> None:
        for n in names:
            if n in self.opts:
                self.opts[n].step()


def _copy_trainable(module: nn.Module) -> nn.Module:
    import copy
    m = copy.deepcopy(module)
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def sample_noise(ctx: TrainContext, n: int, noise_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z ~ U(−1, 1)^noise_dim and ŷ uniform over all classes (as the paper and official code)."""
    z = torch.rand(n, noise_dim, device=ctx.device, generator=ctx.rng) * 2 - 1
    y = torch.randint(0, ctx.num_classes, (n,), device=ctx.device, generator=ctx.rng)
    return z, y
