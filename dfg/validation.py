"""The rules a run configuration must meet, checked before any work starts: each failure names the field, the
value and what is allowed (`ConfigError`)."""
from __future__ import annotations

from dataclasses import fields

from .config import CHOICES, Config, ConfigError


def _need(ok: bool, name: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: {allowed}")


def validate(cfg: Config) -> Config:
    """Check every field before any work starts; raises ConfigError naming field, value and rule."""
    from .data import DATASETS
    from .methods import METHODS
    from .networks import BACKBONES

    _need(cfg.method in METHODS, "method", cfg.method, f"choose one of {sorted(METHODS)}")
    _need(cfg.backbone in BACKBONES, "backbone", cfg.backbone, f"choose one of {sorted(BACKBONES)}")
    _need(cfg.dataset in DATASETS, "dataset", cfg.dataset, f"choose one of {sorted(DATASETS)}")
    sources = sorted(n for n in DATASETS if n != "folder")
    _need(cfg.source != "folder", "source", cfg.source, f"your own images can be the target (dataset=folder, "
          f"folder=<path>), not the pretraining source; choose 'imagenet' or one of {sources}")
    _need(cfg.source in DATASETS or cfg.source == "imagenet", "source", cfg.source,
          f"choose 'imagenet' or one of {sources}")
    _need(cfg.source != "imagenet" or cfg.backbone == "resnet50", "source", cfg.source,
          "ImageNet weights exist for backbone=resnet50 only")
    _need(cfg.dataset not in cfg.source.split("+") or not METHODS[cfg.method].from_source, "source", cfg.source,
          f"it includes the target dataset {cfg.dataset!r}: E_S would learn every target training image with its "
          "label, the minority ones the imbalance drops included, and the run would not be imbalanced; choose a "
          "source without it (glyphs for a digit target, glyphs+mnist5k for Fashion-MNIST)")
    _need(cfg.dataset != "folder" or bool(cfg.folder), "folder", cfg.folder, "set folder=<path> for dataset=folder")
    for name in ("folder", "image_size", "grayscale"):  # read for dataset=folder only: refused, not ignored
        _need(cfg.dataset == "folder" or not getattr(cfg, name), name, getattr(cfg, name),
              f"applies to dataset=folder only (this run: {cfg.dataset}); leave it unset")
    _need(0 <= cfg.seed < 2 ** 63, "seed", cfg.seed, "must be a whole number in [0, 2^63)")
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        # NaN/inf slip through range checks (nan compares False, inf >= 0)
        _need(not isinstance(v, float) or v == v and abs(v) != float("inf"), f.name, v, "must be a finite number")
        # torch and the data code take C ints: a larger count fails here, not deep inside a run
        if f.name != "seed" and isinstance(v, int) and not isinstance(v, bool):
            _need(v < 2 ** 31, f.name, v, "must be below 2^31")
    _need(cfg.data_root.strip() != "", "data_root", cfg.data_root, "must name a folder (default: data)")
    _need(0.0 <= cfg.rho <= 1.0, "rho", cfg.rho, "must lie in [0, 1]")
    _need(cfg.delta >= 0.0, "delta", cfg.delta, "must be >= 0 (rows of W average 1; the paper uses 0.95)")
    for name in ("alpha", "beta", "gamma"):
        _need(getattr(cfg, name) >= 0, name, getattr(cfg, name), "must be >= 0")
    total = cfg.alpha + cfg.beta + cfg.gamma
    # within 0.01: the paper prints α = β = γ = 0.333
    _need(abs(total - 1.0) <= 0.01, "alpha+beta+gamma", round(total, 6), "must sum to 1 (Eq. 4), within 0.01")
    for name in ("steps", "batch_size", "n_critic", "n_c1", "n_c2", "n_w", "log_every", "eval_every",
                 "ckpt_every", "fw_per_class"):
        _need(getattr(cfg, name) > 0, name, getattr(cfg, name), "must be a positive integer")
    for name in ("pretrain_steps", "head_refit_steps", "source_per_class", "n_max", "limit_test", "image_size",
                 "num_majority", "threads"):
        _need(getattr(cfg, name) >= 0, name, getattr(cfg, name), "must be >= 0")
    for name in ("lr_extractor", "lr_classifier", "lr_generator", "lr_critic"):
        v = getattr(cfg, name)
        _need(0 < v <= 1.0 and v == v, name, v, "must be a learning rate in (0, 1]")
    _need(cfg.gp_lambda >= 0, "gp_lambda", cfg.gp_lambda, "must be >= 0")
    _need(0 <= cfg.sgd_momentum < 1, "sgd_momentum", cfg.sgd_momentum, "must lie in [0, 1) (the paper: 0.9)")
    for name in ("reg_alpha", "reg_beta"):  # a negative weight would reward moving away from the source
        _need(getattr(cfg, name) >= 0, name, getattr(cfg, name), "must be >= 0")
    _need(cfg.pretrain_steps > 0 or cfg.source == "imagenet" or not METHODS[cfg.method].from_source,
          "pretrain_steps", cfg.pretrain_steps, f"source={cfg.source} is trained here: 0 steps would leave E_S and "
          "C_S at their random initialisation; give a positive count (the presets: 1500-2000)")
    _need(cfg.ratio >= 1.0, "ratio", cfg.ratio, "must be >= 1 (n_max / n_min)")
    _need(cfg.imbalance in CHOICES["imbalance"], "imbalance", cfg.imbalance, "choose step, longtail or none")
    _need(cfg.short_classes in CHOICES["short_classes"], "short_classes", cfg.short_classes,
          "choose error (stop when a class has fewer images than asked) or all (it keeps all it has)")
    _need(0.0 <= cfg.val_fraction < 0.9, "val_fraction", cfg.val_fraction, "must lie in [0, 0.9)")
    _need(0.0 < cfg.lr_drop_at <= 1.0, "lr_drop_at", cfg.lr_drop_at, "must lie in (0, 1]")
    _need(0.0 < cfg.difa_phase_fraction < 0.5, "difa_phase_fraction", cfg.difa_phase_fraction, "must lie in (0, 0.5)")
    _need(cfg.head_refit in CHOICES["head_refit"], "head_refit", cfg.head_refit, "choose auto, always or never")
    _need(cfg.difa_level in CHOICES["difa_level"], "difa_level", cfg.difa_level, "choose fc or conv")
    _need(cfg.difa_critic in CHOICES["difa_critic"], "difa_critic", cfg.difa_critic,
          "choose conditional (D scores feature and class) or unconditional (the feature alone)")
    _need(cfg.delta_layers in CHOICES["delta_layers"], "delta_layers", cfg.delta_layers,
          "choose auto, extractor or stages")
    _need(cfg.delta_layers != "stages" or cfg.backbone == "resnet50", "delta_layers", cfg.delta_layers,
          f"stages exist for backbone=resnet50 only (this run: {cfg.backbone}); use auto or extractor")
    _need(not cfg.official_lenet_head or cfg.backbone == "lenet", "official_lenet_head", cfg.official_lenet_head,
          f"the official code's 1024/128 head is LeNet's (this run: {cfg.backbone}); leave it false")
    _need(cfg.frozen_bn in CHOICES["frozen_bn"], "frozen_bn", cfg.frozen_bn,
          "choose train (batch statistics, running ones updated) or eval (running statistics, kept)")
    _need(cfg.start_head in CHOICES["start_head"], "start_head", cfg.start_head,
          "choose source (C_S's head, re-fit or kept) or random (a fresh last layer)")
    _need(cfg.optimizer_ec in CHOICES["optimizer_ec"], "optimizer_ec", cfg.optimizer_ec, "choose adam or sgd")
    _need(cfg.transfer_reg in CHOICES["transfer_reg"], "transfer_reg", cfg.transfer_reg,
          "choose auto, none, delta or l2sp")
    _need(cfg.method != "original" or cfg.transfer_reg in ("auto", "none"), "transfer_reg", cfg.transfer_reg,
          "Original trains from scratch: there is no source model to regularise towards; use auto or none")
    _need(cfg.method != "delta" or cfg.transfer_reg in ("auto", "delta"), "transfer_reg", cfg.transfer_reg,
          "DELTA is fine-tuning with DELTA's regulariser; use auto or delta (finetune is DELTA without it)")
    for name in ("adam_beta1", "adam_beta2"):
        _need(0 <= getattr(cfg, name) < 1, name, getattr(cfg, name), "must lie in [0, 1) (the paper: 0.5, 0.9)")
    _need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"), "device", cfg.device,
          "choose auto, cpu, cuda or cuda:N")
    _need(all(isinstance(c, int) and c >= 0 for c in cfg.majority), "majority", cfg.majority,
          "must be class indices >= 0")
    return cfg


# Fields only some methods read (checked against dfg/methods/): a value given for a method that does not read
# it is kept in config.json but changes nothing, which `unused_fields` says.
_ATTENTION = ("rho", "delta", "n_w", "fw_per_class", "official_discard_rho", "official_unscaled_weights",
              "official_loss_gate")                                           # DFG's class-wise attention
_GAN = ("n_critic", "gp_lambda", "lr_generator", "lr_critic", "n_c1", "n_c2", "alpha", "beta", "gamma")
_DIFA = ("difa_level", "difa_critic", "difa_phase_fraction")


def unused_fields(cfg: Config, given) -> list[str]:
    """The fields among `given` (those the user set) that this run does not read: one note per group, naming
    the fields and who reads them ([] when all are used)."""
    given = set(given)
    groups = {"dfg": [(_DIFA, "DIFA+cMWGAN")], "difa_cmwgan": [(_ATTENTION, "DFG's filter-weight attention")]}.get(
        cfg.method, [(_ATTENTION + _GAN, "the GAN methods (DFG, DIFA+cMWGAN)"), (_DIFA, "DIFA+cMWGAN")])
    if cfg.optimizer_ec != "sgd":
        groups.append((("sgd_momentum", "lr_drop_at"), "E and C's SGD (optimizer_ec=sgd)"))
    notes = []
    for names, who in groups:
        if hit := [n for n in names if n in given]:
            one = len(hit) == 1
            notes.append(f"{', '.join(hit)} {'is' if one else 'are'} read by {who} only: this run (method="
                         f"{cfg.method}, optimizer_ec={cfg.optimizer_ec}) ignores {'it' if one else 'them'}")
    return notes
