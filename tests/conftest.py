"""Shared fixtures. Only add fixtures here; never rewrite another module's."""
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_RUN_SETTINGS = ["steps=20", "n_w=10", "pretrain_steps=50", "head_refit_steps=10", "eval_every=10",
                     "ckpt_every=10", "log_every=5", "limit_test=200"]


def train_demo_run(runs_dir: Path, data_root: Path, run_id: str, settings: list[str]) -> None:
    """A real DFG run of the demo preset with these `key=value` settings, trained by the CLI in a subprocess."""
    cmd = [sys.executable, "-m", "dfg", "train", "--preset", "demo", "--runs-dir", str(runs_dir), "--run-id", run_id,
           "--set", f"data_root={data_root}"] + [a for s in settings for a in ("--set", s)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{run_id} run failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def tiny_dfg_run(tmp_path_factory):
    """One short REAL DFG training run (demo preset, 20 steps, filter weights at steps 0, 10 and 20, test
    evaluations and checkpoints at 10 and 20) in a session tmp dir. Returns runs_dir, data_root, run_id, run.
    Treat it as read-only: tests that need to write make their own runs dir."""
    from dfg.runstore import Run

    base = tmp_path_factory.mktemp("tiny_dfg")
    runs_dir, data_root = base / "runs", base / "data"
    train_demo_run(runs_dir, data_root, "tiny", ["threads=2", *TINY_RUN_SETTINGS])
    return SimpleNamespace(runs_dir=runs_dir, data_root=data_root, run_id="tiny", run=Run(runs_dir, "tiny"),
                           settings=list(TINY_RUN_SETTINGS))


def pretrained_data_root(tmp_path_factory, settings: dict) -> str:
    """A data root whose demo source model is already cached, so the runs of a test module (and the
    workers they start) do not each pretrain it. Torch is held to one thread, as those runs are."""
    import torch

    from dfg.config import make_config
    from dfg.loop import load_data
    from dfg.source import pretrain_source

    root = str(tmp_path_factory.mktemp("pretrained-data"))
    cfg = make_config("demo", {**settings, "data_root": root})
    torch.set_num_threads(1)
    pretrain_source(cfg, load_data(cfg).in_channels, torch.device("cpu"))
    return root


def frozen_resnet50(num_classes: int, seed: int = 0):
    """A randomly initialised ResNet-50 split into (E, C), seeded, in eval mode with every parameter frozen:
    a stand-in source model for the tests that need ResNet-50's BN layers or stages (no ImageNet file)."""
    import torch

    from dfg.networks import build_backbone

    torch.manual_seed(seed)
    e, c = build_backbone("resnet50", num_classes=num_classes)
    for m in (e, c):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return e, c


def small_bn_nets(num_classes: int):
    """A tiny E and C with BN where ResNet-50 has it (E ends in BN after its last conv, C is conv-BN-ReLU then a
    Linear head) for 3×8×8 inputs, in train mode; initialised from torch's global generator (seed it first)."""
    from torch import nn

    from dfg.networks import Extractor

    e = Extractor(head=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), last_conv=nn.Conv2d(4, 8, 3, padding=1),
                  tail=nn.Sequential(nn.BatchNorm2d(8), nn.ReLU()))
    c = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(6, num_classes))
    return e, c
