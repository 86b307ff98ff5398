"""The CPU fast paths (dfg/kernels.py): the matrix products (through MKL and through oneDNN), the dense
form of tiny-output convs and the product form of transposed convs, against torch's own ops and autograd;
and that the critic's written-out gradients and G's forward (with and without grad) are unchanged when they
are used."""
import platform
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dfg import gan, kernels, wgan_gp
from dfg.gan import Critic, Generator
from dfg.kernels import DenseConv, mm_nn, mm_nt, product_worthwhile, transposed_conv_product

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from reference import plain_copy  # noqa: E402


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """Both layouts: one thread splits the rows into 16 images (torch's single-thread dispatch rule)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(params=["onednn", "mkl"])
def products(request, monkeypatch):
    """Each library for mm_nt/mm_nn, whichever this CPU would take (kernels.onednn_products). Only float32
    CPU tensors reach either; other dtypes take the plain ops."""
    monkeypatch.setattr(kernels, "onednn_products", lambda: request.param == "onednn")
    return request.param


@pytest.mark.parametrize("m,k,n", [(192, 1024, 512), (7, 13, 5), (64, 110, 2048)])
def test_onednn_products_equal_matmul(m, k, n, threads, products):
    g = torch.Generator().manual_seed(m)
    a, b, bias = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    ref = F.linear(a.double(), b.double(), bias.double())
    got = mm_nt(a, b, bias)
    assert got.shape == (m, n) and got.is_contiguous() and got.dtype == torch.float32
    assert (got.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    d = torch.randn(m, n, generator=g)
    ref = d.double() @ b.double()
    got = mm_nn(d, b)
    assert got.shape == (m, k) and got.is_contiguous()
    assert (got.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    # a transposed (non-contiguous) operand is read by value, not by memory
    assert torch.allclose(mm_nt(a.t().contiguous().t(), b), a @ b.t(), rtol=1e-4, atol=1e-3)


def test_the_product_library_follows_the_cpu_vendor_unless_overridden(monkeypatch):
    """MKL (torch's matmul, exactly) on Intel CPUs, oneDNN 1x1 convs elsewhere; DFG_PRODUCTS overrides."""
    a, b = torch.randn(64, 48), torch.randn(24, 48)
    calls = []
    monkeypatch.setattr(kernels, "onednn_mm_nt", lambda *args: calls.append("nt") or F.linear(*args))
    monkeypatch.setattr(kernels, "onednn_mm_nn", lambda *args: calls.append("nn") or args[0] @ args[1])
    try:
        for forced, expected in (("mkl", False), ("onednn", True)):
            monkeypatch.setenv("DFG_PRODUCTS", forced)
            kernels.onednn_products.cache_clear()
            assert kernels.onednn_products() is expected
            calls.clear()
            assert torch.equal(kernels.mm_nt(a, b), F.linear(a, b))
            assert torch.equal(kernels.mm_nn(a, b.t()), a @ b.t())
            assert calls == (["nt", "nn"] if expected else [])
        monkeypatch.delenv("DFG_PRODUCTS")
        kernels.onednn_products.cache_clear()
        try:
            with open("/proc/cpuinfo") as f:
                intel = "GenuineIntel" in f.read()
        except OSError:  # not Linux: the vendor is unknown, and oneDNN is the choice
            intel = False
        assert kernels.onednn_products() is not intel
    finally:
        kernels.onednn_products.cache_clear()


def test_other_dtypes_use_the_plain_ops_exactly():
    a, b = torch.randn(5, 4, dtype=torch.double), torch.randn(3, 4, dtype=torch.double)
    assert torch.equal(mm_nt(a, b), F.linear(a, b))
    assert torch.equal(mm_nn(a @ b.t(), b), (a @ b.t()) @ b)


GEOMETRIES = [  # (in_ch, out_ch, kernel, stride, padding, dilation, bias, h, w)
    (5, 7, 5, 2, 2, 1, True, 4, 4),     # D's last conv (LeNet/VGG critics: 64 -> 128, 4x4 -> 2x2)
    (3, 4, 3, 1, 1, 1, True, 3, 5),     # stride 1, a non-square map
    (2, 3, (3, 2), (2, 1), (1, 0), 2, False, 5, 4),  # uneven kernel/stride/padding, dilation, no bias
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_dense_conv_equals_the_conv_and_its_gradients(geometry):
    cin, cout, k, s, p, dil, bias, h, w = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=dil, bias=bias).double()
    x = torch.randn(6, cin, h, w, dtype=torch.double, requires_grad=True)
    y = conv(x)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, conv.weight), g)
    with torch.no_grad():
        dense = DenseConv(conv, h, w)
        assert torch.allclose(dense.forward(x), y, rtol=0, atol=1e-12)
        assert torch.allclose(dense.forward(x, bias=False), F.conv2d(x, conv.weight, None, s, p, dil), atol=1e-12)
        assert torch.allclose(dense.input_grad(g), gx, atol=1e-12)
        got_w = dense.weight_grad(g, x)
        assert got_w.shape == conv.weight.shape and torch.allclose(got_w, gw, atol=1e-12)
        # channels-last inputs (how D runs on the CPU) give the same numbers
        assert torch.allclose(dense.forward(x.contiguous(memory_format=torch.channels_last)), y, atol=1e-12)


def test_dense_form_only_where_it_pays():
    """D's last conv qualifies (4x4 -> 2x2: a tap joins 49 of the 64 output/input pixel pairs, so the
    dense product does 1.3x the useful work); its second conv (7x7 -> 4x4: 256 of 784 pairs, 3.1x) and
    other dtypes, grouped convs and linear layers do not."""
    critic = Critic("lenet")
    conv2, conv3 = critic.net[2], critic.net[4]
    assert DenseConv.worthwhile(conv3, torch.zeros(2, 64, 4, 4))
    assert not DenseConv.worthwhile(conv2, torch.zeros(2, 32, 7, 7))
    assert not DenseConv.worthwhile(conv3, torch.zeros(2, 64, 4, 4, dtype=torch.double))
    assert not DenseConv.worthwhile(nn.Conv2d(64, 128, 5, 2, 2, groups=2), torch.zeros(2, 64, 4, 4))
    assert not DenseConv.worthwhile(critic.net[-1], torch.zeros(2, 512))
    # ResNet-50's critic: its last conv maps 14x14 -> 7x7, far too large to densify
    big = Critic("resnet50").net[4]
    assert not DenseConv.worthwhile(big, torch.zeros(1, 64, 14, 14))


def test_critic_gradients_with_the_dense_conv_match_autograd_in_float32(monkeypatch, threads, products):
    torch.manual_seed(3)
    critic = Critic("lenet").to(memory_format=torch.channels_last)
    real, fake = torch.randn(16, 6, 14, 14), torch.randn(16, 6, 14, 14)
    eps = torch.rand(16, 1, 1, 1)
    mixed = eps * real + (1 - eps) * fake
    built = []
    init = DenseConv.__init__

    def recording_init(self, layer, h, w):
        built.append(layer)
        init(self, layer, h, w)

    monkeypatch.setattr(DenseConv, "__init__", recording_init)
    critic.zero_grad(set_to_none=True)
    got = wgan_gp.critic_loss_and_grads(critic, real, fake, mixed, 10.0)
    grads = {n: p.grad.clone() for n, p in critic.named_parameters()}
    assert built == [critic.net[4]]  # the dense path ran, for the last conv only
    critic.zero_grad(set_to_none=True)
    ref = wgan_gp.reference_critic_loss(critic, real, fake, mixed, 10.0)
    ref.loss.backward()
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    assert got.penalty.item() == pytest.approx(ref.penalty.item(), rel=1e-5)
    for name, p in critic.named_parameters():
        scale = p.grad.abs().max().item()
        assert (grads[name] - p.grad).abs().max().item() <= 1e-4 * scale + 1e-7, name


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("cin,cout,k,s,p,h,w,bias", [
    (128, 48, 3, 2, 0, 4, 4, True),    # LeNet's G, first layer: 4x4 -> 9x9
    (16, 8, 2, 2, 1, 16, 16, True),    # ResNet-50's G: k2 s2 p1, 16 -> 30
    (16, 8, 2, 2, 2, 30, 30, True),    # ResNet-50's G, last layer: k2 s2 p2, 30 -> 56
    (5, 7, (3, 2), (2, 2), (1, 0), 5, 3, False),  # uneven kernel and padding, non-square, no bias
])
def test_transposed_conv_product_equals_the_transposed_conv(cin, cout, k, s, p, h, w, bias):
    layer = nn.ConvTranspose2d(cin, cout, k, stride=s, padding=p, bias=bias).double()
    x = torch.randn(3, cin, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(cin))
    assert product_worthwhile(layer)
    with torch.no_grad():
        ref = layer(x)
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            got = transposed_conv_product(inp, layer)
            assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
            assert (got - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_transposed_conv_product_leaves_the_bias_alone_for_a_single_output_pixel():
    """n = out_h = out_w = 1: the output must be a new tensor, not the bias itself summed into."""
    layer = nn.ConvTranspose2d(4, 3, 1).double()
    bias = layer.bias.detach().clone()
    x = torch.randn(1, 4, 1, 1, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(2):
            got = transposed_conv_product(x, layer)
            assert torch.allclose(got, layer(x), atol=1e-12)
    assert torch.equal(layer.bias.detach(), bias) and got.data_ptr() != layer.bias.data_ptr()


def test_product_form_only_where_few_taps_overlap():
    def worth(k, s, **kw):
        return product_worthwhile(nn.ConvTranspose2d(4, 4, k, stride=s, **kw))
    assert worth(3, 2) and worth(2, 2, padding=1)                   # LeNet's k3 s2, ResNet's k2 s2
    assert not worth(4, 2, padding=1) and not worth(3, 1) and not worth(4, 1)  # VGG's, LeNet's others
    assert not worth(3, 2, output_padding=1) and not worth(3, 2, dilation=2)
    assert not worth(2, 2, groups=2)


@pytest.mark.parametrize("cin,cout,k,s,p,h,w", [
    (6, 32, 5, 2, 2, 14, 14),   # D's first conv on LeNet's features: 14x14 -> 7x7
    (3, 8, 3, 2, 1, 9, 8),      # odd and even sides
    (4, 5, 4, 3, 1, 10, 11),    # stride 3
    (2, 3, (5, 2), 2, (2, 0), 7, 6),  # uneven kernel: a phase with taps on one side only
])
def test_phase_input_gradient_equals_the_transposed_conv(cin, cout, k, s, p, h, w):
    layer = nn.Conv2d(cin, cout, k, stride=s, padding=p).double()
    x = torch.randn(3, cin, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(cin))
    go = torch.randn_like(layer(x))
    ref = torch.ops.aten.convolution_backward(go, x, layer.weight, None, layer.stride, layer.padding, (1, 1),
                                              False, (0, 0), 1, (True, False, False))[0]
    got = kernels.phase_input_grad(go, layer, (h, w))
    assert got.shape == ref.shape and (got - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_phase_form_only_for_strided_convs_with_few_input_channels():
    first, second = Critic("lenet").net[0], Critic("lenet").net[2]
    go = torch.randn(2, 32, 7, 7)
    assert kernels.phase_worthwhile(first, go)                       # 6 -> 32 channels, stride 2
    assert not kernels.phase_worthwhile(second, torch.randn(2, 64, 4, 4))  # 32 input channels
    assert not kernels.phase_worthwhile(first, go.double())           # float64: the plain op
    assert not kernels.phase_worthwhile(nn.Conv2d(6, 32, 5, padding=2), go)  # stride 1


@pytest.mark.parametrize("backbone,batch", [("lenet", 64), ("resnet50", 2)])
def test_generator_fast_forward_equals_torch_with_and_without_grad(backbone, batch, threads, monkeypatch, products):
    """G's CPU transposed convs (product form and backward-data) give torch's features and BatchNorm
    statistics without grad; with grad, also torch's gradients for every parameter (float32).
    Features are float32 sums through G's train-mode BN (over 2 samples for ResNet-50's G), so both are
    checked against a float64 twin (the plain ops) relative to the features' scale: the fast path is
    ~1e-5 of it from float64 on this CPU, torch's own ~4e-6; a wrong tap or stride is off by O(1)."""
    torch.manual_seed(0)
    g = Generator(backbone, num_classes=10)
    twin = plain_copy(g)
    z, y, w = torch.rand(batch, g.noise_dim) * 2 - 1, torch.arange(batch) % 10, torch.rand(10, g.last.out_channels)
    with torch.no_grad():
        exact = plain_copy(g).double()(z.double(), y, w.double())
    tol = 1e-4 * exact.abs().max()

    def close(a):  # a float32 result and the float64 one: float32 rounding through G, no more
        return (a.double() - exact).abs().max() <= tol
    products = []
    monkeypatch.setattr(gan, "transposed_conv_product",
                        lambda x, layer: (products.append(layer), transposed_conv_product(x, layer))[1])
    with torch.no_grad():
        got, ref = g(z, y, w), twin(z, y, w)
    assert products  # the product path ran (LeNet's k3 s2, ResNet-50's k2 s2 layers)
    assert close(got) and close(ref)
    for a, b in zip(g.buffers(), twin.buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)

    products.clear()
    backward_fns = []
    for m in g.modules():
        if isinstance(m, gan.ConvTranspose2d):
            m.register_forward_hook(lambda m, args, out: backward_fns.append(type(out.grad_fn).__name__))
    got, ref = g(z, y, w), twin(z, y, w)
    assert products  # with grad too, and every layer's backward is the fast form's
    assert backward_fns and set(backward_fns) == {"_FastForwardBackward"}
    assert close(got) and close(ref)
    probe = torch.randn_like(ref)
    (got * probe).sum().backward()
    (ref * probe).sum().backward()
    for (name, a), b in zip(g.named_parameters(), twin.parameters()):
        assert a.grad is not None and b.grad is not None, name
        assert (a.grad - b.grad).abs().max() <= 1e-4 * b.grad.abs().max(), name


def test_fast_transposed_conv_gives_the_input_gradient_and_no_bias_gradient_without_bias():
    """The autograd form's backward in float64 (exact to rounding): the input gradient when the input
    needs one, and a bias-free layer."""
    torch.manual_seed(1)
    layer = gan.ConvTranspose2d(5, 3, 3, stride=2, bias=False).double()
    plain = plain_copy(layer)
    x = torch.randn(2, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    probe = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    (layer(x) * probe).sum().backward()
    (plain(x2) * probe).sum().backward()
    assert torch.allclose(x.grad, x2.grad, rtol=1e-12, atol=1e-12)
    assert torch.allclose(layer.weight.grad, plain.weight.grad, rtol=1e-12, atol=1e-12)


def test_allocator_tuning_takes_on_glibc():
    assert kernels.tune_allocator() is True
    assert kernels.tune_allocator() is True  # idempotent (cached)
