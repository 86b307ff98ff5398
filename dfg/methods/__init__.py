"""Method registry: every method is a class with `train_step(step, batches) -> dict` of losses (detached
0-dim tensors or floats; `scalars` reads them back as floats with one device sync). A method writes
`update` (the device work, which cudagraphs.py can replay) and, where it has host-side work, `after_update`."""
from .base import Method, SourceModel, TrainContext, scalars
from .baselines import Delta, DifaCMWGAN, FineTune, Original
from .dfg import DFG

METHODS: dict[str, type[Method]] = {
    "original": Original,
    "finetune": FineTune,
    "delta": Delta,
    "difa_cmwgan": DifaCMWGAN,
    "dfg": DFG,
}

# Per-method settings applied before the user's overrides, so that `--set method=original` gives a
# baseline trained the way it should be (fair budgets: same steps and data, suitable learning rates).
# Keyed by (method, optimizer family): SGD presets (ResNet) keep their own rates.
METHOD_DEFAULTS: dict[str, dict] = {
    "original": {"adam": dict(lr_extractor=1e-3, lr_classifier=1e-3), "sgd": {}},
    "finetune": {"adam": dict(lr_extractor=1e-3, lr_classifier=1e-3), "sgd": {}},
    "delta": {"adam": dict(lr_extractor=1e-3, lr_classifier=1e-3), "sgd": {}},
    "difa_cmwgan": {"adam": dict(lr_extractor=1e-3, lr_classifier=1e-3), "sgd": {}},  # G/D keep the preset's
    "dfg": {"adam": {}, "sgd": {}},
}

__all__ = ["METHODS", "METHOD_DEFAULTS", "Method", "SourceModel", "TrainContext", "scalars"]
