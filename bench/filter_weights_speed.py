"""Filter-weight pass (Eq. 5-6): batched ablation (dfg.filter_weights) vs the per-filter reference
(one full E+C forward per removed filter, bench/reference.py) on LeNet-5 and VGG-16, 10 samples/class.

    python bench/filter_weights_speed.py [--repeats 3] [--device cpu|cuda] [--threads N] [--flops]
                                         [--per-class 10] [--tf32]
CUDA runs in full float32 unless --tf32 (then max_abs_diff shows what TF32 costs in accuracy).
Last line: filter_weights_vgg16_batched_s=… per_filter_s=… speedup=… max_abs_diff=…"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import Steal, gflop  # noqa: E402
from reference import per_filter_class_weights, plain_copy  # noqa: E402

from dfg.config import make_config  # noqa: E402
from dfg.filter_weights import compute_class_weights  # noqa: E402
from dfg.loop import configure_backend  # noqa: E402
from dfg.networks import BACKBONES, build_backbone  # noqa: E402


def bench(backbone: str, device: torch.device, repeats: int, per_class: int = 10, classes: int = 10,
          count_flops: bool = False):
    torch.manual_seed(0)
    spec = BACKBONES[backbone]
    e, c = build_backbone(backbone, num_classes=classes)
    e.to(device), c.to(device)
    n = per_class * classes
    x = torch.randn(n, spec.in_channels, spec.image_size, spec.image_size, device=device)
    y = torch.arange(n, device=device) % classes
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t0, out

    fast = lambda: compute_class_weights(e, c, x, y, classes)  # noqa: E731
    plain_c = plain_copy(c)  # the reference: torch's nn.Sequential for C (no folded VGG-16 Linear)
    slow = lambda: per_filter_class_weights(e, plain_c, x, y, classes).to(device)  # noqa: E731
    fast()  # warm-up
    flops = (gflop(fast), gflop(slow)) if count_flops else None
    tb, ts = [], []
    steal = Steal()
    for _ in range(repeats):
        t, wb = timed(fast)
        tb.append(t)
        t, wr = timed(slow)
        ts.append(t)
    return statistics.median(tb), statistics.median(ts), (wb - wr).abs().max().item(), flops, steal.share()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--flops", action="store_true", help="also count each side's matmul/conv GFLOP (one extra pass)")
    p.add_argument("--per-class", type=int, default=10, help="samples per class (10 classes)")
    p.add_argument("--tf32", action="store_true", help="CUDA: TF32 matmuls/convs (the library's tf32=true)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device here; use --device cpu")
    configure_backend(make_config("demo", {"tf32": args.tf32}), device)
    line = ""
    for backbone in ("lenet", "vgg16"):
        b, s, d, flops, stolen = bench(backbone, device, args.repeats, per_class=args.per_class, count_flops=args.flops)
        extra = f"  (GFLOP: batched {flops[0]:.2f}, per-filter {flops[1]:.2f})" if flops else ""
        where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
        print(f"[{device}, {where}, {args.per_class}/class, tf32 {args.tf32}] {backbone}: batched {b:.3f}s  "
              f"per-filter {s:.3f}s  speedup {s / b:.1f}x  max|ΔW| {d:.2e}{extra}  CPU steal {stolen:.0%}")
        line += (f"filter_weights_{backbone}_batched_s={b:.4f} {backbone}_per_filter_s={s:.4f} "
                 f"{backbone}_speedup={s / b:.2f} {backbone}_max_abs_diff={d:.2e} ")
    print(line.strip().replace("vgg16_per_filter_s", "per_filter_s").replace("vgg16_speedup", "speedup")
          .replace("vgg16_max_abs_diff", "max_abs_diff"))


if __name__ == "__main__":
    main()
