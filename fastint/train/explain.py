"""Attention heatmaps from ``model.explain(batch)``, averaged over the samples of a split.

* AutoInt ``attention/layer{i}`` ``[B, H, M, M]`` -> one figure per layer, one field x field panel per
  head (row = query field, column = key field);
* AFM ``pair_attention`` ``[B, P]`` + ``pairs`` ``[P, 2]`` -> a symmetric ``M x M`` matrix
  (``a_ij = a_ji``, diagonal empty);
* InterHAt ``field_attention`` ``[B, K, M]`` -> an orders x fields heatmap, with ``order_attention``
  ``[B, K]`` as an extra column.

``explain_to_files`` writes ``<name>.png`` per figure and ``attention.json`` with the averaged
numbers and the field names. Matplotlib runs with the Agg backend (no display).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from fastint.data.loader import BatchLoader


@torch.no_grad()
def mean_explanation(model, loader: BatchLoader, max_samples: int = 2048) -> dict[str, np.ndarray]:
    """``model.explain`` averaged over the first ``max_samples`` samples of ``loader``."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    constant: dict[str, np.ndarray] = {}
    seen = 0
    for batch in loader:
        batch = batch.map(lambda t: t[: max_samples - seen])
        for key, value in model.explain(batch).items():
            if key == "pairs":
                constant[key] = value.cpu().numpy()
                continue
            total = value.float().sum(0).cpu()
            sums[key] = sums[key] + total if key in sums else total
        seen += batch.batch_size
        if seen >= max_samples:
            break
    if seen == 0:
        raise ValueError("no samples to explain")
    return {**{k: (v / seen).double().numpy() for k, v in sums.items()}, **constant}


def pair_matrix(pair_attention: np.ndarray, pairs: np.ndarray, num_fields: int) -> np.ndarray:
    """``[P]`` pair weights -> symmetric ``[M, M]`` (NaN on the diagonal)."""
    mat = np.full((num_fields, num_fields), np.nan)
    mat[pairs[:, 0], pairs[:, 1]] = pair_attention
    mat[pairs[:, 1], pairs[:, 0]] = pair_attention
    return mat


def figures(maps: dict[str, np.ndarray], names: list[str]) -> dict[str, tuple[list, list, list, str]]:
    """name -> (panels [(title, matrix)], row labels, column labels, suptitle)."""
    out = {}
    m = len(names)
    for key in sorted(k for k in maps if k.startswith("attention/layer")):
        att = maps[key]  # [H, M, M]
        layer = key.split("layer")[-1]
        out[f"autoint_layer{layer}"] = ([(f"head {h}", att[h]) for h in range(att.shape[0])], names, names,
                                        f"AutoInt layer {layer}: field attention (row = query)")
    if "pair_attention" in maps:
        out["afm_pairs"] = ([("pair attention", pair_matrix(maps["pair_attention"], maps["pairs"], m))],
                            names, names, "AFM: attention of each field pair")
    if "field_attention" in maps:
        fa = maps["field_attention"]  # [K, M]
        orders = [f"order {k + 1}" for k in range(fa.shape[0])]
        panels = [("field attention", fa)]
        if "order_attention" in maps:
            panels.append(("order attention", maps["order_attention"][:, None]))
        out["interhat_orders"] = (panels, orders, names, "InterHAt: field attention per order")
    return out


def plot(panels, rows: list[str], cols: list[str], title: str, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [mat.shape[1] for _, mat in panels]
    fig, axes = plt.subplots(1, len(panels), squeeze=False, gridspec_kw={"width_ratios": widths},
                             figsize=(1.5 + 0.35 * sum(widths) + 1.2 * len(panels), 1.5 + 0.35 * len(rows)))
    for ax, (name, mat) in zip(axes[0], panels):
        im = ax.imshow(mat, cmap="viridis", aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(range(mat.shape[1]), cols if mat.shape[1] == len(cols) else [""] * mat.shape[1],
                      rotation=90, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def explain_to_files(model, loader: BatchLoader, out_dir: str, max_samples: int = 2048) -> list[str]:
    """Write the heatmaps and ``attention.json`` into ``out_dir``; returns the written paths."""
    maps = mean_explanation(model, loader, max_samples)
    names = [f.name for f in model.schema.fields]
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, (panels, rows, cols, title) in figures(maps, names).items():
        path = os.path.join(out_dir, f"{name}.png")
        plot(panels, rows, cols, title, path)
        written.append(path)
    path = os.path.join(out_dir, "attention.json")
    with open(path, "w") as f:
        json.dump({"fields": names, "samples": min(max_samples, loader.num_rows),
                   **{k: np.where(np.isnan(v), None, v).tolist() if v.dtype.kind == "f" else v.tolist()
                      for k, v in maps.items()}}, f)
    written.append(path)
    return written
