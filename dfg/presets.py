"""The paper's six settings (Appendix A) and the offline demo as plain `Config` instances (`PRESETS`), with a
line each (`PRESET_NOTES`)."""
from __future__ import annotations

from .config import Config


def _paper(**kw) -> Config:
    """Appendix A defaults shared by every paper preset."""
    base = dict(n_critic=5, gp_lambda=10.0, rho=0.75, delta=0.95, alpha=1 / 3, beta=1 / 3, gamma=1 / 3,
                batch_size=64, adam_beta1=0.5, adam_beta2=0.9, log_every=50, eval_every=1000, ckpt_every=1000)
    base.update(kw)
    return Config(**base)


_LENET = dict(backbone="lenet", source="emnist", steps=20000, n_c1=2, n_c2=10, n_w=5000, pretrain_steps=10000,
              source_per_class=0)
_VGG = dict(backbone="vgg16", source="cifar10", n_c1=2, n_c2=10, n_w=5000, pretrain_steps=30000, source_per_class=0)
_RESNET = dict(backbone="resnet50", source="imagenet", steps=40000, n_c1=1, n_c2=5, n_w=2000, optimizer_ec="sgd",
               lr_extractor=0.01, lr_classifier=0.01, lr_generator=1e-4, lr_critic=1e-4, lr_drop_at=0.5,
               pretrain_steps=0, start_head="random")

PRESETS: dict[str, Config] = {
    "demo": Config(steps=700, n_w=100, eval_every=100, ckpt_every=100, pretrain_steps=1000),  # offline: glyphs -> MNIST 5k, 10:1 step imbalance, ~2 min on 2 CPU cores
    "svhn": _paper(preset="svhn", dataset="svhn", imbalance="step", n_max=5000, ratio=10, short_classes="all", **_LENET,
                   lr_extractor=2e-5, lr_classifier=2e-5, lr_generator=2e-4, lr_critic=1e-4),
    "fmnist": _paper(preset="fmnist", dataset="fmnist", imbalance="step", n_max=6000, ratio=40, **_LENET,
                     lr_extractor=1e-5, lr_classifier=1e-5, lr_generator=1e-4, lr_critic=1e-4),
    "stl10": _paper(preset="stl10", dataset="stl10", imbalance="none", steps=20000, **_VGG,
                    lr_extractor=5e-5, lr_classifier=5e-5, lr_generator=1e-4, lr_critic=1e-4),
    "cinic10": _paper(preset="cinic10", dataset="cinic10", imbalance="step", n_max=9000, ratio=10, steps=40000,
                      **_VGG, lr_extractor=2e-5, lr_classifier=2e-5, lr_generator=1e-4, lr_critic=1e-4),
    "caltech256": _paper(preset="caltech256", dataset="caltech256", imbalance="none", **_RESNET),
    "food101": _paper(preset="food101", dataset="food101", imbalance="step", n_max=750, ratio=5, **_RESNET),
}

PRESET_NOTES = {
    "demo": "offline demo: LeNet-5, printed glyphs -> MNIST 5k (10:1, 2 majority classes), 700 steps (~2 min on 2 CPU cores)",
    "svhn": "LeNet-5, EMNIST -> SVHN gray (5000:500), 20k steps, App. A",
    "fmnist": "LeNet-5, EMNIST -> Fashion-MNIST (6000:150, 40:1), 20k steps, App. A",
    "stl10": "VGG-16, CIFAR-10 -> STL-10 32x32 (balanced, 500/class), 20k steps, App. A",
    "cinic10": "VGG-16, CIFAR-10 -> CINIC-10 (9000:900), 40k steps, App. A",
    "caltech256": "ResNet-50, ImageNet -> Caltech-256 (60/class, balanced), 40k steps SGD, App. A",
    "food101": "ResNet-50, ImageNet -> Food-101 (750:150, 5:1), 40k steps SGD, App. A",
}
