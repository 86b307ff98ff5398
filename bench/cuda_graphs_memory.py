"""Peak GPU memory of DFG's Algorithm 1 steps, eager vs CUDA graphs (the library's cuda_graphs=true), on
each backbone's preset networks at the preset's batch size. Each backbone and mode runs in a fresh
process, so one's caches do not count against the other. The peaks are taken after W(E_S)/W(E) are
computed at the start, over the training steps only (graph captures included); nW is set so that W(E) is
computed once more 4 steps before the end, beside the live graphs, as a long run does every nW steps.

    python bench/cuda_graphs_memory.py [--backbones lenet,vgg16,resnet50] [--steps 32] [--tf32]
Last line: cuda_graphs_memory <backbone>_eager_gib=… <backbone>_graphs_gib=… <backbone>_ratio=…
<backbone>_reserved_ratio=… (peak allocated, and the ratio of what the caching allocator reserved)"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from alg1_speed import PRESET, setup_dfg  # noqa: E402

GIB = 1 << 30


def child(backbone: str, graphs: bool, steps: int, tf32: bool) -> dict:
    from dfg.cudagraphs import GraphedSteps

    cfg, _, _, _, method, stream = setup_dfg(backbone, torch.device("cuda"), tf32, fw_per_class=2,
                                             n_w=max(1, steps - 4))
    step = GraphedSteps(method, log=lambda m: None) if graphs else method.train_step
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for s in range(1, steps + 1):
        step(s, stream)
    torch.cuda.synchronize()
    return {"allocated": torch.cuda.max_memory_allocated() / GIB, "reserved": torch.cuda.max_memory_reserved() / GIB,
            "reserved_end": torch.cuda.memory_reserved() / GIB,
            "captured": step.captured if graphs else 0, "failed": step.failed if graphs else None,
            "batch": cfg.batch_size}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbones", default="lenet,vgg16,resnet50")
    p.add_argument("--steps", type=int, default=32, help="training steps per mode (enough for each key's capture)")
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("BACKBONE", "GRAPHS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA device: torch sees none here")
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1] == "1", args.steps, args.tf32)))
        return
    line = []
    for backbone in args.backbones.split(","):
        res = {}
        for graphs in (False, True):
            cmd = [sys.executable, __file__, "--child", backbone, str(int(graphs)), "--steps", str(args.steps)]
            out = subprocess.run(cmd + (["--tf32"] if args.tf32 else []), capture_output=True, text=True, check=True)
            res[graphs] = json.loads(out.stdout.strip().splitlines()[-1])
        e, g = res[False], res[True]
        print(f"[{torch.cuda.get_device_name()}] {backbone} ({PRESET[backbone]} networks, batch {e['batch']}, "
              f"{args.steps} steps): peak allocated eager {e['allocated']:.2f} GiB, graphs {g['allocated']:.2f} GiB "
              f"({g['allocated'] / e['allocated']:.2f}x); reserved {e['reserved']:.2f} vs {g['reserved']:.2f} GiB "
              f"(at the end {e['reserved_end']:.2f} vs {g['reserved_end']:.2f}); "
              f"{g['captured']} graphs captured" + (f", capture FAILED: {g['failed']}" if g["failed"] else ""))
        line.append(f"{backbone}_eager_gib={e['allocated']:.3f} {backbone}_graphs_gib={g['allocated']:.3f} "
                    f"{backbone}_ratio={g['allocated'] / e['allocated']:.2f} "
                    f"{backbone}_reserved_ratio={g['reserved'] / e['reserved']:.2f}")
    print("cuda_graphs_memory " + " ".join(line))


if __name__ == "__main__":
    main()
