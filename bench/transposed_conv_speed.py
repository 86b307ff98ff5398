"""G's transposed convs on the CPU: oneDNN's backward-data kernel vs kernels.transposed_conv_product
(one product and a strided add per tap), layer by layer and for G's whole no-grad forward, for the
generators of LeNet (batch 64), VGG-16 (batch 64) and ResNet-50 (batch 16). `kernels.product_worthwhile`
picks the product for layers with at most PRODUCT_MAX_TAPS taps per output pixel; every layer is timed
both ways here, so the figures show both sides of that rule. Then G's forward and backward with grad:
torch's nn.ConvTranspose2d (bench/reference.plain_copy) vs the library's fast forward (dfg.gan).

    python bench/transposed_conv_speed.py [--repeats 5] [--threads N] [--backbones lenet,vgg16,resnet50]
Medians of interleaved repeats, after kernels.tune_allocator() as in a training process.
Last line: <backbone>_g_ms=… <backbone>_g_product_ms=… <backbone>_g_speedup=… <backbone>_g_grad_speedup=…
for each backbone."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import plain_copy  # noqa: E402

from dfg import kernels  # noqa: E402
from dfg.gan import ConvTranspose2d, Generator  # noqa: E402

BATCH = {"lenet": 64, "vgg16": 64, "resnet50": 16}


def ms(fn, budget_s: float = 0.3) -> float:
    fn()
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < budget_s or calls < 2:
        fn()
        calls += 1
    return (time.perf_counter() - t0) / calls * 1e3


def with_taps(limit: float, fn):
    """Run fn with PRODUCT_MAX_TAPS set to limit (0: every layer uses backward-data; inf: every layer a product)."""
    def run():
        saved, kernels.PRODUCT_MAX_TAPS = kernels.PRODUCT_MAX_TAPS, limit
        try:
            return fn()
        finally:
            kernels.PRODUCT_MAX_TAPS = saved
    return run


def seeded_generator(backbone: str) -> tuple[Generator, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The backbone's G (seed 0) and one batch of its inputs (z, ŷ, W*)."""
    torch.manual_seed(0)
    g = Generator(backbone, num_classes=10)
    n = BATCH[backbone]
    return g, (torch.rand(n, g.noise_dim) * 2 - 1, torch.arange(n) % 10, torch.rand(10, g.last.out_channels))


@torch.no_grad()
def measure(backbone: str, repeats: int) -> tuple[float, float]:
    g, (z, y, w) = seeded_generator(backbone)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, args[0].contiguous()))
             for m in g.modules() if isinstance(m, ConvTranspose2d)]
    g(z, y, w)
    for h in hooks:
        h.remove()
    for layer, x in inputs.items():
        call = lambda layer=layer, x=x: layer(x)  # noqa: E731
        a, b = zip(*[(ms(with_taps(0.0, call)), ms(with_taps(float("inf"), call))) for _ in range(repeats)])
        a, b = statistics.median(a), statistics.median(b)
        chosen = "product" if kernels.product_worthwhile(layer) else "backward-data"
        (kh, kw), sh = layer.kernel_size, layer.stride[0]
        shape = f"{layer.in_channels}->{layer.out_channels} k{kh}x{kw} s{sh} on {x.shape[-2]}x{x.shape[-1]}"
        print(f"  {backbone} {shape}: backward-data {a:7.2f} ms  product {b:7.2f} ms  ({a / b:.2f}x)  "
              f"rule picks {chosen}")
    plain = with_taps(0.0, lambda: g(z, y, w))
    ruled = lambda: g(z, y, w)  # noqa: E731  (the library's rule)
    a, b = zip(*[(ms(plain), ms(ruled)) for _ in range(repeats)])
    return statistics.median(a), statistics.median(b)


def measure_with_grad(backbone: str, repeats: int) -> tuple[float, float]:
    """ms of G's forward + backward (a random probe of its output) with torch's transposed convs and with
    the library's, interleaved: (plain, library)."""
    g, (z, y, w) = seeded_generator(backbone)
    plain = plain_copy(g)
    probe = torch.randn_like(g(z, y, w))

    def step(net):
        def run():
            net.zero_grad(set_to_none=True)
            (net(z, y, w) * probe).sum().backward()
        return run
    a, b = zip(*[(ms(step(plain)), ms(step(g))) for _ in range(repeats)])
    return statistics.median(a), statistics.median(b)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--backbones", default="lenet,vgg16,resnet50")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels.tune_allocator()
    last = []
    for backbone in args.backbones.split(","):
        print(f"[{backbone}, batch {BATCH[backbone]}, {torch.get_num_threads()} threads]")
        plain, ruled = measure(backbone, args.repeats)
        print(f"  {backbone} G forward, no grad: backward-data everywhere {plain:.2f} ms, library's rule "
              f"{ruled:.2f} ms ({plain / ruled:.2f}x)")
        torch_grad, ours_grad = measure_with_grad(backbone, args.repeats)
        print(f"  {backbone} G forward + backward, with grad: torch's transposed convs {torch_grad:.2f} ms, "
              f"library's {ours_grad:.2f} ms ({torch_grad / ours_grad:.2f}x)")
        last.append(f"{backbone}_g_ms={plain:.3f} {backbone}_g_product_ms={ruled:.3f} "
                    f"{backbone}_g_speedup={plain / ruled:.2f} {backbone}_g_grad_speedup={torch_grad / ours_grad:.2f}")
    print(" ".join(last))


if __name__ == "__main__":
    main()
