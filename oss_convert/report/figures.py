"""The report's plots, drawn with matplotlib as inline SVG (text as paths, rasters as data URIs),
so the page needs nothing outside itself.

Each heatmap cell is its own patch whose SVG id names the tensor and its verify status
(`heat--lossy--blk.1.ffn_up_exps.weight`), so what the picture marks can be read back."""

from __future__ import annotations

import math
import re

import numpy as np

from ..plotting import inline_svg, pyplot

IDENTICAL_COLOR = "#d0d0d0"  # bit-identical: a neutral grey, outside the SNR scale
ABSENT_COLOR = "#000000"  # missing, extra or of the wrong shape
LOSSY_EDGE = "#d7191c"  # not what llama-quantize makes: outlined
SNR_RANGE = (0.0, 60.0)  # dB; Q4 ports sit near 25-30, Q8_0 near 45, a flipped nibble far above
SNR_CMAP = "viridis"
MODEL_COLUMN = "model"  # tensors outside the blocks (embedding, output)


def split_name(port_name: str) -> tuple[str, str]:
    """('3', 'ffn_up_exps.weight') for blk.3.ffn_up_exps.weight; (MODEL_COLUMN, name) otherwise."""
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", port_name)
    return (m.group(1), m.group(2)) if m else (MODEL_COLUMN, port_name)


def snr_color(snr_db: float) -> str:
    import matplotlib
    lo, hi = SNR_RANGE
    x = min(1.0, max(0.0, (snr_db - lo) / (hi - lo))) if math.isfinite(snr_db) else 1.0
    return matplotlib.colors.to_hex(matplotlib.colormaps[SNR_CMAP](x))


def cell_color(tensor: dict) -> str:
    if tensor["status"] == "bit-identical":
        return IDENTICAL_COLOR
    if "snr_db" not in tensor:
        return ABSENT_COLOR
    return snr_color(tensor["snr_db"])


def tensor_heatmap(tensors: list[dict], n_layers: int) -> str:
    """SNR per layer (columns) and tensor kind (rows), from verify's tensor list."""
    plt = pyplot()
    from matplotlib.patches import Rectangle
    cells = {}
    for t in tensors:
        column, kind = split_name(t["port"] or t["source"])
        cells[(kind, column)] = t
    columns = [str(n) for n in range(n_layers)] + [MODEL_COLUMN]
    kinds = sorted({kind for kind, column in cells if column != MODEL_COLUMN})
    kinds += sorted({kind for kind, column in cells if column == MODEL_COLUMN})
    fig, ax = plt.subplots(figsize=(min(16, 3 + 0.32 * len(columns)), 1 + 0.26 * len(kinds)))
    for (kind, column), t in cells.items():
        x, y = columns.index(column), kinds.index(kind)
        lossy = t["status"] == "lossy"
        patch = Rectangle((x, y), 1, 1, facecolor=cell_color(t), edgecolor=LOSSY_EDGE if lossy else "white",
                          linewidth=2 if lossy else 0.5)
        patch.set_gid(f"heat--{t['status']}--{t['port'] or t['source']}")
        ax.add_patch(patch)
        if t["status"] != "bit-identical":
            label = "×" if "snr_db" not in t else f"{t['snr_db']:.0f}" if math.isfinite(t["snr_db"]) else "∞"
            ax.text(x + 0.5, y + 0.5, label, ha="center", va="center", fontsize=5.5,
                    color="white" if "snr_db" not in t or t["snr_db"] < 35 else "black")
    ax.set_xlim(0, len(columns))
    ax.set_ylim(len(kinds), 0)
    ax.set_xticks([i + 0.5 for i in range(len(columns))], columns, fontsize=7)
    ax.set_yticks([i + 0.5 for i in range(len(kinds))], kinds, fontsize=7)
    ax.set_xlabel("layer")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    sm = plt.cm.ScalarMappable(cmap=SNR_CMAP, norm=plt.Normalize(*SNR_RANGE))
    fig.colorbar(sm, ax=ax, fraction=0.025, pad=0.01).set_label("SNR (dB)", fontsize=8)
    return inline_svg(fig, "tensors")


def expert_heatmap(kind: str, per_layer: dict[int, list[dict]], n_layers: int, n_experts: int) -> str:
    """SNR of each expert (columns) in each layer (rows) for one expert tensor kind; unchanged
    experts and layers in the bit-identical colour."""
    plt = pyplot()
    import matplotlib
    grid = np.full((n_layers, n_experts), np.inf)
    for layer, experts in per_layer.items():
        for e in experts:
            grid[layer, e["expert"]] = e["snr_db"]
    cmap = matplotlib.colormaps[SNR_CMAP].with_extremes(bad=IDENTICAL_COLOR)
    shown = np.ma.masked_invalid(np.where(np.isinf(grid), np.nan, grid))
    fig, ax = plt.subplots(figsize=(min(12, 2.5 + 0.2 * n_experts), 1 + 0.18 * n_layers))
    image = ax.imshow(shown, cmap=cmap, vmin=SNR_RANGE[0], vmax=SNR_RANGE[1], aspect="auto",
                      interpolation="nearest")
    ax.set_title(kind, fontsize=9)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01).set_label("SNR (dB)", fontsize=8)
    return inline_svg(fig, f"experts-{kind}")


def moe_plot(layers: list[dict]) -> str:
    """Relative error of each layer's MoE output, and the share of tokens routed alike."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 2.6))
    xs = [r["layer"] for r in layers]
    ax.bar(xs, [r["rel_error"] for r in layers], color="#4575b4")
    ax.set_xlabel("layer")
    ax.set_xticks(xs if len(xs) <= 40 else xs[::max(1, len(xs) // 20)])
    ax.set_ylabel("relative error")
    same = ax.twinx()
    same.plot(xs, [100 * r["same_experts_fraction"] for r in layers], "o-", color="#d73027", markersize=3)
    same.set_ylabel("same experts (%)", color="#d73027")
    same.set_ylim(0, 105)
    return inline_svg(fig, "moe")


def kl_per_position(per_position: list[dict], ctx: int) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 2.6))
    kl = [p["kl"] for p in per_position]
    ax.plot(range(len(kl)), kl, linewidth=0.8, color="#4575b4")
    for start in range(ctx, len(kl), ctx):
        ax.axvline(start, color="#999999", linestyle=":", linewidth=0.8)
    ax.set_xlabel("position (dotted: a new window)")
    ax.set_ylabel("KL(source || port)")
    ax.set_xlim(0, max(1, len(kl) - 1))
    return inline_svg(fig, "kl-positions")


def kl_distribution(per_position: list[dict]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 2.4))
    kl = np.array([p["kl"] for p in per_position])
    positive = kl[kl > 0]
    if positive.size:
        lo, hi = positive.min(), positive.max()
        bins = np.geomspace(lo, hi * 1.0001, 40) if hi > lo else 10
        ax.hist(positive, bins=bins, color="#4575b4")
        if hi > lo:
            ax.set_xscale("log")
    ax.set_xlabel(f"KL per position ({int((kl == 0).sum())} positions with KL 0 not drawn)")
    ax.set_ylabel("positions")
    return inline_svg(fig, "kl-distribution")
