"""One typed run configuration (`Config`): parsing, presets with overrides, and each field's documentation
(its comment); the rules every value must meet are in validation.py.

CLI flags, the app's form and every run's config.json are all made from these fields."""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path


class ConfigError(ValueError):
    """A config value is invalid; the message names the field, the value and what is allowed."""


@dataclass
class Config:
    # -- what to train ------------------------------------------------------------------------
    preset: str = "demo"            # name of the preset these values started from (informational)
    method: str = "dfg"             # dfg | original | finetune | delta | difa_cmwgan (dfg.methods.METHODS)
    backbone: str = "lenet"         # lenet | vgg16 | resnet50
    dataset: str = "mnist5k"        # target dataset (dfg.data.DATASETS), or "folder" with `folder`
    source: str = "glyphs"          # source dataset for E_S/C_S; "imagenet" = torchvision weights (resnet50)
    # -- data ---------------------------------------------------------------------------------
    data_root: str = "data"         # where datasets and the source-model cache live
    download: bool = False          # fetch missing datasets (only when the machine is online)
    folder: str = ""                # ImageFolder root for dataset="folder"
    image_size: int = 0             # folder images are resized to this (0 = the backbone's size)
    grayscale: bool = False         # folder images as 1 channel (LeNet) instead of RGB
    imbalance: str = "step"         # step (Buda et al.) | longtail (exponential) | none
    ratio: float = 10.0             # n_max / n_min
    n_max: int = 0                  # majority-class count (0 = the smallest class's count, so every class
                                    # can give it)
    num_majority: int = 2           # how many majority classes (step imbalance)
    majority: tuple[int, ...] = ()  # fixed majority classes; () = seeded draw of num_majority
    val_fraction: float = 0.0       # validation split carved from training data (enables best-on-val)
    limit_test: int = 0             # cap the test set (balanced, drawn with the run's seed, so seeds differ
                                    # in test images too) for quick runs; 0 = full
    short_classes: str = "error"    # a class with fewer training images than the imbalance asks for: error |
                                    # all (it keeps all it has; data.json warns). svhn: all (SVHN's 0 and 9 have
                                    # 4,948 and 4,659, and the paper draws every pair as majority)
    # -- schedule -----------------------------------------------------------------------------
    steps: int = 1500               # Algorithm 1 iterations
    batch_size: int = 64            # m in Algorithm 1
    seed: int = 0                   # seeds the data draws (majority classes, subsets), initialisation, z/ŷ/ε and the
                                    # batch order: the same seed gives the same run on the CPU
    device: str = "auto"            # auto (cuda when present) | cpu | cuda | cuda:N
    threads: int = 0                # CPU threads for torch (0 = torch's default); sweeps set cores/parallel
    tf32: bool = False              # CUDA: matmuls/convs in TF32 (Ampere+): faster, ~1e-3 relative error
    deterministic: bool = False     # CUDA: deterministic kernels, so a seeded GPU run repeats exactly
    cuda_graphs: bool = True        # CUDA: replay each iteration as a CUDA graph (cudagraphs.py); same numbers
    log_every: int = 10             # steps between loss rows in metrics
    eval_every: int = 250           # steps between test evaluations (and the final step)
    ckpt_every: int = 250           # steps between checkpoints (and the final step)
    # -- optimisation (App. A) ----------------------------------------------------------------
    lr_extractor: float = 1e-4      # ηE
    lr_classifier: float = 1e-4     # ηC
    lr_generator: float = 1e-4      # ηG
    lr_critic: float = 1e-4         # ηD
    optimizer_ec: str = "adam"      # adam | sgd (ResNet: SGD momentum 0.9, ÷10 at lr_drop_at)
    adam_beta1: float = 0.5         # Adam β1 of every network (App. A: 0.5)
    adam_beta2: float = 0.9         # Adam β2 (App. A: 0.9)
    sgd_momentum: float = 0.9       # momentum of E/C's SGD (optimizer_ec=sgd)
    lr_drop_at: float = 0.5         # fraction of steps after which SGD's lr is divided by 10
    # -- Algorithm 1 --------------------------------------------------------------------------
    n_critic: int = 5               # nD critic updates per iteration
    n_c1: int = 2                   # every nC1 steps: G update through C on real ⊕ generated (Eq. 4c)
    n_c2: int = 10                  # every nC2 steps: C update on the full Eq. 4
    n_w: int = 250                  # every nW steps: recompute W(E) and W*
    gp_lambda: float = 10.0         # λ of the gradient penalty
    alpha: float = 1 / 3            # weight of L_rC in Eq. 4
    beta: float = 1 / 3             # weight of L_gC
    gamma: float = 1 / 3            # weight of L_cC
    rho: float = 0.75               # Eq. 7 blend: ρ·W(E_S) + (1−ρ)·W(E)
    delta: float = 0.95             # threshold on W (rows average 1)
    fw_per_class: int = 10          # samples per class for the filter-weight pass
    # -- transfer regularisers on E/C ---------------------------------------------------------
    transfer_reg: str = "auto"      # auto | none | delta | l2sp. auto: the method's own — DFG and DELTA: delta
                                    # (§3: E and C "regularized ... similar to DELTA"); the others: none
    reg_alpha: float = 0.01         # weight of the feature-map (DELTA) or L2-SP distance
    reg_beta: float = 0.01          # weight of the L2 penalty on the classifier head
    delta_layers: str = "auto"      # maps the DELTA regulariser compares: extractor = E's output | stages = the
                                    # conv3 output of each ResNet-50 stage's last block (DELTA's code) | auto:
                                    # stages on resnet50, extractor otherwise (DELTA's code has no LeNet/VGG list)
    # -- source model -------------------------------------------------------------------------
    pretrain_steps: int = 1500      # source training steps (Adam 1e-3, batch 64); cached by key
    source_per_class: int = 1000    # source images per class; 0 = all (the paper presets: all of EMNIST / CIFAR-10;
                                    # glyph sources are made to order: 0 gives their default 1,000 per class)
    head_refit: str = "auto"        # auto: re-fit C_S's last layer on the target when the target's classes differ
                                    # from the source's (names, order), keep it when they match | always | never
    head_refit_steps: int = 200     # steps of that re-fit (E_S and the rest of C_S frozen)
    start_head: str = "source"      # the head E/C start from (from-source methods): source = C_S's, re-fit or kept
                                    # | random = a fresh one (the paper for ResNet-50, App. A; W(E_S) keeps C_S's)
    allow_random_init: bool = False # resnet50 without ImageNet weights in the torch cache
    # -- baselines ----------------------------------------------------------------------------
    difa_phase_fraction: float = 0.3  # DIFA+cMWGAN: fraction of steps per phase (fine-tune, GAN); rest trains C
    difa_level: str = "fc"          # DIFA+cMWGAN generates: fc = the input of C's last Linear (refs [14, 15]),
                                    # conv = E's feature maps with DFG's G and D (the level DFG works at)
    difa_critic: str = "conditional"  # DIFA+cMWGAN's D: conditional = scores (feature, class), a projection critic
                                    # (refs [14, 15] condition D on the class) | unconditional = the feature alone
                                    # (our runs before 2026-11-29)
    frozen_bn: str = "train"        # BN layers of E/C that do not train (fine-tuning's frozen layers; DIFA+cMWGAN's
                                    # E/C after phase 1): train = batch statistics, running ones updated (torch's
                                    # default, DELTA's code) | eval = running statistics, kept. Only ResNet-50 has BN
    # -- official-code switches (DESIGN §2; all off = the paper) ------------------------------
    official_flip_sign: bool = False        # 1: W from base − ablated loss (sign flipped)
    official_discard_rho: bool = False      # 2: blend computed but W* uses W(E) only
    official_unscaled_weights: bool = False # 3: weights mean 1/nf (scaled only to threshold)
    official_weight_after_bn: bool = False  # 4: W ⊙ BN(tanh) instead of BN(W ⊙ tanh)
    official_lrelu_identity: bool = False   # 5: LeakyReLU slope 1.0 (nn.LeakyReLU(True)) in G and D
    official_keep_bias: bool = False        # 6: ablation zeroes weights, keeps the bias
    official_loss_gate: bool = False        # 7: recompute W only if last L_E < 0.05; pass in train mode
    official_joint_ec: bool = False         # 8: one joint E+C loss (CE counted twice)
    official_lenet_head: bool = False       # 9: LeNet's C head FC 1024/128 instead of Table A.3's 120/84
    official_default_init: bool = False     # 10: PyTorch's default init instead of Xavier/He with zero biases
    official_ec_every_nc1: bool = False     # E and C (Alg. 1 lines 16-17) only on the nC1 steps, after G's Eq. 4c

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


FIELD_TYPES = {f.name: typing.get_type_hints(Config)[f.name] for f in fields(Config)}
# The text fields that take one of a few values: `validate` checks them and the Train page offers them from here
CHOICES: dict[str, tuple[str, ...]] = {
    "imbalance": ("step", "longtail", "none"), "short_classes": ("error", "all"), "optimizer_ec": ("adam", "sgd"),
    "transfer_reg": ("auto", "none", "delta", "l2sp"), "delta_layers": ("auto", "extractor", "stages"),
    "head_refit": ("auto", "always", "never"), "start_head": ("source", "random"), "difa_level": ("fc", "conv"),
    "difa_critic": ("conditional", "unconditional"), "frozen_bn": ("train", "eval")}
OFFICIAL_SWITCHES = [f.name for f in fields(Config) if f.name.startswith("official_")]


def field_docs() -> dict[str, str]:
    """{field: its comment in `Config` above, continuation lines joined}: the one documented source for
    `python -m dfg presets --fields` and the Train form's tooltips."""
    import inspect
    import re

    out: dict[str, str] = {}
    last = None
    for line in inspect.getsource(Config).splitlines():
        if m := re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line):
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif (c := re.match(r"\s+#\s*(.+)$", line)) and last and not c.group(1).startswith("--"):
            out[last] += " " + c.group(1).strip()  # a comment-only line right below a field continues its comment
        else:
            last = None
    return out


def parse_value(name: str, text: str):
    """Convert CLI/app text into the field's type, with a clear message on failure."""
    if name not in FIELD_TYPES:
        raise ConfigError(f"unknown config field {name!r}{_did_you_mean(name)}")
    kind = FIELD_TYPES[name]
    try:
        if kind is bool:
            low = str(text).strip().lower()
            if low not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError
            return low in {"1", "true", "yes", "on"}
        if kind is int:
            try:
                return int(str(text).strip())  # exact at any size
            except ValueError:
                f = float(text)  # 1e3: whole and exact below 2^53 only
                if not f.is_integer() or abs(f) >= 2 ** 53:
                    raise ValueError from None
                return int(f)
        if kind is float:
            return float(text)
        if kind == tuple[int, ...]:
            text = str(text).strip().strip("[]()")
            return tuple(int(t) for t in text.replace(",", " ").split()) if text else ()
        return str(text)
    except ValueError:
        allowed = {bool: " (true or false)", int: " (a whole number; above 2^53 write it in digits)",
                   float: " (a number)"}.get(kind, " (class indices, e.g. \"2 9\", 2,9 or [2, 9])")
        what = getattr(kind, "__name__", "list") if kind is not str else "str"
        raise ConfigError(f"{name}={text!r} is not a valid {what}{allowed}") from None


def from_dict(d: dict) -> Config:
    """Config from a (possibly older) config.json: unknown keys are an error, missing keys default."""
    unknown = sorted(set(d) - set(FIELD_TYPES))
    if unknown:
        raise ConfigError(f"unknown config fields {unknown}: config.json was made by a newer version of DFG "
                          "Explorer (update this one) or edited by hand (remove those keys)")
    for k, v in d.items():  # config.json is data: every value must have its field's JSON type
        kind = FIELD_TYPES[k]
        ok = (isinstance(v, bool) if kind is bool else
              isinstance(v, int) and not isinstance(v, bool) if kind is int else
              isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
              isinstance(v, str) if kind is str else
              isinstance(v, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in v))
        if not ok:
            raise ConfigError(f"config field {k}={v!r} has the wrong type: expected "
                              f"{getattr(kind, '__name__', 'a list of ints')}")
    d = {k: tuple(v) if FIELD_TYPES[k] == tuple[int, ...] else v for k, v in d.items()}
    return Config(**{**LEGACY_DEFAULTS, **d})


# What a config.json written before a field existed meant: runs made before 2026-11-28 always re-fit the
# source head, their DIFA+cMWGAN generated E's feature maps, and DELTA's regulariser compared E's output on every
# backbone; before 2026-11-29 DIFA+cMWGAN's critic did not see the class. So they resume and re-evaluate as they
# started.
LEGACY_DEFAULTS = {"head_refit": "always", "difa_level": "conv", "delta_layers": "extractor",
                   "difa_critic": "unconditional"}


# Fields that say where and how often a run reports, not what it computes: a resume may change them, and a
# sweep's grid does not count them as its experiment.
BOOKKEEPING = frozenset({"threads", "device", "data_root", "download", "log_every", "eval_every", "ckpt_every"})


def changed_fields(old: Config, new: Config) -> list[str]:
    """'field: old -> new' for each field (BOOKKEEPING aside) whose value differs."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in BOOKKEEPING and json.dumps(a[k]) != json.dumps(b[k])]


RUNS_DIR_ENV = "DFG_RUNS_DIR"    # the app's and the command line's default runs folder
DATA_ROOT_ENV = "DFG_DATA_ROOT"  # their default data root (datasets + cached source models)


def default_runs_dir() -> str:
    return os.environ.get(RUNS_DIR_ENV) or "runs"


def default_data_root() -> str:
    return os.environ.get(DATA_ROOT_ENV) or "data"


def absolute_path(path: str) -> str:
    """A user's path as an absolute one (~ expanded), so a worker or a later command started in another
    folder finds the same files."""
    return str(Path(path).expanduser().resolve())


def _did_you_mean(name: str) -> str:
    """'; did you mean pretrain_steps?' for a misspelt or dashed field name, else ''."""
    import difflib

    close = difflib.get_close_matches(name.replace("-", "_").lower(), list(FIELD_TYPES), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else "; `python -m dfg presets --fields` lists them"


def with_absolute_data_root(cfg: Config) -> Config:
    """The config a run stores: its data root absolute (absolute_path), as the CLI and the app both write it."""
    return replace(cfg, data_root=absolute_path(cfg.data_root)) if cfg.data_root else cfg


def make_config(preset: str = "demo", overrides: dict | None = None) -> Config:
    """A preset with overrides applied (values may be text, as from the CLI), validated."""
    from .presets import PRESETS  # presets.py builds on Config
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    vals = {k: parse_value(k, v) if isinstance(v, str) and FIELD_TYPES.get(k) is not str else v
            for k, v in (overrides or {}).items()}
    for k in vals:
        if k not in FIELD_TYPES:
            raise ConfigError(f"unknown config field {k!r}{_did_you_mean(k)}")
    if vals.get("majority"):  # given classes fix their count; a different count beside them is a contradiction
        if "num_majority" in vals and vals["num_majority"] != len(vals["majority"]):
            raise ConfigError(f"num_majority={vals['num_majority']} contradicts majority={vals['majority']} "
                              f"({len(vals['majority'])} classes); give one of them")
        vals["num_majority"] = len(vals["majority"])
    if "preset" in vals:
        raise ConfigError(f"preset={vals['preset']!r} cannot be overridden: choose the preset with --preset NAME "
                          "(the app: the preset box)")
    from .methods import METHOD_DEFAULTS  # lazy: methods import torch
    base = PRESETS[preset]
    # the method's own defaults (e.g. baselines' learning rates) first, then the user's overrides win
    method_defaults = METHOD_DEFAULTS.get(vals.get("method", base.method), {})
    vals = {**method_defaults.get(vals.get("optimizer_ec", base.optimizer_ec), {}), **vals}
    cfg = replace(base, preset=preset, **vals)
    if vals.get("majority") and cfg.imbalance != "step":
        raise ConfigError(f"majority={cfg.majority} applies to imbalance=step only (this run: imbalance="
                          f"{cfg.imbalance}); leave it unset or use imbalance=step")
    from .validation import validate  # validation.py builds on Config
    validate(cfg)
    return cfg
