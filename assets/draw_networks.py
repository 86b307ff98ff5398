"""Draws assets/dfg_networks.png, the Start page's diagram of DFG's four networks and the filter-weight
attention (paper Fig. 1 + §3.2). Run `python assets/draw_networks.py` after changing it."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

COLORS = {"E": "#2ca02c", "C": "#1f77b4", "G": "#ff7f0e", "D": "#d62728", "W": "#9467bd", "S": "#7f7f7f",
          "data": "#555555"}


def box(ax, x, y, text, color, w=1.9, h=0.9, sub=None, fill=0.18):
    """A rounded box centred on (x, y); `sub` is a small caption under it (the box's losses)."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04,rounding_size=0.15",
                                fc=matplotlib.colors.to_rgba(color, fill), ec=color, lw=2))
    ax.text(x, y, text, ha="center", va="center", fontsize=10.5, weight="bold")
    if sub:
        ax.text(x, y - h / 2 - 0.22, sub, ha="center", va="center", fontsize=8.5, color="#333333")


def arrow(ax, a, b, text=None, color="#333333", dashed=False, off=(0, 0.18)):
    ax.annotate("", xy=b, xytext=a, arrowprops=dict(arrowstyle="-|>", color=color, lw=1.6,
                                                    linestyle="--" if dashed else "-", shrinkA=0, shrinkB=0))
    if text:
        ax.text((a[0] + b[0]) / 2 + off[0], (a[1] + b[1]) / 2 + off[1], text, ha="center", va="center",
                fontsize=8.5, color=color)


def main(out: Path = Path(__file__).with_name("dfg_networks.png")) -> None:
    fig, ax = plt.subplots(figsize=(10.8, 6.0), dpi=130)
    ax.set_xlim(0, 10.8)
    ax.set_ylim(0.1, 6.2)
    ax.axis("off")
    # top: attention from the frozen source model and the current target model (Eq. 5-7, δ)
    box(ax, 1.3, 5.3, "source E_S, C_S\n(pre-trained, frozen)", COLORS["S"], w=2.2)
    box(ax, 5.6, 5.3, "W* = threshold_δ( ρ·W(E_S) + (1−ρ)·W(E) )", COLORS["W"], w=4.3, h=0.8,
        sub="class × filter weights; a 0 switches that channel off for that class")
    arrow(ax, (2.4, 5.3), (3.45, 5.3), "W(E_S)", COLORS["S"])
    # middle: generated path
    box(ax, 1.3, 3.3, "noise z, label ŷ", COLORS["data"], w=2.0, fill=0.0)
    box(ax, 3.6, 3.3, "G  generator", COLORS["G"], sub="L_G (Eq. 2), L_cC (Eq. 4c)")
    box(ax, 5.95, 3.3, "G(z, ŷ)\ngenerated features", COLORS["G"], w=1.9, fill=0.06)
    arrow(ax, (2.3, 3.3), (2.65, 3.3))
    arrow(ax, (4.55, 3.3), (5.0, 3.3))
    arrow(ax, (3.9, 4.88), (3.75, 3.75), "W*: per-class\nchannel scale", COLORS["W"], off=(-0.75, 0.05))
    # bottom: real path
    box(ax, 1.3, 1.3, "real images x, y\n(imbalanced)", COLORS["data"], w=2.0, fill=0.0)
    box(ax, 3.6, 1.3, "E  extractor", COLORS["E"], sub="L_E (Eq. 3)")
    box(ax, 5.95, 1.3, "E(x)\nreal features", COLORS["E"], w=1.9, fill=0.06)
    arrow(ax, (2.3, 1.3), (2.65, 1.3))
    arrow(ax, (4.55, 1.3), (5.0, 1.3))
    # right: critic and classifier
    box(ax, 8.55, 3.3, "D  critic", COLORS["D"], w=1.6, sub="L_D (Eq. 1), WGAN-GP")
    box(ax, 8.55, 1.3, "C  classifier", COLORS["C"], w=1.6, sub="L_rC, L_gC, L_cC (Eq. 4)")
    arrow(ax, (6.9, 3.3), (7.75, 3.3), "fake", COLORS["G"])
    arrow(ax, (6.9, 1.55), (7.75, 3.05), "real", COLORS["E"], off=(-0.15, 0.2))
    arrow(ax, (6.9, 3.05), (7.75, 1.55), "real ⊕ generated", COLORS["G"], off=(1.0, -0.2))
    arrow(ax, (6.9, 1.3), (7.75, 1.3))
    # W(E): every nW steps, ablate each filter of E and measure C's loss increase
    ax.plot([9.35, 10.05, 10.05], [1.3, 1.3, 5.3], color=COLORS["W"], lw=1.6, ls="--")
    arrow(ax, (10.05, 5.3), (7.75, 5.3), color=COLORS["W"], dashed=True)
    ax.text(10.42, 3.3, "W(E): drop each filter of E,\nloss increase → softmax,\nclass mean (every nW steps)",
            rotation=90, ha="center", va="center", fontsize=8.5, color=COLORS["W"])
    fig.tight_layout()
    fig.savefig(out, facecolor="white")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
