"""Checkpoints: written atomically (temp + rename), read with torch.load(weights_only=True).

A checkpoint holds tensors and plain containers only — no pickled objects — plus the backbone and
method it belongs to, so a mismatched or tampered file is refused with a clear message."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from .runstore import atomic_write_bytes

FORMAT = 1


class CheckpointError(ValueError):
    """The checkpoint file is missing, truncated, tampered with or from another run setup."""


def save_checkpoint(path: Path, state: dict, *, backbone: str, method: str, step: int) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "backbone": backbone, "method": method, "step": step, "state": state}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path, *, backbone: str | None = None, method: str | None = None,
                    map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; the run has not reached its first checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle opcode, disallowed global...
        raise CheckpointError(f"checkpoint {path} is unreadable or not a plain-tensor checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "resume from an earlier run or start a new one") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "state" not in ckpt:
        raise CheckpointError(f"checkpoint {path} has an unknown layout (not written by dfg)")
    if backbone is not None and ckpt.get("backbone") != backbone:
        raise CheckpointError(f"checkpoint {path} is for backbone {ckpt.get('backbone')!r}, "
                              f"but this run uses {backbone!r}")
    if method is not None and ckpt.get("method") != method:
        raise CheckpointError(f"checkpoint {path} is for method {ckpt.get('method')!r}, "
                              f"but this run uses {method!r}")
    return ckpt
