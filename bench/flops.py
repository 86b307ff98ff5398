"""Matmul/conv FLOPs of a call, as torch's FLOP registry counts them (padded conv taps included), so
the benchmarks can show how much arithmetic each side does; everything else is elementwise."""
from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket in flop_registry:
            self.total += flop_registry[func._overloadpacket](*args, **(kwargs or {}), out_val=out)
        return out


def gflop(fn, *args, **kwargs) -> float:
    """GFLOP done by fn(*args, **kwargs) (its result is discarded)."""
    with _Count() as count:
        fn(*args, **kwargs)
    return count.total / 1e9
