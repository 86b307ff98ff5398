"""Matmul/conv FLOPs of a call, as torch's FLOP registry counts them (padded conv taps included), so
the benchmarks can show how much arithmetic each side does; everything else is elementwise. `OpTimes`
also times every aten op (bench/alg1_speed.py --ops); `Steal` reports how much CPU time a shared virtual
machine lost to others while a benchmark ran."""
from __future__ import annotations

import collections
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def _flops(func, args, kwargs, out) -> int:
    count = flop_registry.get(func._overloadpacket)
    return count(*args, **kwargs, out_val=out) if count is not None else 0


class OpTimes(TorchDispatchMode):
    """Wall time, calls and FLOPs of every aten op run inside the block, keyed by (op, input shapes).
    CPU ops run synchronously, so an op's wall time is its kernel's time plus torch's dispatch; pass
    sync=torch.cuda.synchronize to time CUDA kernels (one sync per op: much slower than a real run)."""

    def __init__(self, sync=lambda: None, clock=time.perf_counter):
        super().__init__()
        self.sync, self.clock = sync, clock
        self.seconds = collections.defaultdict(float)
        self.calls = collections.Counter()
        self.flops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.sync()
        start = self.clock()
        out = func(*args, **kwargs)
        self.sync()
        end = self.clock()
        key = (func._overloadpacket.__name__, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
        self.seconds[key] += end - start
        self.calls[key] += 1
        self.flops[key] += _flops(func, args, kwargs, out)
        return out


def gflop(fn, *args, **kwargs) -> float:
    """GFLOP done by fn(*args, **kwargs) (its result is discarded)."""
    with OpTimes() as log:
        fn(*args, **kwargs)
    return sum(log.flops.values()) / 1e9


class Steal:
    """The share of CPU time the hypervisor gave to other machines since construction (/proc/stat's steal
    column; 0 where there is none)."""

    def __init__(self):
        self.start = self.read()

    @staticmethod
    def read() -> tuple[int, int]:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return 0, 0
        return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])

    def share(self) -> float:
        (s0, t0), (s1, t1) = self.start, self.read()
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0
