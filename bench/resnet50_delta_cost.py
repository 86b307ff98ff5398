"""What DELTA's regulariser on ResNet-50's four stages (delta_layers=stages, the default there) costs against the
E-level one (delta_layers=extractor), at the paper's 224 px, on random weights (the arithmetic does not depend on
them): the channel-weight pass once per run (per sample: W(E_S)'s ablation of layer1's 256 channels, then each
stage's, 256 + 512 + 1024 + 2048 channels), and one DELTA E/C update (Alg. 1 lines 16-17 with the regulariser).

    python bench/resnet50_delta_cost.py [--samples 1] [--batch 2] [--repeats 3] [--size 224] [--device cpu|cuda]
Last line: resnet50_weights_extractor_s_per_sample=… stages_s_per_sample=… weights_ratio=… update_extractor_s=…
update_stages_s=… update_ratio=…"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import gflop  # noqa: E402

from dfg.config import make_config  # noqa: E402
from dfg.filter_weights import loss_increase_batched  # noqa: E402
from dfg.methods import METHODS  # noqa: E402
from dfg.methods.base import SourceModel, TrainContext  # noqa: E402
from dfg.networks import build_backbone, stage_views  # noqa: E402

CLASSES = 10


def timed(fn, sync):
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=1, help="images in the channel-weight pass")
    p.add_argument("--batch", type=int, default=2, help="batch of the E/C updates")
    p.add_argument("--repeats", type=int, default=3, help="timed E/C updates per variant (median)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device here; use --device cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    e, c = build_backbone("resnet50", num_classes=CLASSES)
    for m in (e, c):
        m.to(device).eval()
        for q in m.parameters():
            q.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, 3, args.size, args.size, generator=g).to(device)
    y = (torch.arange(args.samples) % CLASSES).to(device)

    views = stage_views(e, c)
    with torch.no_grad():
        passes = {"extractor": lambda: loss_increase_batched(e, c, x, y),
                  "stages": lambda: [loss_increase_batched(ev, rest, x, y) for ev, rest in views]}
        secs = {k: timed(fn, sync) / args.samples for k, fn in passes.items()}
        flops = {k: gflop(fn) / args.samples for k, fn in passes.items()}
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"[{device}, {where}, {args.size} px] channel weights per sample: E-level (W(E_S)'s ablation) "
          f"{secs['extractor']:.2f} s, {flops['extractor']:.0f} GFLOP; four stages {secs['stages']:.2f} s, "
          f"{flops['stages']:.0f} GFLOP ({secs['stages'] / secs['extractor']:.2f}x)")

    xb = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    yb = (torch.arange(args.batch) % CLASSES).to(device)
    upd = {}
    for layers in ("extractor", "stages"):
        cfg = make_config("caltech256", {"method": "delta", "delta_layers": layers, "batch_size": args.batch,
                                         "device": str(device)})
        ctx = TrainContext(cfg=cfg, device=device, num_classes=CLASSES, in_channels=3,
                           rng=torch.Generator(device=device).manual_seed(0), fw_sample=(x[:1], y[:1]),
                           source=SourceModel(e, c, torch.ones(CLASSES, 256, device=device)))
        m = METHODS["delta"](ctx)
        m.update_extractor_classifier(xb, yb)  # warm-up
        upd[layers] = statistics.median(timed(lambda: m.update_extractor_classifier(xb, yb), sync)
                                        for _ in range(args.repeats))
    print(f"[{device}, {where}, {args.size} px] one DELTA E/C update, batch {args.batch}: regulariser on E's output "
          f"{upd['extractor']:.2f} s, on the four stages {upd['stages']:.2f} s "
          f"({upd['stages'] / upd['extractor']:.2f}x)")
    print(f"resnet50_weights_extractor_s_per_sample={secs['extractor']:.3f} stages_s_per_sample={secs['stages']:.3f} "
          f"weights_ratio={secs['stages'] / secs['extractor']:.2f} update_extractor_s={upd['extractor']:.3f} "
          f"update_stages_s={upd['stages']:.3f} update_ratio={upd['stages'] / upd['extractor']:.2f}")


if __name__ == "__main__":
    main()
