"""The CPU fast paths of dfg/kernels.py against the ops they replace, on the shapes of one LeNet critic
update (batch 64: 192 rows of real, fake and x̂, and 64 rows of the penalty's direction):

1. a 192x1024 @ 1024x512 float32 product: torch.matmul (MKL) vs a oneDNN 1x1 conv (kernels.onednn_mm_nt);
   kernels.mm_nt takes MKL on Intel CPUs and oneDNN on others (kernels.onednn_products);
2. D's last conv (64 -> 128, 5x5 stride 2, 4x4 -> 2x2): its four uses in one update (forward of 192 rows,
   forward of 64, input gradient, weight gradient) as oneDNN convs vs one kernels.DenseConv;
3. one whole written-out critic update (wgan_gp.critic_loss_and_grads) without the dense conv, and with it
   through either library's products.

    python bench/dense_conv_speed.py [--repeats 7] [--threads N]
Medians of interleaved repeats, after kernels.tune_allocator() as in a training process.
Last line: matmul_gflops=… onednn_gflops=… products=… conv_ms=… dense_ms=… conv_speedup=… critic_ms=…
critic_dense_ms=… critic_speedup=… critic_dense_mkl_ms=… critic_dense_onednn_ms=…"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dfg import kernels, wgan_gp  # noqa: E402
from dfg.gan import Critic  # noqa: E402
from dfg.kernels import DenseConv, onednn_mm_nt  # noqa: E402


def per_call_ms(fn, calls: int) -> float:
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels.tune_allocator()
    torch.manual_seed(0)
    cl = torch.channels_last
    a, b = torch.randn(192, 1024), torch.randn(512, 1024)
    flop = 2 * 192 * 1024 * 512

    critic = Critic("lenet").to(memory_format=cl)
    conv = critic.net[4]
    x = torch.randn(192, 64, 4, 4).contiguous(memory_format=cl)
    v = torch.randn(64, 64, 4, 4).contiguous(memory_format=cl)
    d = torch.randn(192, 128, 2, 2)

    @torch.no_grad()
    def as_convs():
        wgan_gp._apply(conv, x)
        wgan_gp._apply(conv, v, bias=False)
        wgan_gp._input_grad(conv, d, x)
        wgan_gp._weight_grad(conv, d, x)

    @torch.no_grad()
    def as_dense():
        dense = DenseConv(conv, 4, 4)  # rebuilt each time, as after every critic update
        dense.forward(x)
        dense.forward(v, bias=False)
        dense.input_grad(d)
        dense.weight_grad(d, x)

    real, fake = torch.randn(64, 6, 14, 14), torch.randn(64, 6, 14, 14)
    mixed = 0.3 * real + 0.7 * fake
    overhead = kernels.DENSE_MAX_OVERHEAD

    chosen = kernels.onednn_products

    def update(dense: bool, products=chosen):  # products: which library mm_nt/mm_nn take
        def run():
            kernels.DENSE_MAX_OVERHEAD = overhead if dense else 0.0  # 0: no conv qualifies
            kernels.onednn_products = products
            critic.zero_grad(set_to_none=True)
            wgan_gp.critic_loss_and_grads(critic, real, fake, mixed, 10.0)
        return run

    cases = {"matmul": lambda: a @ b.t(), "onednn": lambda: onednn_mm_nt(a, b), "conv": as_convs, "dense": as_dense,
             "critic": update(False), "critic_dense_mkl": update(True, lambda: False),
             "critic_dense_onednn": update(True, lambda: True)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    try:
        for _ in range(args.repeats):  # interleaved so machine noise hits every case alike
            for name, fn in cases.items():
                times[name].append(per_call_ms(fn, args.calls))
    finally:
        kernels.DENSE_MAX_OVERHEAD, kernels.onednn_products = overhead, chosen
    ms = {k: statistics.median(t) for k, t in times.items()}
    assert torch.allclose(onednn_mm_nt(a, b), F.linear(a, b), rtol=1e-4, atol=1e-3)
    products = "onednn" if chosen() else "mkl"
    ms["critic_dense"] = ms[f"critic_dense_{products}"]  # the library this CPU takes
    print(f"[cpu, {torch.get_num_threads()} threads] 192x1024x512 product: "
          f"torch.matmul {flop / ms['matmul'] / 1e6:.0f} GFLOP/s, oneDNN 1x1 conv {flop / ms['onednn'] / 1e6:.0f} GFLOP/s"
          f" (this CPU's products: {products})")
    print(f"D's last conv, four uses per update: oneDNN convs {ms['conv']:.2f} ms, dense {ms['dense']:.2f} ms "
          f"({ms['conv'] / ms['dense']:.2f}x)")
    print(f"one critic update (LeNet, batch 64): {ms['critic']:.2f} ms without, {ms['critic_dense']:.2f} ms with the "
          f"dense conv ({ms['critic'] / ms['critic_dense']:.2f}x); with the dense conv through MKL "
          f"{ms['critic_dense_mkl']:.2f} ms, through oneDNN {ms['critic_dense_onednn']:.2f} ms")
    print(f"matmul_gflops={flop / ms['matmul'] / 1e6:.0f} onednn_gflops={flop / ms['onednn'] / 1e6:.0f} products={products} "
          f"conv_ms={ms['conv']:.3f} dense_ms={ms['dense']:.3f} conv_speedup={ms['conv'] / ms['dense']:.2f} "
          f"critic_ms={ms['critic']:.3f} critic_dense_ms={ms['critic_dense']:.3f} "
          f"critic_speedup={ms['critic'] / ms['critic_dense']:.2f} critic_dense_mkl_ms={ms['critic_dense_mkl']:.3f} "
          f"critic_dense_onednn_ms={ms['critic_dense_onednn']:.3f}")


if __name__ == "__main__":
    main()
