"""Algorithm 1 iterations/s: the library's DFG step vs the plain eager reference (bench/reference.py)
on the fmnist preset's LeNet networks, batch 64, same data and the same updates per iteration.

    python bench/alg1_speed.py [--steps 100] [--repeats 3] [--chunk 1] [--device cpu|cuda|all] [--threads N]
                               [--backbone lenet|vgg16|resnet50] [--tf32] [--cuda-graphs] [--breakdown] [--ops [N]]
Within each repeat the sides take turns, --chunk iterations at a time, so that load from elsewhere on a
shared machine (the hypervisor's CPU steal, printed) slows both alike; the ratio is the median over the
repeats of each repeat's ours/reference.
--backbone vgg16 / resnet50: the stl10 / caltech256 preset's networks on random images of that size
(the speed does not depend on the pixels). On CUDA a third figure reads every step's losses back
(one device sync per step, as a loop that logs each step would): the cost of syncing.
--cuda-graphs (CUDA): also time a second copy of the library's DFG whose iterations replay as CUDA graphs
(dfg/cudagraphs.py, the library's cuda_graphs=true), interleaved with the other two.
--breakdown: after the timed runs, where the library's iteration spends its time, part by part (each
part's own time, without the parts it calls; on CUDA every part syncs, so the parts sum to more).
--ops N: after the timed runs, the N aten ops (by op and input shapes) where the library's iteration
spends most time, with calls and GFLOP/s, then how the op time splits between matmul/conv kernels and
the other ops. Timing each op slows the iteration (both totals are printed).
Last line: alg1_steps_per_s=… reference_steps_per_s=… ratio=… (CUDA: cuda_… and, with --cuda-graphs,
cuda_graphs_steps_per_s=… cuda_graphs_ratio=…)"""
from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import OpTimes, Steal, gflop  # noqa: E402
from reference import EagerAlgorithm1, plain_copy  # noqa: E402

from dfg import kernels, wgan_gp  # noqa: E402
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


def setup_dfg(backbone: str, device: torch.device, tf32: bool = False, fw_per_class: int = 10, **overrides):
    """The library's DFG on the backbone's preset networks and data (`load`), seeded, with W* computed and
    a batch stream: (cfg, data, data name, context, method, stream). `overrides`: further config fields.
    Algorithm 1 alone, as the reference runs it: without the transfer regulariser DFG adds by default
    (transfer_reg=none), which needs a source model this set-up does not build."""
    cfg = make_config(PRESET[backbone], {"data_root": tempfile.mkdtemp(), "device": str(device), "tf32": tf32,
                                         "fw_per_class": fw_per_class, "transfer_reg": "none", **overrides})
    configure_backend(cfg, device)  # CUDA: full fp32 unless --tf32 (torch's default would use TF32 convs)
    data, name = load(backbone)
    torch.manual_seed(0)
    rng = torch.Generator(device=device)
    rng.manual_seed(0)
    ctx = TrainContext(cfg=cfg, device=device, num_classes=data.num_classes, in_channels=data.in_channels, rng=rng,
                       fw_sample=fw_sample(data, cfg, device))
    method = METHODS["dfg"](ctx)
    method.on_start()
    return cfg, data, name, ctx, method, BatchStream(data.train, cfg.batch_size, seed=0, device=device)


def measure(device: torch.device, steps: int, repeats: int, backbone: str = "lenet", tf32: bool = False,
            parts: bool = False, ops: int = 0, graphs: bool = False, chunk: int = 1):
    cfg, data, name, ctx, ours, stream = setup_dfg(backbone, device, tf32)
    nets = [plain_copy(n).to(memory_format=torch.contiguous_format)  # the reference: torch's layers, NCHW
            for n in (ours.extractor, ours.classifier, ours.generator, ours.critic)]
    ref = EagerAlgorithm1(*nets, data.train, cfg, data.num_classes, ours.w_star.clone(), device=str(device))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    timed_ours = lambda s: ours.train_step(s, stream)  # noqa: E731
    for s in range(1, 11):  # warm-up (allocator, kernels, DataLoader)
        timed_ours(s)
        ref.step(s)
    graphed = None
    if graphs and device.type == "cuda":
        from dfg.cudagraphs import GraphedSteps
        graphed = GraphedSteps(METHODS["dfg"](ctx), log=print)
        graphed.method.on_start()
        g_stream = BatchStream(data.train, cfg.batch_size, seed=0, device=device)
        for s in range(1, 10 * (graphed.warmup + 1) + 1):  # every key's warm-up steps and its capture
            graphed(s, g_stream)
    flops = (gflop_per_step(timed_ours, 11), gflop_per_step(ref.step, 11)) if device.type == "cpu" else (0, 0)
    readback = lambda s: scalars(ours.train_step(s, stream))  # noqa: E731
    fns = [timed_ours, ref.step] + ([readback] if device.type == "cuda" else []) \
        + ([lambda s: graphed(s, g_stream)] if graphed is not None else [])
    a, b, c, d, paired = [], [], [], [], []
    steal = Steal()
    for _ in range(repeats):
        rates = interleaved(fns, steps, chunk, sync)
        a.append(rates[0])
        b.append(rates[1])
        paired.append(rates[0] / rates[1])
        if device.type == "cuda":
            c.append(rates[2])
        if graphed is not None:
            d.append(rates[-1])
    print(f"ours/reference per repeat: {' '.join(f'{r:.2f}' for r in paired)}; "
          f"CPU steal during the timed runs: {steal.share():.0%}")
    if graphed is not None:
        print(f"CUDA graphs: {graphed.captured} captured" + (f"; capture FAILED: {graphed.failed}" if graphed.failed
                                                             else ""))
    if parts:
        print_breakdown(ours, stream, steps, sync, f"{device.type}, {threads()}")
    if ops:
        print_ops(ours, stream, steps, sync, f"{device.type}, {threads()}", ops)
    return (statistics.median(a), statistics.median(b), statistics.median(paired), name, flops,
            statistics.median(c) if c else None, statistics.median(d) if d else None)


def interleaved(fns, steps: int, chunk: int, sync=lambda: None, clock=time.perf_counter) -> list[float]:
    """it/s of each fn(step) over steps 1..steps, the fns taking turns `chunk` steps at a time, so that a
    burst of load from elsewhere on a shared machine (CPU steal) slows every side alike."""
    seconds = [0.0] * len(fns)
    for first in range(1, steps + 1, chunk):
        for i, fn in enumerate(fns):
            sync()
            t0 = clock()
            for s in range(first, min(first + chunk, steps + 1)):
                fn(s)
            sync()
            seconds[i] += clock() - t0
    return [steps / sec for sec in seconds]


class ExclusiveTimer:
    """Wraps callables so that each named part accumulates its own wall time only: while a wrapped call
    runs inside another, the outer part's clock is paused."""

    def __init__(self, sync=lambda: None, clock=time.perf_counter):
        self.sync, self.clock, self.seconds, self.stack = sync, clock, collections.defaultdict(float), []

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            self.sync()
            start = self.clock()
            if self.stack:
                self.seconds[self.stack[-1][0]] += start - self.stack[-1][1]
            self.stack.append([name, start])
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                end = self.clock()
                self.seconds[name] += end - self.stack.pop()[1]
                if self.stack:
                    self.stack[-1][1] = end
        return timed

    @contextlib.contextmanager
    def patched(self, parts):
        """Within the block, each (object, attribute, label) in parts is timed under label; afterwards every
        attribute is as it was (an instance's own attribute removed again, a module's function put back)."""
        saved = [(obj, attr, vars(obj).get(attr, _ABSENT)) for obj, attr, _ in parts]
        try:
            for obj, attr, label in parts:
                setattr(obj, attr, self.wrap(label, getattr(obj, attr)))
            yield self
        finally:
            for obj, attr, old in reversed(saved):
                if old is _ABSENT:
                    delattr(obj, attr)
                else:
                    setattr(obj, attr, old)


_ABSENT = object()


def ms_per_iteration(ours, stream, steps: int, sync) -> float:
    """Wall ms per iteration of `steps` library iterations."""
    sync()
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        ours.train_step(s, stream)
    sync()
    return (time.perf_counter() - t0) / steps * 1e3


def print_breakdown(ours, stream, steps: int, sync, where: str) -> None:
    """ms per iteration in each part of the library's DFG step (ExclusiveTimer), over `steps` iterations."""
    parts = [(ours, "train_step", "rest of the iteration (batches, nC1/nC2 C passes)"),
             (ours, "update_critic", "critic phase: noise, x̂, batches"),
             (wgan_gp, "critic_loss_and_grads", "critic gradients (Eq. 1, written out)"),
             (ours, "generate", "G forwards (no grad and with grad)"),
             (ours.extractor, "forward", "E forwards"),
             (ours, "update_generator", "G update: D forward + backward"),
             (ours, "update_extractor_classifier", "E and C updates (Eq. 3, 4a)"),
             (ours, "_step", "optimizer steps"), (ours, "_zero", "optimizer steps")]
    with ExclusiveTimer(sync).patched(parts) as timer:
        total = ms_per_iteration(ours, stream, steps, sync)
    print(f"where an iteration of ours goes ({where}, ms per iteration, {steps} iterations):")
    for label, sec in sorted(timer.seconds.items(), key=lambda kv: -kv[1]):
        print(f"  {label:52s} {sec / steps * 1e3:7.2f}  {sec / steps * 1e3 / total:5.1%}")
    print(f"  {'total':52s} {total:7.2f}")


def print_ops(ours, stream, steps: int, sync, where: str, top: int) -> None:
    """The `top` aten ops (by op and input shapes) taking most of the library's iteration (OpTimes), and how
    the op time splits between matmul/conv kernels and the other ops."""
    plain = ms_per_iteration(ours, stream, steps, sync)
    with OpTimes(sync) as log:
        total = ms_per_iteration(ours, stream, steps, sync)
    sec_ops = sum(log.seconds.values())
    print(f"aten ops of an iteration of ours ({where}, ms per iteration, {steps} iterations, each op timed; "
          f"share of the op time):")
    print(f"  {'ms':>7s} {'share':>6s} {'calls':>6s} {'GFLOP/s':>8s}  op (input shapes)")
    for key, sec in sorted(log.seconds.items(), key=lambda kv: -kv[1])[:top]:
        rate = f"{log.flops[key] / sec / 1e9:8.0f}" if log.flops[key] else f"{'':8s}"
        print(f"  {sec / steps * 1e3:7.2f} {sec / sec_ops:6.1%} {log.calls[key] / steps:6.1f} {rate}  "
              f"{key[0]} {' '.join('x'.join(map(str, shape)) for shape in key[1])}")
    heavy = [k for k in log.seconds if log.flops[k]]
    sec_heavy = sum(log.seconds[k] for k in heavy)
    ops_ms, heavy_ms = sec_ops / steps * 1e3, sec_heavy / steps * 1e3
    heavy_calls, all_calls = sum(log.calls[k] for k in heavy) / steps, sum(log.calls.values()) / steps
    print(f"  op time {ops_ms:.2f} ms per iteration (the iteration: {total:.2f} ms with each op timed, "
          f"{plain:.2f} ms untimed): matmul/conv {heavy_ms:.2f} ms ({heavy_ms / ops_ms:.0%}) in {heavy_calls:.0f} "
          f"calls at {sum(log.flops.values()) / sec_heavy / 1e9:.0f} GFLOP/s; other ops {ops_ms - heavy_ms:.2f} ms "
          f"({1 - heavy_ms / ops_ms:.0%}) in {all_calls - heavy_calls:.0f} calls")


def threads() -> str:
    n = torch.get_num_threads()
    return f"{n} thread" + ("s" if n != 1 else "")


def gflop_per_step(fn, first: int, steps: int = 4) -> float:
    """GFLOP per iteration (bench/flops.py), averaged over a few iterations."""
    return gflop(lambda: [fn(s) for s in range(first, first + steps)]) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=1,
                   help="iterations each side runs before the other takes its turn (default 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "all"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--backbone", default="lenet", choices=list(PRESET))
    p.add_argument("--tf32", action="store_true", help="CUDA: TF32 matmuls/convs (the library's tf32=true)")
    p.add_argument("--cuda-graphs", action="store_true", help="CUDA: also time ours replayed as CUDA graphs")
    p.add_argument("--breakdown", action="store_true", help="also print where ours spends an iteration")
    p.add_argument("--ops", type=int, nargs="?", const=30, default=0, metavar="N",
                   help="also print the N aten ops taking most of ours' iteration (default N: 30)")
    args = p.parse_args()
    if args.chunk < 1 or args.steps < 1 or args.repeats < 1:
        p.error("--steps, --repeats and --chunk must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    last = ""
    for d in devices:
        ours, ref, ratio, name, (f_ours, f_ref), synced, graphed = measure(
            torch.device(d), args.steps, args.repeats, args.backbone, args.tf32, args.breakdown, args.ops,
            args.cuda_graphs, args.chunk)
        # the CPU's product library (kernels.onednn_products) moves ours' speed from machine to machine
        where = torch.cuda.get_device_name() if d == "cuda" else \
            f"{threads()}, products {'oneDNN' if kernels.onednn_products() else 'MKL'}"
        extra = (f"(GFLOP per iteration: ours {f_ours:.2f}, reference {f_ref:.2f})" if d == "cpu" else
                 f"(ours reading losses back every step: {synced:.2f} it/s; tf32 {args.tf32})")
        print(f"[{d}, {args.backbone}, {name}, {where}] ours {ours:.2f} it/s  reference {ref:.2f} it/s  "
              f"ratio {ratio:.2f}  {extra}")
        prefix = "" if d == "cpu" else "cuda_"
        last += f"{prefix}alg1_steps_per_s={ours:.2f} {prefix}reference_steps_per_s={ref:.2f} {prefix}ratio={ratio:.2f} "
        if graphed is not None:
            print(f"[{d}, {args.backbone}, {name}, {where}] ours as CUDA graphs {graphed:.2f} it/s  "
                  f"ratio to the reference {graphed / ref:.2f}, to eager ours {graphed / ours:.2f}")
            last += f"cuda_graphs_steps_per_s={graphed:.2f} cuda_graphs_ratio={graphed / ref:.2f} "
    print(last.strip())


if __name__ == "__main__":
    main()
