"""Algorithm 1 iterations/s: the library's DFG step vs the plain eager reference (bench/reference.py)
on the fmnist preset's LeNet networks, batch 64, same data and the same updates per iteration.

    python bench/alg1_speed.py [--steps 100] [--repeats 3] [--device cpu|cuda|all] [--threads N]
                               [--backbone lenet|vgg16|resnet50] [--tf32]
--backbone vgg16 / resnet50: the stl10 / caltech256 preset's networks on random images of that size
(the speed does not depend on the pixels). On CUDA a third figure reads every step's losses back
(one device sync per step, as a loop that logs each step would): the cost of syncing.
Last line: alg1_steps_per_s=… reference_steps_per_s=… ratio=…"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import gflop  # noqa: E402
from reference import EagerAlgorithm1  # noqa: E402

from dfg.config import make_config  # noqa: E402
from dfg.data import BatchStream, DataError, build_data  # noqa: E402
from dfg.data.images import TensorImages  # noqa: E402
from dfg.loop import configure_backend, fw_sample  # noqa: E402
from dfg.methods import METHODS, TrainContext, scalars  # noqa: E402
from dfg.networks import BACKBONES  # noqa: E402

PRESET = {"lenet": "fmnist", "vgg16": "stl10", "resnet50": "caltech256"}


def load(backbone: str):
    if backbone != "lenet":  # random images at the backbone's size, 10 classes
        spec, n = BACKBONES[backbone], 512 if backbone == "resnet50" else 2000
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, spec.in_channels, spec.image_size, spec.image_size), generator=g,
                               dtype=torch.uint8)
        train = TensorImages(images, torch.arange(n) % 10)
        return type("Synthetic", (), {"train": train, "num_classes": 10, "in_channels": spec.in_channels})(), \
            f"random {spec.image_size}px"
    try:  # the paper's target (Debian's Fashion-MNIST) when installed, else the offline MNIST 5k
        return build_data("fmnist", backbone="lenet", n_max=6000, ratio=40, seed=0), "fmnist"
    except DataError:
        return build_data("mnist5k", backbone="lenet", ratio=10, seed=0), "mnist5k"


def measure(device: torch.device, steps: int, repeats: int, backbone: str = "lenet", tf32: bool = False):
    cfg = make_config(PRESET[backbone], {"data_root": tempfile.mkdtemp(), "device": str(device), "tf32": tf32,
                                         "fw_per_class": 10})
    configure_backend(cfg, device)  # CUDA: full fp32 unless --tf32 (torch's default would use TF32 convs)
    data, name = load(backbone)
    torch.manual_seed(0)
    rng = torch.Generator(device=device)
    rng.manual_seed(0)
    ctx = TrainContext(cfg=cfg, device=device, num_classes=data.num_classes, in_channels=data.in_channels, rng=rng,
                       fw_sample=fw_sample(data, cfg, device))
    ours = METHODS["dfg"](ctx)
    ours.on_start()
    stream = BatchStream(data.train, cfg.batch_size, seed=0, device=device)
    nets = [copy.deepcopy(n).to(memory_format=torch.contiguous_format)  # the reference is plain NCHW
            for n in (ours.extractor, ours.classifier, ours.generator, ours.critic)]
    ref = EagerAlgorithm1(*nets, data.train, cfg, data.num_classes, ours.w_star.clone(), device=str(device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            fn(s)
        sync()
        return steps / (time.perf_counter() - t0)

    timed_ours = lambda s: ours.train_step(s, stream)  # noqa: E731
    for s in range(1, 11):  # warm-up (allocator, kernels, DataLoader)
        timed_ours(s)
        ref.step(s)
    flops = (gflop_per_step(timed_ours, 11), gflop_per_step(ref.step, 11)) if device.type == "cpu" else (0, 0)
    readback = lambda s: scalars(ours.train_step(s, stream))  # noqa: E731
    a, b, c = [], [], []
    for _ in range(repeats):  # interleaved so machine noise hits both alike
        a.append(timed(timed_ours))
        b.append(timed(ref.step))
        if device.type == "cuda":
            c.append(timed(readback))
    return statistics.median(a), statistics.median(b), name, flops, statistics.median(c) if c else None


def gflop_per_step(fn, first: int, steps: int = 4) -> float:
    """GFLOP per iteration (bench/flops.py), averaged over a few iterations."""
    return gflop(lambda: [fn(s) for s in range(first, first + steps)]) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "all"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--backbone", default="lenet", choices=list(PRESET))
    p.add_argument("--tf32", action="store_true", help="CUDA: TF32 matmuls/convs (the library's tf32=true)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    last = ""
    for d in devices:
        ours, ref, name, (f_ours, f_ref), synced = measure(torch.device(d), args.steps, args.repeats,
                                                           args.backbone, args.tf32)
        where = torch.cuda.get_device_name() if d == "cuda" else f"{torch.get_num_threads()} threads"
        extra = (f"(GFLOP per iteration: ours {f_ours:.2f}, reference {f_ref:.2f})" if d == "cpu" else
                 f"(ours reading losses back every step: {synced:.2f} it/s; tf32 {args.tf32})")
        print(f"[{d}, {args.backbone}, {name}, {where}] ours {ours:.2f} it/s  reference {ref:.2f} it/s  "
              f"ratio {ours / ref:.2f}  {extra}")
        prefix = "" if d == "cpu" else "cuda_"
        last += f"{prefix}alg1_steps_per_s={ours:.2f} {prefix}reference_steps_per_s={ref:.2f} {prefix}ratio={ours / ref:.2f} "
    print(last.strip())


if __name__ == "__main__":
    main()
