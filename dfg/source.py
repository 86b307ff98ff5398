"""Source models E_S/C_S: trained once on the preset's source dataset (or ImageNet weights for
ResNet-50), cached by a key of backbone + source + settings, then the head re-fit on the target."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import Config
from .fileio import exclusive_lock
from .networks import backbone_options, build_backbone, init_scheme, last_linear, replace_head

# torchvision's ResNet-50 ImageNet checkpoints, as they sit in $TORCH_HOME/hub/checkpoints
IMAGENET_FILES = ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth")
SOURCE_SEED = 0  # a source model is shared by every run of a setting, so it has its own fixed seed
PRETRAIN_LR = 1e-3


class SourceError(RuntimeError):
    """A source model cannot be obtained (missing weights or data); the message says how to fix it."""


def source_key(cfg: Config, in_channels: int, device: torch.device | str = "cpu") -> str:
    """The cache name of a source model: its settings and what computes it. A CPU's float sums depend on its
    thread count (100 demo pretraining steps on 1 and 2 threads ended 0.0175 apart), so one entry per
    `threads` value (0: torch's default on this machine) or per device type (with tf32 and deterministic on a
    GPU): a seeded run never depends on which run happened to fill the cache. A pure function of the config,
    so a check made in another process (the app's, a sweep's) names the entry the run itself will use."""
    device = torch.device(device)
    compute = f"cpu{cfg.threads}" if device.type == "cpu" else device.type + "-tf32" * cfg.tf32 + \
        "-deterministic" * cfg.deterministic  # on a GPU these change the sums (plain fp32 keeps its old key)
    settings = dict(backbone=cfg.backbone, source=cfg.source, steps=cfg.pretrain_steps,
                    per_class=cfg.source_per_class, in_channels=in_channels, lr=PRETRAIN_LR, seed=SOURCE_SEED,
                    batch=64, compute=compute, **backbone_options(cfg))
    if "glyphs" in cfg.source:  # images we render: the renderer, its fonts and Pillow are part of the data
        from .data.glyphs import glyphs_tag
        settings["glyphs"] = glyphs_tag()
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.backbone}-{cfg.source}-{digest}"


def imagenet_state_dict(allow_random_init: bool, check_only: bool = False) -> dict | None:
    """torchvision's ResNet-50 ImageNet weights from the torch cache (None: allowed to start from random).
    check_only (preflight): open the file memory-mapped, which reads its index but not its 100 MB of
    weights, so the run's own load is the only full read; a file that cannot be mapped is read in full."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in IMAGENET_FILES:
        if (hub / name).exists():
            try:
                if check_only:
                    try:
                        return torch.load(hub / name, map_location="cpu", weights_only=True, mmap=True)
                    except Exception:  # e.g. a checkpoint in torch's legacy (non-zip) format: read it in full
                        pass
                return torch.load(hub / name, map_location="cpu", weights_only=True)
            except Exception as e:  # truncated download, another file under that name
                raise SourceError(
                    f"ResNet-50 ImageNet weights at {hub / name} cannot be read ({type(e).__name__}: "
                    f"{(str(e).splitlines() or [''])[0][:200]}); the file "
                    "is damaged or not a torch checkpoint. Delete it and fetch it again on an online machine with "
                    "`python -c \"import torchvision; torchvision.models.resnet50(weights='IMAGENET1K_V2')\"`."
                ) from None
    if allow_random_init:
        return None
    raise SourceError(
        f"ResNet-50 ImageNet weights not found: expected {hub / IMAGENET_FILES[0]} (or {IMAGENET_FILES[1]}). "
        "Get them on an online machine with `python -c \"import torchvision; "
        "torchvision.models.resnet50(weights='IMAGENET1K_V2')\"` (set TORCH_HOME to choose the folder) "
        "and copy the file there, or pass --set allow_random_init=true to train from random weights.")


def pretrain_source(cfg: Config, in_channels: int, device: torch.device,
                    progress: Callable[[int, int, float], None] | None = None, *, started_from: dict | None = None,
                    log=print):
    """(E_S, C_S) trained on cfg.source with its own classes; cached under <data_root>/sources/.
    started_from: {"threads", "device"} a resumed run started with (its checkpoint says): the source model it
    started from is used while the cache has it, whatever threads or device the run resumes with."""
    if cfg.source == "imagenet":
        return _imagenet_backbone(cfg.allow_random_init, device)
    from .data import BatchStream, build_source_data

    folder = Path(cfg.data_root) / "sources"
    path = folder / f"{source_key(cfg, in_channels, device)}.pt"
    if started_from is not None:
        then = replace(cfg, threads=started_from["threads"])
        first = folder / f"{source_key(then, in_channels, started_from['device'])}.pt"
        if first != path:
            if (nets := _cached(first, cfg, in_channels, device, log)) is not None:
                return nets
            log(f"warning: the source model this run started from ({first.name}, made with threads="
                f"{started_from['threads']} on {started_from['device']}) is not in {folder}; the resume uses "
                f"{path.name} (this run's threads and device), so W(E_S) and the regulariser's reference may "
                "differ from the run's start. Resume with the threads and device it started with to keep them.")
    if (nets := _cached(path, cfg, in_channels, device, log)) is not None:
        return nets
    path.parent.mkdir(parents=True, exist_ok=True)
    # two runs needing one entry (a sweep's parallel seeds): one trains, the other waits, then loads it
    with exclusive_lock(path.with_name(f".{path.name}.lock"), make_folder=True):
        if (nets := _cached(path, cfg, in_channels, device, lambda m: None)) is not None:
            return nets
        for tmp in folder.glob(f".{path.name}.tmp*"):  # left by a process killed mid-write (we hold the lock)
            tmp.unlink(missing_ok=True)
        data = build_source_data(cfg.source, backbone=cfg.backbone, root=cfg.data_root, seed=SOURCE_SEED,
                                 download=cfg.download, n_per_class=cfg.source_per_class)
        torch.manual_seed(SOURCE_SEED)
        e, c = build_backbone(cfg.backbone, num_classes=data.num_classes, in_channels=in_channels,
                              **backbone_options(cfg))
        e.to(device).train()
        c.to(device).train()
        opt = torch.optim.Adam(list(e.parameters()) + list(c.parameters()), lr=PRETRAIN_LR)
        stream = BatchStream(data.train, 64, seed=SOURCE_SEED, device=device)
        for step in range(1, cfg.pretrain_steps + 1):
            x, y = stream.next()
            loss = F.cross_entropy(c(e(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress and (step % 50 == 0 or step == cfg.pretrain_steps):
                progress(step, cfg.pretrain_steps, loss.item())
        state = {"extractor": e.state_dict(), "classifier": c.state_dict(), "num_classes": data.num_classes}
        try:
            save_checkpoint(path, state, backbone=cfg.backbone, method="source", step=cfg.pretrain_steps)
        except FileNotFoundError:  # the folder went meanwhile (another process's writability probe removes the
            path.parent.mkdir(parents=True, exist_ok=True)  # empty folders it made: writable_problem)
            save_checkpoint(path, state, backbone=cfg.backbone, method="source", step=cfg.pretrain_steps)
    return e, c


def _cached(path: Path, cfg: Config, in_channels: int, device, log):
    """(E_S, C_S) from a cache entry, or None when there is none; a damaged one is named and left to retrain."""
    if not path.exists():
        return None
    try:
        ckpt = load_checkpoint(path, backbone=cfg.backbone, method="source")
        e, c = build_backbone(cfg.backbone, num_classes=ckpt["state"]["num_classes"], in_channels=in_channels,
                              **backbone_options(cfg))
        e.load_state_dict(ckpt["state"]["extractor"])
        c.load_state_dict(ckpt["state"]["classifier"])
    except CheckpointError as e:
        log(f"source model cache entry {path} cannot be used ({e}); training it again")
        return None
    return e.to(device), c.to(device)


def _imagenet_backbone(allow_random_init: bool, device):
    """ResNet-50 split into E/C with torchvision's ImageNet weights; a file that is not ResNet-50's is named."""
    state = imagenet_state_dict(allow_random_init)
    try:
        e, c = build_backbone("resnet50", num_classes=1000, state_dict=state)
    except RuntimeError as err:  # load_state_dict: missing or unexpected keys, other shapes
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise SourceError(
            f"the file under {hub} named as ResNet-50's ImageNet weights ({' or '.join(IMAGENET_FILES)}) does not "
            f"fit ResNet-50 ({(str(err).splitlines() or [''])[0][:160]}): it holds another network. Delete it and "
            "fetch it again on an online machine with `python -c \"import torchvision; "
            "torchvision.models.resnet50(weights='IMAGENET1K_V2')\"`.") from None
    return e.to(device), c.to(device)


def source_classes(cfg: Config) -> tuple[str, ...] | int:
    """The source task's class names, or (ImageNet, whose names are not needed) its class count."""
    if cfg.source == "imagenet":
        return 1000
    from .data.registry import get_spec
    return get_spec(cfg.source).class_names


def refit_needed(cfg: Config, target_classes: tuple[str, ...]) -> bool:
    """Whether C_S's last layer is replaced and re-fit on the target (cfg.head_refit). auto: when the
    target's classes are not the source's (names in the same order; ImageNet's 1000 never match), as for
    EMNIST -> Fashion-MNIST or CIFAR-10 -> STL-10; EMNIST -> SVHN and CIFAR-10 -> CINIC-10 keep the trained
    head, as the paper does (it replaces the last layer for ResNet-50 only). never: keep it; the class
    counts must then agree, else a SourceError says what to set."""
    source = source_classes(cfg)
    if cfg.head_refit == "always":
        return True
    if cfg.head_refit == "auto":
        return source != tuple(target_classes)
    count = source if isinstance(source, int) else len(source)
    if count != len(target_classes):
        raise SourceError(f"head_refit=never keeps the source head's {count} classes, but the target "
                          f"{cfg.dataset!r} has {len(target_classes)}: set head_refit=auto (or always)")
    return False


def refit_head(extractor, classifier, train_set, num_classes: int, cfg: Config, device: torch.device) -> float:
    """Replace C_S's last layer for the target's classes and train only it, E_S and the rest of C frozen
    (Adam 1e-3, batch 64, head_refit_steps). Returns the last refit loss. Nets end in eval mode."""
    from .data import BatchStream

    replace_head(classifier, num_classes, init_scheme(cfg))
    head = last_linear(classifier)
    extractor.eval()
    classifier.eval()  # frozen BN statistics; the linear head has none
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    stream = BatchStream(train_set, 64, seed=cfg.seed + 1, device=device)
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.head_refit_steps):
        x, y = stream.next()
        with torch.no_grad():
            feats = classifier[:-1](extractor(x))  # every C is a Sequential ending in its head
        loss = F.cross_entropy(head(feats), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


class StoppedInSetup(Exception):
    """A stop request seen while a run prepares (source pretraining can take hours on a paper preset)."""


def source_model(cfg: Config, data, device, sample, log=print, should_stop=None, started_from: dict | None = None):
    """E_S/C_S for a target task: pretrained (or from the cache), the head re-fit when the classes differ, all
    frozen, and W(E_S) on the target sample (Alg. 1 line 2). should_stop: polled on the way. started_from:
    pretrain_source's, for a resumed run."""
    from .filter_weights import compute_class_weights
    from .methods import SourceModel

    def check() -> None:
        if should_stop is not None and should_stop():
            raise StoppedInSetup

    def progress(s: int, n: int, loss: float) -> None:  # every 50 pretraining steps
        check()
        if s == n:
            log(f"pretrain source {s}/{n} loss {loss:.3f}")

    e, c = pretrain_source(cfg, data.in_channels, device, progress=progress, started_from=started_from, log=log)
    check()
    if refit_needed(cfg, data.class_names):
        torch.manual_seed(cfg.seed)  # the new head's init must not depend on whether the source came from the cache
        loss = refit_head(e, c, data.train, data.num_classes, cfg, device)
        log(f"source head re-fit on target ({cfg.head_refit_steps} steps): loss {loss:.3f}")
    else:
        log(f"source head kept: the target's classes are the source's ({cfg.source} -> {cfg.dataset})")
    check()
    for p in list(e.parameters()) + list(c.parameters()):
        p.requires_grad_(False)
    x, y = sample
    w = compute_class_weights(e, c, x, y, data.num_classes, flip_sign=cfg.official_flip_sign,
                              keep_bias=cfg.official_keep_bias)
    return SourceModel(e.eval(), c.eval(), w)
