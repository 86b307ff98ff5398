"""Feature generator G and feature critic D (paper Tables A.4, A.6, A.8; DCGAN-style, WGAN-GP).

G's last layer multiplies output channel j by the class-wise filter weight W*_j(ŷ) (Eq. 9)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .kernels import product_worthwhile, transposed_conv_product
from .networks import BACKBONES, init_weights


@dataclass(frozen=True)
class GanArch:
    """Layer lists per backbone. deconvs: (out_ch, kernel, stride, padding); convs: out_ch (5x5, s2, p2)."""
    noise_dim: int
    fc_shape: tuple[int, int, int]                 # FC output reshaped to (C, 4, 4)
    deconvs: tuple[tuple[int, int, int, int], ...]  # last entry produces E's feature shape
    convs: tuple[int, ...]
    fc_hidden: tuple[int, ...]                     # critic FC layers between flatten and the score


GAN_ARCHS: dict[str, GanArch] = {
    # Table A.4: 110 = 100 noise + 10 classes -> 4x4x128 -> 9x9x48 -> 11x11x12 -> 14x14x6
    "lenet": GanArch(100, (128, 4, 4), ((48, 3, 2, 0), (12, 3, 1, 0), (6, 4, 1, 0)), (32, 64, 128), ()),
    # Table A.6: 4x4x128 -> 8x8x128 -> 16x16x128 -> 17x17x64 -> 16x16x64
    "vgg16": GanArch(100, (128, 4, 4), ((128, 4, 2, 1), (128, 4, 2, 1), (64, 4, 1, 1), (64, 4, 1, 2)),
                     (32, 64, 128), ()),
    # Table A.8: 4900 noise; 4x4x512 -> 8x8x512 -> 16x16x256 -> 30x30x256 -> 56x56x256; critic FC 6272 -> 512 -> 1
    "resnet50": GanArch(4900, (512, 4, 4), ((512, 4, 2, 1), (256, 4, 2, 1), (256, 2, 2, 1), (256, 2, 2, 2)),
                        (32, 64, 128), (512,)),
}


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d whose CPU forward is faster: as one product and strided adds when few taps
    overlap (kernels.transposed_conv_product: G's k3 s2 and k2 s2 layers), else as the input-gradient of
    the matching conv (the same operator: ConvTranspose is that adjoint). This torch build's CPU
    transposed-conv path is 1.3-1.6x slower than oneDNN's backward-data for G's shapes. With grad, the
    backward is nn.ConvTranspose2d's own (`_FastForward`), so only the forward's summation order changes.
    Off the CPU, or with groups, output padding, an output size or non-zero padding modes, it is
    nn.ConvTranspose2d."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None or x.device.type != "cpu" or self.groups != 1 \
                or any(self.output_padding) or self.padding_mode != "zeros":
            return super().forward(x, output_size)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                        or (self.bias is not None and self.bias.requires_grad)):
            return _FastForward.apply(x, self.weight, self.bias, self)
        return self.fast_forward(x)

    def fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output without autograd: a product (few taps) or oneDNN's backward-data."""
        if product_worthwhile(self):
            return transposed_conv_product(x, self)
        x = x.contiguous()  # backward-data ran faster from NCHW than from a product's channels-last output
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        h = (x.shape[-2] - 1) * sh - 2 * ph + dh * (kh - 1) + 1
        w = (x.shape[-1] - 1) * sw - 2 * pw + dw * (kw - 1) + 1
        shape_only = x.new_empty((x.shape[0], self.out_channels, h, w))
        out = torch.ops.aten.convolution_backward(x, shape_only, self.weight, None, self.stride, self.padding,
                                                  self.dilation, False, (0, 0), 1, (True, False, False))[0]
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class _FastForward(torch.autograd.Function):
    """ConvTranspose2d.fast_forward with autograd: the backward is the one autograd runs for
    nn.ConvTranspose2d (aten.convolution_backward, transposed), so gradients are computed the same way."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.has_bias = layer, bias is not None
        return layer.fast_forward(x)  # autograd does not record inside a Function's forward

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        layer = ctx.layer
        # a None bias never needs a gradient; outputs left out of the mask come back as None
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_out, x, weight, [layer.out_channels] if ctx.has_bias else None, layer.stride, layer.padding,
            layer.dilation, True, layer.output_padding, layer.groups, tuple(ctx.needs_input_grad[:3]))
        return gx, gw, gb, None


class Generator(nn.Module):
    """G(z, ŷ, W*) -> feature map shaped like E's output.

    Paper order (Eq. 9): BN(W* ⊙ tanh(deconv(·))). `weight_after_bn=True` gives the official code's
    W* ⊙ BN(tanh(·)), where dropped channels stay exactly zero (DESIGN §2 item 4)."""

    def __init__(self, backbone: str, *, num_classes: int, negative_slope: float = 0.2,
                 weight_after_bn: bool = False, init: str | None = None):
        super().__init__()
        arch, spec = GAN_ARCHS[backbone], BACKBONES[backbone]
        self.noise_dim, self.num_classes, self.weight_after_bn = arch.noise_dim, num_classes, weight_after_bn
        self.fc_shape = arch.fc_shape
        c0 = arch.fc_shape[0]
        self.fc = nn.Linear(arch.noise_dim + num_classes, c0 * 4 * 4)
        self.bn0 = nn.BatchNorm2d(c0)
        body: list[nn.Module] = []
        cin = c0
        for out, k, s, p in arch.deconvs[:-1]:
            body += [ConvTranspose2d(cin, out, k, stride=s, padding=p),
                     nn.LeakyReLU(negative_slope=negative_slope), nn.BatchNorm2d(out)]
            cin = out
        self.body = nn.Sequential(*body)
        out, k, s, p = arch.deconvs[-1]
        assert out == spec.feature_shape[0]
        self.last = ConvTranspose2d(cin, out, k, stride=s, padding=p)
        self.bn_out = nn.BatchNorm2d(out)
        init_weights(self, spec.init if init is None else init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor, channel_weights: torch.Tensor | None = None):
        """z: (B, noise_dim); labels: (B,) int; channel_weights: (num_classes, C) W* or None (all ones)."""
        # one-hot by scatter: F.one_hot reads min/max of the labels back to the host on the CPU (a sync)
        onehot = z.new_zeros(len(labels), self.num_classes).scatter_(1, labels[:, None], 1.0)
        h = self.bn0(self.fc(torch.cat([z, onehot], 1)).view(-1, *self.fc_shape))
        h = torch.tanh(self.last(self.body(h)))  # (B, C, H, W)
        if channel_weights is None:
            return self.bn_out(h)
        w = channel_weights[labels][:, :, None, None]  # (B, C, 1, 1): W*_j(ŷ)
        return w * self.bn_out(h) if self.weight_after_bn else self.bn_out(w * h)


class Projection:
    """The score of a critic `net` (a Sequential ending in Linear(width, 1)), unconditional or, with a class
    embedding, conditional by projection (Miyato & Koyama, 2018): D(f, y) = w·h(f) + b + ⟨e_y, h(f)⟩, h the
    last hidden layer. A class then changes the score in proportion to the features, so D can judge each
    class's features under WGAN-GP's gradient bound; a one-hot appended to the input could move the score by
    at most √2 between classes, against feature distances of tens."""

    @staticmethod
    def make(num_classes: int, width: int) -> nn.Embedding | None:
        # zero: D starts unconditional and learns each class's direction
        return nn.Embedding(num_classes, width, _weight=torch.zeros(num_classes, width)) if num_classes else None

    def score(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """features -> (B,) scores; labels (B,) int, required by a conditional critic."""
        if self.embed is None:
            return self.net(features).squeeze(1)
        if labels is None:
            raise ValueError("a conditional critic scores (features, labels): pass the labels")
        h = self.net[:-1](features)
        return self.net[-1](h).squeeze(1) + (self.embed(labels) * h).sum(1)


class Critic(nn.Module):
    """D: feature map -> real-valued score; three 5x5 stride-2 convs + FC, no normalisation (WGAN-GP)."""

    def __init__(self, backbone: str, *, negative_slope: float = 0.2, init: str | None = None, num_classes: int = 0):
        """num_classes > 0: a conditional critic (`Projection`), scored on (features, class)."""
        super().__init__()
        arch, spec = GAN_ARCHS[backbone], BACKBONES[backbone]
        layers: list[nn.Module] = []
        cin, side = spec.feature_shape[0], spec.feature_shape[1]
        for out in arch.convs:
            layers += [nn.Conv2d(cin, out, 5, stride=2, padding=2), nn.LeakyReLU(negative_slope=negative_slope)]
            cin, side = out, (side + 1) // 2
        layers.append(nn.Flatten())
        width = cin * side * side  # 512 (LeNet, VGG) or 6272 (ResNet)
        for hidden in arch.fc_hidden:
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(negative_slope=negative_slope)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        init_weights(self, spec.init if init is None else init)
        self.embed = Projection.make(num_classes, width)

    forward = Projection.score


class FeatureGenerator(nn.Module):
    """G for a feature *vector*: the input of C's last Linear (DIFA+cMWGAN as refs [14, 15] define it, whose
    generator and critic are fully connected). (z, ŷ) -> two hidden layers (BN, LeakyReLU) -> ReLU output,
    since the real vector follows a ReLU (or averages ReLU outputs) in every backbone."""

    def __init__(self, feature_dim: int, *, num_classes: int, init: str, noise_dim: int = 100, hidden: int = 512,
                 negative_slope: float = 0.2):
        super().__init__()
        self.noise_dim, self.num_classes = noise_dim, num_classes
        act = lambda: nn.LeakyReLU(negative_slope=negative_slope)  # noqa: E731
        self.net = nn.Sequential(nn.Linear(noise_dim + num_classes, hidden), nn.BatchNorm1d(hidden), act(),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), act(),
                                 nn.Linear(hidden, feature_dim), nn.ReLU())
        init_weights(self, init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor, channel_weights: torch.Tensor | None = None):
        """z: (B, noise_dim); labels: (B,) int -> (B, feature_dim). No class-wise attention (channel_weights
        must be None)."""
        if channel_weights is not None:
            raise ValueError("FeatureGenerator has no class-wise filter weights")
        onehot = z.new_zeros(len(labels), self.num_classes).scatter_(1, labels[:, None], 1.0)
        return self.net(torch.cat([z, onehot], 1))


class FeatureCritic(nn.Module):
    """D for a feature vector: two LeakyReLU hidden layers and a score, no normalisation (WGAN-GP); the
    shape wgan_gp's written-out gradients support."""

    def __init__(self, feature_dim: int, *, init: str, hidden: int = 512, negative_slope: float = 0.2,
                 num_classes: int = 0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.LeakyReLU(negative_slope=negative_slope),
            nn.Linear(hidden, hidden), nn.LeakyReLU(negative_slope=negative_slope), nn.Linear(hidden, 1))
        init_weights(self, init)
        self.embed = Projection.make(num_classes, hidden)

    forward = Projection.score
