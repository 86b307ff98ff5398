"""Checks before a run folder exists (`preflight`): config, device, folders, the target's data files and the
source model, so bad input stops with one message and leaves nothing behind."""
from __future__ import annotations

import os

from .config import Config, ConfigError
from .validation import validate
from .fileio import writable_problem
from .loop import load_data, resolve_device
from .methods import METHODS


def preflight(cfg: Config):
    """Every check that can fail before a run folder exists: the config, the device, the target's data
    files and the source model (cached, or its weights/data present). Returns the data bundle."""
    from .data import DATASETS, build_source_data
    from .source import imagenet_state_dict, refit_needed, source_key

    validate(cfg)
    device = resolve_device(cfg.device)
    if os.path.exists(cfg.data_root) and not os.path.isdir(cfg.data_root):
        raise ConfigError(f"data_root={cfg.data_root!r} is a file; it must be a folder (datasets and the source "
                          "model cache live there)")
    data = load_data(cfg)
    if METHODS[cfg.method].from_source:
        refit_needed(cfg, data.class_names)  # head_refit=never with other class counts: SourceError
        if cfg.source == "imagenet":
            imagenet_state_dict(cfg.allow_random_init, check_only=True)  # SourceError: missing or damaged
        else:
            cache = os.path.join(cfg.data_root, "sources", f"{source_key(cfg, data.in_channels, device)}.pt")
            if not os.path.exists(cache):
                problem = writable_problem(os.path.dirname(cache))
                if problem:
                    raise ConfigError(f"data_root={cfg.data_root!r}: the source model cannot be cached in "
                                      f"{os.path.dirname(cache)} ({problem}); choose a data_root you can write to")
                if not DATASETS[cfg.source].offline:
                    build_source_data(cfg.source, backbone=cfg.backbone, root=cfg.data_root, download=cfg.download,
                                      n_per_class=1)  # raises DataError naming the missing files
    return data
