"""Backbones, generator and critic: shapes, initialisation, keyword-only traps."""
import pytest
import torch
from torch import nn

from dfg.gan import GAN_ARCHS, Critic, Generator
from dfg.networks import BACKBONES, build_backbone, run_sequential


@pytest.mark.parametrize("name", list(BACKBONES))
def test_generator_output_matches_extractor_output(name):
    spec = BACKBONES[name]
    torch.manual_seed(0)
    extractor, classifier = build_backbone(name, num_classes=7)
    x = torch.randn(2, spec.in_channels, spec.image_size, spec.image_size)
    feats = extractor(x)
    assert tuple(feats.shape[1:]) == spec.feature_shape
    assert classifier(feats).shape == (2, 7)
    g = Generator(name, num_classes=7)
    z = torch.rand(2, g.noise_dim) * 2 - 1
    fake = g(z, torch.tensor([0, 6]), torch.ones(7, spec.feature_shape[0]))
    assert fake.shape == feats.shape
    assert Critic(name)(fake).shape == (2,)
    assert extractor.num_filters == spec.feature_shape[0]


def test_noise_sizes_follow_the_paper():
    assert GAN_ARCHS["lenet"].noise_dim + 10 == 110  # Table A.4 input 110
    assert GAN_ARCHS["resnet50"].noise_dim == 4900  # Table A.8 input 4900 + classes


@pytest.mark.parametrize("name,scheme_std", [("lenet", "xavier"), ("vgg16", "he")])
def test_gan_init_scheme_and_zero_bias(name, scheme_std):
    torch.manual_seed(0)
    d = Critic(name)
    conv = next(m for m in d.modules() if isinstance(m, nn.Conv2d))
    fan_in = conv.weight[0].numel()
    fan_out = conv.out_channels * conv.weight[0, 0].numel()
    expected = (2 / (fan_in + fan_out)) ** 0.5 if scheme_std == "xavier" else (2 / fan_in) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.15)
    assert all(m.bias.abs().sum() == 0 for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_leaky_relu_slope_is_passed_by_keyword():
    g = Generator("lenet", num_classes=10)
    slopes = {m.negative_slope for m in g.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    official = Critic("lenet", negative_slope=1.0)  # official code's LeakyReLU(True): an affine critic
    x = torch.randn(3, 6, 14, 14)
    # with slope 1.0 the critic is affine: D(a+b) - D(b) = D(a) - D(0)
    a, b, zero = x[:1], x[1:2], torch.zeros(1, 6, 14, 14)
    assert torch.allclose(official(a + b) - official(b), official(a) - official(zero), atol=1e-5)


def test_channel_weights_zero_out_channels_in_official_order_only():
    torch.manual_seed(0)
    w = torch.ones(10, 6)
    w[3, 2] = 0.0
    z, y = torch.rand(8, 100) * 2 - 1, torch.full((8,), 3)
    official = Generator("lenet", num_classes=10, weight_after_bn=True)
    assert official(z, y, w)[:, 2].abs().max() == 0  # W ⊙ BN(tanh): dropped channel exactly 0
    paper = Generator("lenet", num_classes=10)
    out = paper(z, y, w)  # BN(W ⊙ tanh): channel is 0 before BN, so BN maps it to its bias (0 at init)
    assert torch.allclose(out[:, 2], torch.zeros_like(out[:, 2]), atol=1e-4)
    assert out[:, 0].std() > 0.5


def test_paper_order_normalises_the_weighted_channels_and_official_order_scales_the_normalised_ones():
    """Eq. 9, BN(W* ⊙ h): with batch statistics, a channel weighted 2 comes out as it does weighted 1 (BN removes
    the scale), and a channel weighted 0 comes out as BN's shift β. The official W* ⊙ BN(h): twice the output
    and exactly 0. All rows of the class ŷ=3, so the batch statistics are those of the weighted channel."""
    z, y = torch.rand(8, 100, generator=torch.Generator().manual_seed(1)) * 2 - 1, torch.full((8,), 3)
    w = torch.ones(10, 6)
    w[3, 0], w[3, 2] = 2.0, 0.0
    for official in (False, True):
        torch.manual_seed(0)
        g = Generator("lenet", num_classes=10, weight_after_bn=official)
        with torch.no_grad():
            g.bn_out.bias.fill_(0.5)
        plain, weighted = g(z, y, torch.ones(10, 6)), g(z, y, w)
        if official:
            torch.testing.assert_close(weighted[:, 0], 2 * plain[:, 0])
            assert weighted[:, 2].abs().max() == 0
        else:
            torch.testing.assert_close(weighted[:, 0], plain[:, 0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(weighted[:, 2], torch.full_like(weighted[:, 2], 0.5))
        assert (plain[:, 0] - 0.5).abs().max() > 0.5  # channel 0 is not constant: the comparisons can fail


@pytest.mark.parametrize("shape", [(3, 4, 28, 28), (2, 5, 11, 9)])
def test_fast_no_grad_pool_equals_max_pool(shape):
    """MaxPool2x2's no-grad path gives exactly nn.MaxPool2d's values (odd sides cropped, NaN kept,
    ties); with grad it is nn.MaxPool2d itself, so gradients are identical."""
    from torch.nn import functional as F

    from dfg.networks import MaxPool2x2

    torch.manual_seed(0)
    x = torch.relu(torch.randn(shape))  # many zero ties after ReLU
    x[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        got = MaxPool2x2()(x)
    want = F.max_pool2d(x, 2)
    assert got.shape == want.shape
    assert torch.equal(torch.nan_to_num(got, nan=-7.0), torch.nan_to_num(want, nan=-7.0))
    assert torch.isnan(got[0, 0, 0, 0])
    xg = x.nan_to_num().requires_grad_(True)
    MaxPool2x2()(xg).sum().backward()
    xr = x.nan_to_num().requires_grad_(True)
    F.max_pool2d(xr, 2).sum().backward()
    assert torch.equal(xg.grad, xr.grad)


@pytest.mark.parametrize("name", ["lenet", "vgg16"])
def test_generator_no_grad_forward_equals_autograd_forward(name):
    """G's transposed convs take a different kernel without grad; the features must be the same."""
    torch.manual_seed(0)
    g = Generator(name, num_classes=10).eval()
    z, y = torch.rand(5, g.noise_dim) * 2 - 1, torch.arange(5)
    with torch.no_grad():
        fast = g(z, y)
    assert torch.allclose(fast, g(z, y), atol=1e-6)


def test_vgg16_classifier_folds_its_pooled_linear_with_the_same_outputs_and_gradients():
    """On 32x32 images VGG-16's C pools a 1x1 map to 7x7 before its 25088 -> 4096 Linear: C runs that
    Linear with its weights summed over the 49 copies. Logits, input and parameter gradients must be
    those of the plain nn.Sequential with the same modules, for 2·B·4096·(25088 − 512) fewer FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from dfg.networks import Classifier
    torch.manual_seed(0)
    _, c = build_backbone("vgg16", num_classes=5)
    assert isinstance(c, Classifier) and isinstance(c[:-1], Classifier)
    plain = nn.Sequential(*c)  # the very same modules, torch's forward
    assert list(plain.state_dict()) == list(c.state_dict())
    x = torch.randn(3, 64, 16, 16)
    grads = []
    for net in (c, plain):
        net.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as count:
            out = net(xi)
        (out * torch.arange(1.0, 6.0)).sum().backward()
        grads.append((out.detach(), xi.grad, [p.grad.clone() for p in net.parameters()], count.get_total_flops()))
    (o1, gx1, gp1, f1), (o2, gx2, gp2, f2) = grads
    close = lambda a, b: (a - b).abs().max() <= 1e-5 * b.abs().max()  # noqa: E731 (float rounding only)
    assert close(o1, o2) and close(gx1, gx2)
    assert all(close(a, b) for a, b in zip(gp1, gp2))
    assert f2 - f1 == 2 * 3 * 4096 * (25088 - 512)


def test_a_hooked_layer_keeps_the_plain_forward():
    """A hook on the pool, Flatten or Linear (Captum, a user's probe) sees torch's own modules run."""
    torch.manual_seed(0)
    _, c = build_backbone("vgg16", num_classes=5)
    seen = []
    fc = next(m for m in c if isinstance(m, nn.Linear))
    fc.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    c(torch.randn(2, 64, 16, 16))
    assert seen == [(2, 25088)]


def test_pooled_fc_fold_equals_the_unfolded_layers():
    """AdaptiveAvgPool2d(7) over a 1x1 map + Flatten + Linear == Linear with weights summed over the 49 positions."""
    torch.manual_seed(4)
    mods = [torch.nn.AdaptiveAvgPool2d(7), torch.nn.Flatten(), torch.nn.Linear(8 * 49, 5)]
    x = torch.randn(6, 8, 1, 1)
    folded = {}
    got = run_sequential(mods, x, folded)
    assert folded[mods[2]].shape == (5, 8)  # the fold really happened
    assert torch.allclose(got, torch.nn.Sequential(*mods)(x), atol=1e-5)
    x2 = torch.randn(6, 8, 2, 2)  # not 1x1: no fold, plain modules
    assert torch.allclose(run_sequential(mods, x2, {}), torch.nn.Sequential(*mods)(x2))


def test_official_lenet_head_and_pytorch_default_init():
    """DESIGN §2 items 9 and 10 as switches: the official code's LeNet head (FC 1024/128) and PyTorch's own
    init (non-zero biases) for E, C, G and D; off, Table A.3's 120/84 and Xavier with zero biases. The cached
    source model is keyed on both (its nets are built the same way)."""
    from dfg.config import make_config
    from dfg.networks import backbone_options, init_scheme
    from dfg.source import source_key

    official = make_config("demo", {"official_lenet_head": True, "official_default_init": True})
    paper = make_config("demo")
    torch.manual_seed(0)
    e, c = build_backbone("lenet", num_classes=10, **backbone_options(official))
    torch.manual_seed(0)
    plain = nn.Conv2d(1, 6, 5)  # the first layer _lenet makes, with torch's own init
    assert [m.out_features for m in c if isinstance(m, nn.Linear)] == [1024, 128, 10]
    assert torch.equal(e.last_conv.weight, plain.weight) and torch.equal(e.last_conv.bias, plain.bias)
    e0, c0 = build_backbone("lenet", num_classes=10, **backbone_options(paper))
    assert [m.out_features for m in c0 if isinstance(m, nn.Linear)] == [120, 84, 10]
    assert not e0.last_conv.bias.any() and not any(m.bias.any() for m in c0 if isinstance(m, nn.Linear))
    g = Generator("lenet", num_classes=10, init=init_scheme(official))
    d = Critic("lenet", init=init_scheme(official))
    biases = [m.bias for net in (g, d) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d,
                                                                              nn.Linear)) and m.bias is not None]
    assert biases and all(b.abs().sum() > 0 for b in biases)
    assert init_scheme(paper) == "xavier" and init_scheme(make_config("stl10")) == "he"
    assert len({source_key(cfg, 1) for cfg in (paper, official, make_config("demo", {"official_lenet_head": True}))}) == 3
