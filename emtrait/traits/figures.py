"""Figures of a directions store: trait cosines, probe accuracy by layer, selection scores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xarray as xr


def _save(fig, folder: Path, stem: str) -> None:
    for ext in ("png", "svg"):
        fig.savefig(folder / f"{stem}.{ext}", dpi=150, bbox_inches="tight")


def write_figures(ds: xr.Dataset, folder: str | Path, threshold: float = 0.8) -> list[Path]:
    """Write the three figures (PNG + SVG each) into `folder`; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, layer = ds.attrs["model"], int(ds.attrs["layer"])
    names = [str(t) for t in ds["trait"].values]

    n = len(names)
    fig, ax = plt.subplots(figsize=(0.45 * n + 2.5, 0.45 * n + 1.5))
    sns.heatmap(pd.DataFrame(ds["cosine"].values, index=names, columns=names), ax=ax,
                cmap="vlag", vmin=-1, vmax=1, center=0, square=True,
                annot=n <= 14, fmt=".2f", annot_kws={"size": 6})
    ax.set_title(f"{model}: cosine between trait directions at layer {layer}")
    _save(fig, folder, "trait_cosine")
    plt.close(fig)

    probe = ds["probe_accuracy"].to_dataframe().reset_index().dropna(subset=["probe_accuracy"])
    probe["trait_set"] = probe["trait_set"].astype(str)
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(probe, x="layer", y="probe_accuracy", hue="trait", style="trait_set",
                 marker="o", ax=ax)
    ax.axhline(threshold, color="grey", ls="--", lw=1, label=f"pass > {threshold}")
    ax.axvline(layer, color="black", ls=":", lw=1)
    ax.set_xticks([int(v) for v in ds["layer"].values])
    ax.set(title=f"{model}: probe accuracy by layer", xlabel="decoder block",
           ylabel="5-fold probe accuracy")
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, folder, "probe_accuracy")
    plt.close(fig)

    scores = ds["selection_score"].to_dataframe().reset_index()
    scores["chosen"] = scores["layer"] == layer
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sns.barplot(scores, x="layer", y="selection_score", hue="chosen", dodge=False,
                palette={True: "tab:red", False: "tab:grey"}, ax=ax)
    ax.set(title=f"{model}: layer selection ({ds.attrs['selector']}), l* = {layer}",
           xlabel="decoder block", ylabel="score")
    _save(fig, folder, "layer_selection")
    plt.close(fig)
    return [folder / f"{s}.png" for s in ("trait_cosine", "probe_accuracy", "layer_selection")]
