"""Backbones split into extractor E and classifier C (paper Tables A.3, A.5, A.7).

E ends with its last conv block; it exposes `stem`/`finish` around that conv so filter weights can
ablate its channels in one batched pass (see filter_weights.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F


def init_weights(module: nn.Module, scheme: str) -> None:
    """Xavier (LeNet) or He (VGG, ResNet) for conv/linear weights, zero biases (paper App. A); "default" keeps
    PyTorch's own init from construction (the official code, DESIGN §2 item 10)."""
    if scheme == "default":
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_normal_(m.weight)
            elif scheme == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            else:
                raise ValueError(f"unknown init scheme {scheme!r}; use 'xavier', 'he' or 'default'")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MaxPool2x2(nn.MaxPool2d):
    """nn.MaxPool2d(2) whose no-grad forward is the max of four strided views: the same values (NaN
    propagates, ties are equal), ~10x faster than this torch build's CPU pooling kernel for the
    small maps here (E's features for the critic, evaluation, filter weights). With grad, or off the
    CPU, it is nn.MaxPool2d, so gradient routing is unchanged."""

    def __init__(self):
        super().__init__(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and x.requires_grad) or x.device.type != "cpu":
            return super().forward(x)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        return torch.maximum(torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2]),
                             torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2]))


class Extractor(nn.Module):
    """E = finish(last_conv(head(x))). `stem` returns the last conv's pre-activation output and any
    context the rest of E needs (ResNet's identity branch); `finish` maps an ablated output on."""

    def __init__(self, head: nn.Module, last_conv: nn.Conv2d, tail: nn.Module):
        super().__init__()
        self.head, self.last_conv, self.tail = head, last_conv, tail

    @property
    def num_filters(self) -> int:
        return self.last_conv.out_channels

    def stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.last_conv(self.head(x)), None

    def finish(self, h: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        return self.tail(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(*self.stem(x))


def bottleneck_conv3(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A torchvision Bottleneck's conv3 output (before bn3, the residual add and the ReLU)."""
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.relu(block.bn2(block.conv2(out)))
    return block.conv3(out)


def bottleneck_finish(block: nn.Module, h: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """The rest of a Bottleneck without downsample, from its conv3 output h and its input."""
    return block.relu(block.bn3(h) + identity)


class ResNetExtractor(Extractor):
    """ResNet-50 stem + layer1; the ablated conv is layer1[-1].conv3, whose block adds an identity.
    (Any prefix of ResNet-50 that ends with a stage's last bottleneck works the same way: `stage_views`.)"""

    def __init__(self, stem_and_blocks: nn.Sequential, last_block: nn.Module):
        last = last_block
        if last.downsample is not None:
            raise ValueError("the ablated bottleneck must add its input unchanged (no downsample)")
        super().__init__(head=stem_and_blocks, last_conv=last.conv3, tail=last.bn3)
        self.last_block = last  # holds conv1..bn3 of the final bottleneck (same modules, shared)

    def stem(self, x):
        identity = self.head(x)  # (B, 256, 56, 56): input to the last bottleneck
        return bottleneck_conv3(self.last_block, identity), identity

    def finish(self, h, ctx=None):
        return bottleneck_finish(self.last_block, h, ctx)


RESNET_STAGES = 3  # C = layer2, layer3, layer4, then avgpool, flatten, fc


def resnet_stage_maps(extractor: ResNetExtractor, classifier: nn.Module,
                      x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """E(x), C(E(x)) and the conv3 outputs of each stage's last bottleneck (layer1 to layer4: the four maps
    DELTA's code regularises on ResNets), from one forward with the same ops as classifier(extractor(x))."""
    h, identity = extractor.stem(x)
    feats = f = extractor.finish(h, identity)
    maps = [h]
    mods = list(classifier)
    for stage in mods[:RESNET_STAGES]:
        *blocks, last = list(stage)
        for b in blocks:
            f = b(f)
        h = bottleneck_conv3(last, f)
        maps.append(h)
        f = bottleneck_finish(last, h, f)
    for m in mods[RESNET_STAGES:]:
        f = m(f)
    return feats, f, maps


def stage_views(extractor: ResNetExtractor, classifier: nn.Module) -> list[tuple[Extractor, nn.Module]]:
    """For each of the four maps of `resnet_stage_maps`: (E', rest), where E' is the network up to that map's
    bottleneck as an Extractor (its last_conv is that conv3) and rest the network after it, so that
    filter_weights.loss_increase(E', rest, ...) removes that conv3's channels. Modules are shared, not copied."""
    views: list[tuple[Extractor, nn.Module]] = [(extractor, classifier)]
    mods = list(classifier)
    for s in range(RESNET_STAGES):
        blocks = list(mods[s])
        head = nn.Sequential(extractor, *mods[:s], *blocks[:-1])
        views.append((ResNetExtractor(head, blocks[-1]), nn.Sequential(*mods[s + 1:])))
    return views


LENET_HEAD = (120, 84)             # Table A.3
OFFICIAL_LENET_HEAD = (1024, 128)  # the official code's (DESIGN §2 item 9)


def _lenet(num_classes: int, in_channels: int, init: str = "xavier",
           head: tuple[int, int] = LENET_HEAD) -> tuple[Extractor, nn.Module]:
    extractor = Extractor(nn.Identity(), nn.Conv2d(in_channels, 6, 5), nn.Sequential(nn.ReLU(), MaxPool2x2()))
    h1, h2 = head
    classifier = nn.Sequential(  # 14x14x6 -> logits; head h1/h2 (120/84 as Table A.3)
        nn.Conv2d(6, 16, 5), nn.ReLU(), MaxPool2x2(), nn.Flatten(),
        nn.Linear(16 * 5 * 5, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, num_classes))
    init_weights(extractor, init)
    init_weights(classifier, init)
    return extractor, classifier


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _pooled_linear(modules: list[nn.Module], i: int, x: torch.Tensor) -> nn.Linear | None:
    """The Linear of modules[i:i+3] when they are AdaptiveAvgPool2d over a 1x1 map, Flatten and a Linear
    on the pooled values (VGG-16 on 32x32 images: 512 values copied to 7x7, then 25088 -> 4096), else None."""
    if i + 2 >= len(modules) or x.dim() != 4 or x.shape[-2:] != (1, 1):
        return None
    pool, flat, fc = modules[i:i + 3]
    if not (isinstance(pool, nn.AdaptiveAvgPool2d) and isinstance(flat, nn.Flatten) and isinstance(fc, nn.Linear)):
        return None
    if (flat.start_dim, flat.end_dim) != (1, -1) or any(map(_hooked, (pool, flat, fc))):
        return None
    return fc if fc.in_features > x.shape[1] and fc.in_features % x.shape[1] == 0 else None


def run_sequential(modules: list[nn.Module], x: torch.Tensor, folded: dict | None = None) -> torch.Tensor:
    """modules applied in order, except that AdaptiveAvgPool2d over a 1x1 map + Flatten + Linear runs as
    the Linear with its weights summed over the pooled positions: every position holds the same value, so
    W·[x_c repeated r times] = (Σ_p W[:, c, p]) x. On VGG-16 that is 512 -> 4096 instead of 25088 -> 4096,
    a quarter of C's arithmetic, forward and backward (autograd of the sum hands each position the
    gradient it would get). `folded` caches the summed weights across calls while they cannot change
    (the filter-weight pass)."""
    i = 0
    while i < len(modules):
        fc = _pooled_linear(modules, i, x)
        if fc is None:
            x = modules[i](x)
            i += 1
            continue
        w = folded.get(fc) if folded is not None else None
        if w is None:
            w = fc.weight.view(fc.out_features, x.shape[1], -1).sum(2)
            if folded is not None:
                folded[fc] = w
        x = F.linear(x.flatten(1), w, fc.bias)
        i += 3
    return x


class Classifier(nn.Sequential):
    """C: an nn.Sequential (same modules, same state dict) whose forward is `run_sequential`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_sequential(list(self), x)


def _vgg_block(cin: int, cout: int, n: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU()]
    return layers + [MaxPool2x2()]


def _vgg16(num_classes: int, in_channels: int, init: str = "he", head=None) -> tuple[Extractor, nn.Module]:
    extractor = Extractor(nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1), nn.ReLU()),
                          nn.Conv2d(64, 64, 3, padding=1), nn.Sequential(nn.ReLU(), MaxPool2x2()))
    classifier = Classifier(  # 16x16x64 -> 1x1x512 -> adaptive pool 7x7 (Table A.5) -> 4096 -> 512 -> classes
        *_vgg_block(64, 128, 2), *_vgg_block(128, 256, 3), *_vgg_block(256, 512, 3), *_vgg_block(512, 512, 3),
        nn.AdaptiveAvgPool2d(7), nn.Flatten(),
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Linear(4096, 512), nn.ReLU(), nn.Linear(512, num_classes))
    init_weights(extractor, init)
    init_weights(classifier, init)
    return extractor, classifier


def _resnet50(num_classes: int, in_channels: int, state_dict: dict | None = None,
              init: str = "he") -> tuple[Extractor, nn.Module]:
    from torchvision.models import resnet50

    if in_channels != 3:
        raise ValueError(f"resnet50 takes 3-channel images, got in_channels={in_channels}")
    net = resnet50(weights=None)
    if state_dict is not None:  # ImageNet weights; the 1000-way fc is replaced below (paper App. A)
        net.load_state_dict(state_dict)
    blocks = list(net.layer1.children())
    extractor = ResNetExtractor(nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *blocks[:-1]), blocks[-1])
    fc = nn.Linear(net.fc.in_features, num_classes)
    init_weights(fc, init)
    classifier = nn.Sequential(net.layer2, net.layer3, net.layer4, net.avgpool, nn.Flatten(), fc)
    return extractor, classifier


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the code needs to know about a backbone."""
    name: str
    build: Callable[..., tuple[Extractor, nn.Module]]
    image_size: int             # input side the generator's feature shape assumes
    in_channels: int            # channels the paper uses
    feature_shape: tuple[int, int, int]  # E's output (C, H, W) = G's output
    init: str                   # G/D init scheme
    description: str


BACKBONES: dict[str, BackboneSpec] = {
    "lenet": BackboneSpec("lenet", _lenet, 32, 1, (6, 14, 14), "xavier", "LeNet-5, E = conv5x5+pool (14x14x6)"),
    "vgg16": BackboneSpec("vgg16", _vgg16, 32, 3, (64, 16, 16), "he", "VGG-16, E = 2 conv3x3+pool (16x16x64)"),
    "resnet50": BackboneSpec("resnet50", _resnet50, 224, 3, (256, 56, 56), "he",
                             "ResNet-50 (torchvision), E = stem+layer1 (56x56x256)"),
}


def build_backbone(name: str, *, num_classes: int, in_channels: int | None = None, state_dict: dict | None = None,
                   init: str | None = None, lenet_head: tuple[int, int] = LENET_HEAD) -> tuple[Extractor, nn.Module]:
    """Fresh (E, C) for a backbone; `state_dict` (ResNet-50 only) is a torchvision ImageNet checkpoint.
    init: the backbone's scheme when None; lenet_head: LeNet's two hidden FC widths. See `backbone_options`."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    cin = spec.in_channels if in_channels is None else in_channels
    init = spec.init if init is None else init
    if name == "resnet50":
        return _resnet50(num_classes, cin, state_dict, init)
    return spec.build(num_classes, cin, init, lenet_head)


def init_scheme(cfg) -> str:
    """The init of every net a config builds: the paper's per backbone, or PyTorch's (official_default_init)."""
    return "default" if cfg.official_default_init else BACKBONES[cfg.backbone].init


def backbone_options(cfg) -> dict:
    """build_backbone's init and LeNet head for a config: the paper's, or the official code's (§2 items 9, 10)."""
    return {"init": init_scheme(cfg), "lenet_head": OFFICIAL_LENET_HEAD if cfg.official_lenet_head else LENET_HEAD}
    # (validate allows official_lenet_head on LeNet only, so no other backbone's source key depends on it)


def last_linear(classifier: nn.Module) -> nn.Linear:
    """The classifier's output layer (re-fit when source and target classes differ)."""
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    return linears[-1]


def replace_head(classifier: nn.Module, num_classes: int, init: str) -> None:
    """Swap C's final Linear for a fresh one with `num_classes` outputs (in place)."""
    old = last_linear(classifier)
    for parent in classifier.modules():
        for key, child in parent.named_children():
            if child is old:
                new = nn.Linear(old.in_features, num_classes).to(old.weight.device)
                init_weights(new, init)
                setattr(parent, key, new)
                return
