"""The one training loop: device, data, source model, steps, logging, evaluation, checkpoints and
status. It calls `method.train_step(step, batches)` and knows nothing about GANs."""
from __future__ import annotations

import math
import os
import time
from typing import Callable

import numpy as np
import torch

from .checkpoint import check_config_unchanged, load_checkpoint, load_method_state, save_checkpoint
from .config import Config, ConfigError
from .fileio import DiskFullError
from .filter_weights import balanced_sample
from .jobs import stop_on_sigterm
from .kernels import tune_allocator
from .methods import METHODS, TrainContext, scalars
from .metrics import evaluate
from .runstore import Run
from .source import StoppedInSetup, source_model
from .validation import validate


class Diverged(RuntimeError):
    """A loss or weight became NaN/Inf."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} requested but CUDA is not available here; use device=cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}; use one of them, or cuda")
    return device


def configure_backend(cfg: Config, device: torch.device) -> None:
    """CUDA numerics for this process. Default: full float32, as on the CPU (torch's own default lets
    cuDNN convolutions use TF32). `tf32`: matmuls and convolutions in TF32, faster on Ampere and later.
    `deterministic`: deterministic kernels (cuBLAS workspace, cuDNN, torch's deterministic mode), so a
    seeded GPU run repeats exactly; ops without a deterministic kernel warn. On the CPU: keep freed
    memory in the process (kernels.tune_allocator; the numbers are unchanged)."""
    if device.type == "cpu":
        tune_allocator()
    if device.type != "cuda":
        return
    mode = "tf32" if cfg.tf32 else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9: the per-backend API
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def load_data(cfg: Config):
    from .data import build_data
    return build_data(cfg.dataset, backbone=cfg.backbone, root=cfg.data_root, seed=cfg.seed,
                      imbalance=cfg.imbalance, ratio=cfg.ratio, n_max=cfg.n_max or None,
                      num_majority=cfg.num_majority, majority=cfg.majority or None, val_fraction=cfg.val_fraction,
                      download=cfg.download, folder=cfg.folder or None, image_size=cfg.image_size or None,
                      grayscale=cfg.grayscale if cfg.dataset == "folder" else None,
                      limit_test=cfg.limit_test or None, short_classes=cfg.short_classes)


def batch_warnings(cfg: Config, data) -> list[str]:
    """A batch larger than the training set is allowed (every batch is then the whole set) but rarely meant."""
    if cfg.batch_size <= len(data.train):
        return []
    return [f"batch_size={cfg.batch_size} is larger than the training set ({len(data.train)} images): every batch "
            f"is the whole set, while G and D still make {cfg.batch_size} features per step; the paper uses 64"]


def fw_sample(data, cfg: Config, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced, seeded sample of the target's training data for the filter-weight pass."""
    labels = np.asarray(data.train.labels)
    idx = balanced_sample(labels, cfg.fw_per_class, cfg.seed)
    xs = torch.stack([data.train[int(i)][0] for i in idx]).to(device)
    return xs, torch.as_tensor(labels[idx], dtype=torch.long, device=device)


def setup(cfg: Config, device: torch.device, log=print, on_weights=None, data=None, with_source: bool = True,
          should_stop=None, started_from: dict | None = None):
    """Data, source model and method for a config (shared by train, eval and the app's inspectors).
    `data`: the bundle `preflight` already built for this config (saves loading it twice).
    with_source=False: no source model (E/C/G/D are fresh until a checkpoint is loaded into them).
    should_stop: polled while the source model is made; True raises StoppedInSetup. started_from: the threads
    and device a resumed run's source model was made with (its checkpoint's `source_compute`)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    configure_backend(cfg, device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg) if data is None else data
    sample = fw_sample(data, cfg, device)
    from_source = with_source and METHODS[cfg.method].from_source
    source = source_model(cfg, data, device, sample, log, should_stop, started_from) if from_source else None
    torch.manual_seed(cfg.seed)  # network init independent of how much randomness the source used
    rng = torch.Generator(device=device)
    rng.manual_seed(cfg.seed)
    ctx = TrainContext(cfg=cfg, device=device, num_classes=data.num_classes, in_channels=data.in_channels,
                       rng=rng, fw_sample=sample, source=source, minority=_minority(data),
                       class_counts=tuple(int(c["kept"]) for c in data.class_counts),
                       log_weights=on_weights or (lambda step, **a: None))
    return data, METHODS[cfg.method](ctx)


def _minority(data) -> tuple[int, ...]:
    return tuple(c for c in range(data.num_classes) if data.majority and c not in data.majority)


def run_eval(method, data, device, split: str = "test") -> dict:
    from .data import iterate_batches
    dataset = data.test if split == "test" else data.val
    modes = {k: net.training for k, net in method.nets.items()}
    method.eval()
    try:
        return evaluate(method.predict, iterate_batches(dataset, 256, device=device), data.num_classes,
                        _minority(data))
    finally:  # each net as it was (a restored run's are in eval mode: BN on running statistics)
        for k, net in method.nets.items():
            net.train(modes[k])


def _finite(values: dict[str, float]) -> str | None:
    return next((k for k, v in values.items() if not math.isfinite(v)), None)


def train(cfg: Config, run: Run, *, resume: bool = False,
          progress: Callable[[int, int, float, dict], None] | None = None, log=print, data=None,
          keep_stop: bool = False) -> dict:
    """Train `cfg` into `run` (resuming from its checkpoint when asked). Returns the final status.
    Divergence, out of memory and a full disk end the run with a clear status; any other error marks
    it failed and is raised again. `data`: the bundle from `preflight.preflight(cfg)`, if already built.
    keep_stop: honour a stop request already on file (a background worker: `jobs.launch` cleared the old
    ones before starting it, so a request made since is the user's); otherwise it is cleared first."""
    validate(cfg)
    device = resolve_device(cfg.device)
    # the step reached, for the status of a run that ends by an exception; a resume that fails before its
    # checkpoint loads keeps the step on record
    where = {"step": run.raw_status().get("step") or 0 if resume else 0}
    with run.writer():
        if not keep_stop:
            run.clear_stop()  # before SIGTERM can make a request that must be honoured
        with stop_on_sigterm(run):
            return _train_checked(cfg, run, device, resume, progress, log, data, where)


def _train_checked(cfg: Config, run: Run, device, resume: bool, progress, log, data, where: dict) -> dict:
    """train() inside its locks: a damaged checkpoint is refused before any setup work and the run keeps
    its state on record; what fails later is recorded in the status."""
    ckpt = load_checkpoint(run.checkpoint_path, backbone=cfg.backbone, method=cfg.method, map_location="cpu") \
        if resume and run.checkpoint_path.exists() else None
    if ckpt is not None:
        check_config_unchanged(run, ckpt, cfg, "a run trains with one config from start to end, and its rows and "
                               "filter weights so far used the old values. Put the old values back to resume it, "
                               "or start a new run with the new ones (`python -m dfg train --set key=value ...`)")
    try:
        return _train(cfg, run, device, resume, ckpt, progress, log, data, where)
    except Diverged as e:
        return run.set_status(state="diverged", step=where["step"], error=str(e), heartbeat=time.time())
    except (torch.OutOfMemoryError, MemoryError):
        return run.set_status(state="failed", step=where["step"], heartbeat=time.time(),
                              error=f"failed: out of memory at batch size {cfg.batch_size}; "
                                    "lower batch_size (or use a smaller backbone/device with more memory)")
    except DiskFullError as e:
        return run.set_status(state="failed", step=where["step"], heartbeat=time.time(), error=f"failed: {e}")
    except (KeyboardInterrupt, SystemExit) as e:  # SystemExit: Ray's handler of a second SIGTERM in a task
        how = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else "the process was told to exit"
        run.set_status(state="interrupted", step=where["step"], heartbeat=time.time(),
                       error=f"interrupted ({how}); resume continues from the last checkpoint")
        raise
    except Exception as e:
        run.set_status(state="failed", step=where["step"], heartbeat=time.time(),
                       error=f"{type(e).__name__}: {e}")
        raise


def _train(cfg: Config, run: Run, device, resume: bool, ckpt: dict | None, progress, log, data, where: dict) -> dict:
    from .data import BatchStream

    run.set_status(state="running", pid=os.getpid(), heartbeat=time.time(), total_steps=cfg.steps,
                   device=str(device), error=None, started=time.time())
    # what made the run's source model (source.source_key): kept from its start through every resume
    source_compute = (ckpt or {"state": {}})["state"].get("source_compute") or {"threads": cfg.threads,
                                                                                 "device": device.type}
    try:
        data, method = setup(cfg, device, log, on_weights=lambda step, **a: run.save_filter_weights(step, **a),
                             data=data, should_stop=run.stop_requested, started_from=source_compute)
    except StoppedInSetup:  # nothing trained yet: the run stays where it was, its checkpoint (if any) untouched
        run.clear_stop()
        log(f"stopped before training (during setup); resume starts from step {where['step']}")
        return run.set_status(state="stopped", step=where["step"], heartbeat=time.time())
    warnings = data.warnings + batch_warnings(cfg, data)
    run.write_json("data.json", {"class_counts": data.class_counts, "class_names": list(data.class_names),
                                 "majority": list(data.majority), "minority": list(_minority(data)),
                                 "warnings": warnings, "num_classes": data.num_classes})
    for warning in warnings:
        log(f"warning: {warning}")
    stream = BatchStream(data.train, cfg.batch_size, seed=cfg.seed, device=device)
    start, best = 0, {"val_top1": -1.0, "step": 0}
    sums: dict[str, float] = {}   # loss sums since the last train row (checkpointed: a row spans a resume)
    counts: dict[str, int] = {}
    # rows already on file (a resumed run redoes at most ckpt_every steps; their rows are not written twice)
    on_file = run.prepare_metrics(keep=resume)
    if ckpt is not None:
        load_method_state(method, ckpt, run.checkpoint_path)
        stream.load_state_dict(ckpt["state"]["stream"])
        best = ckpt["state"].get("best", best)
        partial = ckpt["state"].get("loop", {})  # losses of steps after the last row (a stop between rows)
        sums, counts = dict(partial.get("sums", {})), dict(partial.get("counts", {}))
        start = where["step"] = ckpt["step"]
        log(f"resumed from step {start}")
    else:
        method.on_start()
    train_step = method.train_step
    if cfg.cuda_graphs and device.type == "cuda":  # on the CPU the switch does nothing
        from .cudagraphs import GraphedSteps
        train_step = GraphedSteps(method, log=log)
    t_last, s_last = time.perf_counter(), start
    pending: list[tuple[int, dict]] = []  # (step, losses) not yet read back from the device

    def flush() -> None:
        """Read the pending steps' losses back (one device sync), in step order: the first non-finite
        one stops the run naming its step, before anything of that step is written."""
        if not pending:
            return
        flat = [(s, k, v) for s, out in pending for k, v in out.items()]
        read = scalars(dict(enumerate(v for _, _, v in flat)))
        pending.clear()
        per_step: dict[int, dict[str, float]] = {}
        for j, (s, k, _) in enumerate(flat):
            per_step.setdefault(s, {})[k] = read[j]
        for s, values in per_step.items():
            bad = _finite(values)
            if bad:
                where["step"] = s
                raise Diverged(f"loss {bad} became {values[bad]} at step {s}; the last good checkpoint is kept")
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1

    def evaluate(step: int) -> None:
        nonlocal best
        row = {"kind": "eval", "step": step, "time": time.time(), "split": "test", **run_eval(method, data, device)}
        rows = [row]
        if data.val is not None:
            val = {"kind": "eval", "step": step, "time": time.time(), "split": "val",
                   **run_eval(method, data, device, "val")}
            rows.append(val)
            if val["top1"] > best["val_top1"]:
                best = {"val_top1": val["top1"], "step": step, "test": row}
        run.append_metrics(rows, skip=on_file)

    if start == cfg.steps and ("eval", "test", start) not in on_file:
        evaluate(start)  # resumed at its last step, with that step's rows lost (a deleted metrics.jsonl)
    for step in range(start + 1, cfg.steps + 1):
        where["step"] = step
        pending.append((step, train_step(step, stream)))
        last = step == cfg.steps
        ckpt_now = step % cfg.ckpt_every == 0 or last
        stop = run.stop_requested()
        if step % cfg.log_every == 0 or ckpt_now or step % cfg.eval_every == 0 or stop:
            flush()
        if ckpt_now or stop:  # a checkpoint follows: nothing of this step is written unless all of it is finite
            bad = method.first_nonfinite()
            if bad:
                raise Diverged(f"{bad} became non-finite at step {step}; the last good checkpoint is kept")
        if step % cfg.log_every == 0 or ckpt_now:
            now = time.perf_counter()
            rate = (step - s_last) / max(now - t_last, 1e-9)
            row = {"kind": "train", "step": step, "time": time.time(), "steps_per_s": rate,
                   **{k: sums[k] / counts[k] for k in sums}}
            run.append_metrics([row], skip=on_file)
            sums, counts, t_last, s_last = {}, {}, now, step
            run.set_status(state="running", step=step, heartbeat=time.time(), steps_per_s=rate)
            if progress:
                progress(step, cfg.steps, rate, row)
        if step % cfg.eval_every == 0 or last:
            evaluate(step)
        if ckpt_now or stop:
            save_checkpoint(run.checkpoint_path, {"method": method.state_dict(), "stream": stream.state_dict(),
                                                  "best": best, "loop": {"sums": sums, "counts": counts},
                                                  "config": cfg.to_dict(),  # what a resume must still train
                                                  "source_compute": source_compute},
                            backbone=cfg.backbone, method=cfg.method, step=step)
            if stop and not last:
                run.clear_stop()
                return run.set_status(state="stopped", step=step, heartbeat=time.time())
    final = {"last": run.newest_eval(), "best_on_val": best if data.val is not None else None}
    run.write_json("final.json", final)
    return run.set_status(state="finished", step=cfg.steps, heartbeat=time.time(), finished=time.time(),
                          top1=final["last"].get("top1") if final["last"] else None)
