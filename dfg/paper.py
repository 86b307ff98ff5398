"""The paper's reported numbers as data: Table 2 (top-1 %, mean ± std, per dataset and method) and the
Figure-6 ρ ablation on SVHN, for the comparison columns of sweep tables and the app."""
from __future__ import annotations

# Table 2 of the paper, top-1 accuracy in %, (mean, std). Keys are this project's dataset names
# (Config.dataset, also the paper presets' names) and method names (dfg.methods.METHODS).
TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "svhn": {"original": (76.57, 1.65), "finetune": (76.66, 0.65), "delta": (78.47, 0.57),
             "difa_cmwgan": (76.64, 1.32), "dfg": (80.81, 0.25)},
    "fmnist": {"original": (77.13, 3.24), "finetune": (75.39, 3.54), "delta": (78.91, 2.27),
               "difa_cmwgan": (78.27, 2.32), "dfg": (82.65, 0.28)},
    "stl10": {"original": (66.73, 0.67), "finetune": (72.89, 0.38), "delta": (79.41, 0.27),
              "difa_cmwgan": (80.08, 0.19), "dfg": (81.09, 0.17)},
    "cinic10": {"original": (58.14, 3.42), "finetune": (64.42, 0.81), "delta": (68.89, 0.18),
                "difa_cmwgan": (71.82, 0.35), "dfg": (72.09, 0.20)},
    "caltech256": {"original": (43.30, 0.34), "finetune": (81.99, 0.12), "delta": (85.33, 0.15),
                   "difa_cmwgan": (82.23, 0.32), "dfg": (86.29, 0.19)},
    "food101": {"original": (30.17, 1.72), "finetune": (68.99, 0.42), "delta": (72.03, 0.35),
                "difa_cmwgan": (71.71, 0.08), "dfg": (76.00, 0.36)},
}

# The imbalance ratio Table 2 states under each dataset's name.
TABLE2_RATIO = {"svhn": "10:1", "fmnist": "40:1", "stl10": "1:1", "cinic10": "10:1", "caltech256": "1:1",
                "food101": "5:1"}

DATASET_LABELS = {"svhn": "SVHN", "fmnist": "F-MNIST", "stl10": "STL-10", "cinic10": "CINIC-10",
                  "caltech256": "Caltech-256", "food101": "Food-101"}
METHOD_LABELS = {"original": "Original", "finetune": "Fine-tuning", "delta": "DELTA",
                 "difa_cmwgan": "DIFA+cMWGAN", "dfg": "DFG"}

# Figure 6 / §4.3: DFG on SVHN, top-1 % against ρ of Eq. 7. The text gives two points; the figure's
# claim is that ρ = 0.75 is the best value and that accuracy varies smoothly with ρ.
FIGURE6 = {"dataset": "svhn", "method": "dfg", "best_rho": 0.75, "top1": {0.0: 79.98, 0.75: 80.81},
           "claim": "DFG on SVHN: ρ=0.75 is best (80.81% vs 79.98% at ρ=0); accuracy varies smoothly with ρ"}


def paper_top1(dataset: str, method: str) -> tuple[float, float] | None:
    """(mean, std) in % from Table 2, or None where the paper reports no such cell (e.g. the demo)."""
    return TABLE2.get(dataset, {}).get(method)


def figure6_top1(dataset: str, method: str, rho: float) -> float | None:
    """The paper's stated accuracy at this ρ (only SVHN/DFG at ρ = 0 and 0.75 are given in the text)."""
    if dataset != FIGURE6["dataset"] or method != FIGURE6["method"]:
        return None
    return next((v for r, v in FIGURE6["top1"].items() if abs(r - float(rho)) < 1e-9), None)


def dataset_label(name: str) -> str:
    return DATASET_LABELS.get(name, name)


def method_label(name: str) -> str:
    return METHOD_LABELS.get(name, name)
