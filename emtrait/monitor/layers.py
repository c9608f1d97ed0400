"""Which layer monitors best: the monitor's own validation repeated at every measured layer.

The cube carries every layer the runs measured (`measurement.layers: candidates`). For each one
this takes the cube's view at that layer (`emtrait.cube.read.at_layer`) and runs exactly what
`emtrait monitor fit` and `emtrait monitor evaluate` run at l* — regressor chosen by LOPO,
LOPO and held-out FNR/FPR/AUROC with run-level intervals, the run-label permutation test — for
the monitor's feature set only (baselines are the ablation's business, at l*), plus the PC1 share
of the layer's calibration final drift (`emtrait.analysis.geometry`). The monitor that ships
stays at l*; `better_layers` names a layer whose AUROC interval lies wholly above l*'s.
"""

from __future__ import annotations

import numpy as np

# one row per (layer, protocol); the metric columns are metrics_table's
LAYER_COLUMNS = ["model", "layer", "chosen", "protocol", "step0", "regressor", "n", "n_runs",
                 "n_dangerous", "n_benign", "n_excluded_nan", "fnr", "fnr_lo", "fnr_hi", "fpr",
                 "fpr_lo", "fpr_hi", "auroc", "auroc_lo", "auroc_hi", "auroc_p",
                 "auroc_null_median", "n_permutations", "p_floor", "pc1_explained",
                 "interval", "ci_note", "label_method"]


def _monitor_only(cfg):
    """The config with no baselines: the layer table compares the monitor's feature set only."""
    return cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"baselines": []})})


def layer_rows(view, cfg, expected_heldout: list[str]):
    """The monitor's headline pooled metrics rows (LOPO, held-out) for one layer's cube view."""
    from emtrait.cube.read import final_drift
    from emtrait.drift import pca
    from emtrait.monitor.evaluate import (
        evaluate,
        fit_monitor,
        permutation_tests,
        with_permutation,
    )

    cfg = _monitor_only(cfg)
    monitor, _ = fit_monitor(view, cfg)
    _, metrics, _ = evaluate(view, monitor, cfg, expected_heldout)
    if cfg.monitor.permutations:
        metrics = with_permutation(metrics, permutation_tests(view, monitor, cfg,
                                                              expected_heldout)[0])
    head = metrics[(metrics.dataset == "pooled") & metrics.headline
                   & (metrics.feature_set == cfg.traits.monitor_set)].copy()
    head["layer"] = int(view.attrs["layer"])
    head["chosen"] = int(view.attrs["layer"]) == int(view.attrs["chosen_layer"])
    head["regressor"] = monitor.meta["regressor_name"]
    final, traits = final_drift([view], cfg.traits.monitor_set)  # the analysis stage's PCA
    calibration = final[final.role.eq("calibration")][traits].values.astype(float)
    head["pc1_explained"] = float(pca(calibration)["explained_variance_ratio"][0])
    return head.reindex(columns=LAYER_COLUMNS)


def compare_layers(cube, cfg, expected_heldout: list[str]):
    """One frame of `layer_rows` over every layer of a cube opened with all layers."""
    import pandas as pd

    from emtrait.cube.read import at_layer

    frames = [layer_rows(at_layer(cube, int(layer)), cfg, expected_heldout)
              for layer in cube["layer"].values]
    return pd.concat(frames, ignore_index=True)


def better_layers(table) -> list[dict]:
    """Per model and protocol, layers whose AUROC interval lies wholly above l*'s interval.

    Point estimates alone are not enough: a layer counts as better only where its lower bound
    exceeds l*'s upper bound (no interval, no claim)."""
    out = []
    for (model, protocol), g in table.groupby(["model", "protocol"], sort=False):
        star = g[g.chosen.astype(bool)]
        if not len(star):
            continue
        hi = float(star.auroc_hi.iloc[0])
        for r in g[~g.chosen.astype(bool)].to_dict("records"):
            if np.isfinite(hi) and np.isfinite(r["auroc_lo"]) and r["auroc_lo"] > hi:
                out.append({"model": model, "protocol": protocol, "layer": int(r["layer"]),
                            "auroc": r["auroc"], "auroc_lo": r["auroc_lo"],
                            "chosen_layer": int(star.layer.iloc[0]),
                            "chosen_auroc": float(star.auroc.iloc[0]), "chosen_auroc_hi": hi})
    return out
