"""Checkpoints: written atomically (temp + rename), read with torch.load(weights_only=True).

A checkpoint holds tensors and plain containers only — no pickled objects — plus the backbone and
method it belongs to and a SHA-256 of its content, so a mismatched, truncated or edited file is refused
with a clear message."""
from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
from pathlib import Path

import torch

from .fileio import atomic_write_bytes, fault

FORMAT = 2          # 2 adds the content digest; format 1 (no digest) is still read
REDO = ("move it away and `python -m dfg resume` trains the run again from step 0 (its rows on file are kept), "
        "or start a new run")


class CheckpointError(ValueError):
    """The checkpoint file is missing, truncated, tampered with or from another run setup."""


def save_checkpoint(path: Path, state: dict, *, backbone: str, method: str, step: int) -> None:
    """Replace `path` atomically: a kill or a full disk mid-write leaves the previous checkpoint intact."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "backbone": backbone, "method": method, "step": step, "state": state,
                "sha256": content_digest(state)}, buf)

    def between_write_and_rename():  # test hooks (DFG_FAULT): the temp file is complete, not yet renamed
        if fault("kill_during_checkpoint", step):
            os.kill(os.getpid(), signal.SIGKILL)
        if fault("enospc_checkpoint", step):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

    atomic_write_bytes(Path(path), buf.getvalue(), before_replace=between_write_and_rename)


def load_checkpoint(path: Path, *, backbone: str | None = None, method: str | None = None,
                    map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; the run has not reached its first checkpoint")
    try:  # weights_only: tensors and plain containers; any other pickled global is refused, never called
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle opcode, disallowed global...
        first = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} is unreadable or not a plain-tensor checkpoint "
                              f"({type(e).__name__}: {first}); {REDO}") from None
    if (not isinstance(ckpt, dict) or ckpt.get("format") not in (1, FORMAT) or not isinstance(ckpt.get("state"), dict)
            or not isinstance(ckpt.get("step"), int)):
        raise CheckpointError(f"checkpoint {path} has an unknown layout (not written by dfg)")
    if ckpt["format"] >= 2 and ckpt.get("sha256") != content_digest(ckpt["state"]):
        raise CheckpointError(f"checkpoint {path} does not match its checksum: the file is damaged or was edited; "
                              f"{REDO}")
    if backbone is not None and ckpt.get("backbone") != backbone:
        raise CheckpointError(f"checkpoint {path} is for backbone {ckpt.get('backbone')!r}, "
                              f"but this run uses {backbone!r}")
    if method is not None and ckpt.get("method") != method:
        raise CheckpointError(f"checkpoint {path} is for method {ckpt.get('method')!r}, "
                              f"but this run uses {method!r}")
    return ckpt


def content_digest(obj) -> str:
    """SHA-256 over a state's structure and every tensor's dtype, shape and bytes (device-independent)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:  # int, float, str, bool, None
        h.update(f"V{obj!r}".encode())


def load_method_state(method, ckpt: dict, path: Path) -> None:
    """`method.load_state_dict(ckpt["state"]["method"])`, with a wrong-shaped or incomplete state
    (a checkpoint edited by hand, or from another setting) reported as a CheckpointError."""
    try:
        method.load_state_dict(ckpt["state"]["method"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        first = (str(e).splitlines() or [""])[0][:300]
        raise CheckpointError(f"checkpoint {path} does not fit this run's networks ({type(e).__name__}: {first}); "
                              "it was written for another setting or edited") from None


def check_config_unchanged(run, ckpt: dict, cfg, why: str) -> None:
    """Refuse a config.json edited after the checkpoint was written (checkpoints since 2026-11-29 hold their
    config), BOOKKEEPING fields aside: the fields are named, then `why`."""
    if isinstance(ckpt["state"].get("config"), dict):
        refuse_changed_config(run, ckpt["state"]["config"], ckpt["step"], cfg, why)


def refuse_changed_config(run, trained: dict, step: int, cfg, why: str) -> None:
    """CheckpointError naming the fields (BOOKKEEPING aside) where `cfg` differs from the config the checkpoint
    at `step` was trained with (`trained`, as config.json holds it)."""
    from .config import changed_fields, from_dict

    changed = changed_fields(from_dict(trained), cfg)
    if changed:
        raise CheckpointError(f"run {run.id}'s config.json was changed after its checkpoint at step "
                              f"{step} ({'; '.join(changed)}): {why}")
