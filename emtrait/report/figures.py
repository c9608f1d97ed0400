"""Report figures: one pure function each, tidy data in, matplotlib Figure out.

No function reads or writes files or touches pyplot's global state (figures are built with
`matplotlib.figure.Figure`), so each can be tested from a synthetic cube and reused in notebooks.
Editing this file reruns only the report rule (it is that rule's `code` input).
"""

from __future__ import annotations

import numpy as np

PALETTE = {"dangerous": "#c0392b", "benign": "#2e86c1", "unknown": "#7f8c8d"}


def new_figure(nrows: int = 1, ncols: int = 1, w: float = 4.0, h: float = 3.2, **kw):
    """A report-styled Figure and its (nrows, ncols) axes grid (`w`, `h`: inches per panel)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    sns.set_theme(style="whitegrid", context="paper")
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def empty_figure(message: str):
    """A one-panel Figure that says why there is nothing to draw."""
    fig, axes = new_figure()
    axes[0, 0].text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    axes[0, 0].set_axis_off()
    return fig


def _labels(label_method: str) -> str:
    return f" · EM labels: {label_method}" if label_method else ""


def drift_over_steps(traj, label_method: str = ""):
    """Drift magnitude ‖drift‖ per step (mean ± sd over seeds) with EM rate on a twin axis;
    one row per model, one column per dataset."""
    import seaborn as sns

    models = sorted(traj.model.unique())
    datasets = list(dict.fromkeys(traj.sort_values(["role", "dataset"]).dataset))
    fig, axes = new_figure(len(models), len(datasets), w=2.6, h=2.2, sharex=False)
    for i, m in enumerate(models):
        for j, d in enumerate(datasets):
            ax = axes[i, j]
            sub = traj[(traj.model == m) & (traj.dataset == d)]
            if not len(sub):
                ax.set_axis_off()
                continue
            color = PALETTE.get(sub.label.iloc[0], "#333333")
            sns.lineplot(sub, x="step", y="drift_norm", errorbar="sd", color=color, ax=ax)
            twin = ax.twinx()
            sns.lineplot(sub, x="step", y="em_rate", errorbar=None, color="black",
                         linestyle="--", ax=twin)
            twin.set_ylim(0, max(0.1, float(np.nanmax(traj.em_rate.values)) * 1.1))
            twin.grid(False)
            ax.set_title(f"{m} · {d} ({sub.role.iloc[0]}, {sub.seed.nunique()} runs)",
                         fontsize=7)
            ax.set_ylabel("‖drift‖" if j == 0 else "")
            twin.set_ylabel("EM rate (dashed)" if j == len(datasets) - 1 else "")
    fig.suptitle("Trait-drift magnitude over training, EM rate overlaid" + _labels(label_method),
                 fontsize=9)
    return fig


def direction_magnitude(traj, label_method: str = ""):
    """Drift magnitude vs cosine to the mean dangerous direction, every checkpoint after 0."""
    import seaborn as sns

    sub = traj[traj.step > 0].copy()
    sub["behaviour"] = np.where(sub.dangerous == 1, "EM > threshold",
                                np.where(sub.dangerous == 0, "EM ≤ threshold", "EM missing"))
    fig, axes = new_figure(w=5.5, h=4.0)
    sns.scatterplot(sub, x="drift_norm", y="cos_danger", hue="behaviour", style="role",
                    palette={"EM > threshold": PALETTE["dangerous"],
                             "EM ≤ threshold": PALETTE["benign"], "EM missing": "#999999"},
                    alpha=0.7, ax=axes[0, 0])
    axes[0, 0].set_xlabel("drift magnitude ‖drift‖")
    axes[0, 0].set_ylabel("cosine to mean dangerous direction")
    n_runs = len(sub[["model", "dataset", "seed"]].drop_duplicates())
    axes[0, 0].set_title(f"Direction vs magnitude of trait drift ({len(sub)} checkpoints of "
                         f"{n_runs} runs, step 0 left out)" + _labels(label_method), fontsize=8)
    return fig


def pca_loadings_scree(pca: dict):
    """Scree (explained-variance ratio per PC, cumulative line) and PC1 loadings per trait."""
    import seaborn as sns

    ratio = np.asarray(pca["explained_variance_ratio"], float)
    fig, axes = new_figure(1, 2, w=4.2, h=3.4)
    ax = axes[0, 0]
    pcs = [f"PC{i + 1}" for i in range(len(ratio))]
    sns.barplot(x=pcs, y=ratio * 100, color="#5d6d7e", ax=ax)
    ax.plot(pcs, np.cumsum(ratio) * 100, marker="o", color="black")
    ax.set_ylabel("explained variance (%)")
    ax.set_title(f"Scree: PC1 = {100 * ratio[0]:.1f}% ({pca['n_runs']} runs)")
    ax = axes[0, 1]
    traits = list(pca.get("traits") or pca["pc1_loadings"])  # JSON may have sorted the dict
    vals = np.array([pca["pc1_loadings"][t] for t in traits])
    sns.barplot(x=vals, y=traits, hue=np.where(vals >= 0, "+", "−"),
                palette={"+": PALETTE["dangerous"], "−": PALETTE["benign"]}, legend=False, ax=ax)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("PC1 loading (dangerous runs project +)")
    ax.set_title("PC1 loadings")
    return fig


def matched_pairs(final, traits: list[str]):
    """Pairs (benign run, dangerous run) nearest in |PC1|, greedily without reuse."""
    import pandas as pd

    ben = final[final.label == "benign"].reset_index(drop=True)
    dan = final[final.label == "dangerous"].reset_index(drop=True)
    used, rows = set(), []
    for i, b in ben.iterrows():
        gaps = [(abs(b.abs_pc1 - d.abs_pc1), j) for j, d in dan.iterrows() if j not in used]
        if not gaps:
            break
        gap, j = min(gaps)
        used.add(j)
        for kind, r in (("benign", b), ("dangerous", dan.loc[j])):
            rows += [{"pair": i, "kind": kind, "abs_pc1": r.abs_pc1, "trait": t,
                      "drift": r[t], "gap": gap} for t in traits]
    return pd.DataFrame(rows)


def matched_profiles(pairs):
    """Per-trait final drift of benign vs dangerous runs matched on |PC1| (mean ± sd)."""
    import seaborn as sns

    if not len(pairs):
        return empty_figure("no benign/dangerous pairs to match on |PC1|")
    fig, axes = new_figure(w=6.0, h=3.6)
    sns.barplot(pairs, x="trait", y="drift", hue="kind", errorbar="sd", palette=PALETTE,
                ax=axes[0, 0])
    gap = pairs.groupby("pair").gap.first()
    axes[0, 0].set_title(f"Matched-|PC1| trait profiles ({len(gap)} pairs, median |PC1| gap "
                         f"{gap.median():.3g})")
    axes[0, 0].axhline(0, color="black", lw=0.8)
    axes[0, 0].tick_params(axis="x", rotation=30)
    return fig


def trait_cosines(cosines: dict):
    """Pairwise cosine between trait directions at the chosen layer, one heatmap per model."""
    import seaborn as sns

    if not cosines:
        return empty_figure("no direction stores given")
    n = len(cosines)
    size = max(4.0, 0.25 * max(len(c) for c in cosines.values()))
    fig, axes = new_figure(1, n, w=size + 1, h=size)
    for ax, (model, frame) in zip(axes[0], sorted(cosines.items()), strict=True):
        sns.heatmap(frame, vmin=-1, vmax=1, cmap="vlag", square=True, ax=ax,
                    cbar_kws={"shrink": 0.6}, xticklabels=True, yticklabels=True)
        ax.tick_params(labelsize=6)
        ax.set_title(f"{model}: trait-direction cosines")
    return fig


def lopo_error_grid(metrics, feature_set: str, label_method: str = ""):
    """Misclassification rate per model × scored dataset (LOPO folds and held-out datasets)."""
    import seaborn as sns

    sub = metrics[(metrics.feature_set == feature_set) & (metrics.dataset != "pooled")]
    if not len(sub):
        return empty_figure("no metrics")
    runs = sub.n_runs.astype(int).astype(str) + " runs" if "n_runs" in sub else ""
    sub = sub.assign(column=sub.dataset + np.where(sub.protocol == "lopo", "\n(LOPO, ",
                                                   "\n(held-out, ") + runs + ")")
    grid = sub.pivot_table(index="model", columns="column", values="error")
    fig, axes = new_figure(w=max(6.0, 1.2 * grid.shape[1]), h=2.6 + 0.5 * grid.shape[0])
    sns.heatmap(grid, annot=True, fmt=".2f", vmin=0, vmax=max(0.5, float(np.nanmax(grid.values))),
                cmap="rocket_r", ax=axes[0, 0])
    axes[0, 0].set_title(f"{feature_set} monitor: error rate per model × scored dataset\n"
                         + _labels(label_method).lstrip(" ·"), fontsize=8)
    axes[0, 0].set_xlabel("")
    axes[0, 0].tick_params(axis="x", labelsize=7, rotation=0)
    return fig


def feature_ablation(pooled, label_method: str = ""):
    """FNR, FPR and AUROC (95% run-level bootstrap interval) per feature set and protocol."""
    if not len(pooled):
        return empty_figure("no metrics")
    order = list(dict.fromkeys(pooled.feature_set))
    protocols = sorted(pooled.protocol.unique())
    fig, axes = new_figure(1, 3, w=3.6, h=0.6 + 0.35 * len(order) * len(protocols))
    colors = {"lopo": "#7d3c98", "heldout": "#d68910"}
    for ax, metric in zip(axes[0], ["auroc", "fnr", "fpr"], strict=True):
        for k, protocol in enumerate(protocols):
            sub = pooled[pooled.protocol == protocol].set_index("feature_set").reindex(order)
            y = np.arange(len(order)) + (k - (len(protocols) - 1) / 2) * 0.3
            v, lo, hi = (sub[metric].values, sub[f"{metric}_lo"].values,
                         sub[f"{metric}_hi"].values)
            err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
            ax.errorbar(v, y, xerr=np.nan_to_num(err), fmt="o", label=protocol,
                        color=colors.get(protocol), capsize=2)
        ax.set_yticks(np.arange(len(order)), order)
        ax.invert_yaxis()
        ax.set_xlim(-0.02, 1.02)
        ax.set_title(metric.upper())
    axes[0, 0].legend(loc="lower left", fontsize=7)
    sizes = ", ".join(f"{p}: {int(g.n.iloc[0])} checkpoints of {int(g.n_runs.iloc[0])} runs"
                      for p, g in pooled.groupby("protocol")) if "n_runs" in pooled else ""
    fig.suptitle("Feature-set ablation (pooled over models and scored datasets; 95% run-level "
                 f"bootstrap)\n{sizes}{_labels(label_method)}", fontsize=8)
    return fig


def alarm_curves(pred, alarm_threshold: float):
    """Alarm probability per checkpoint, one line per run; rows = models, cols = protocol."""
    import seaborn as sns

    if not len(pred):
        return empty_figure("no predictions")
    models = sorted(pred.model.unique())
    protocols = sorted(pred.protocol.unique())
    fig, axes = new_figure(len(models), len(protocols), w=4.0, h=3.0)
    for i, m in enumerate(models):
        for j, p in enumerate(protocols):
            ax = axes[i, j]
            sub = pred[(pred.model == m) & (pred.protocol == p)]
            sub = sub.assign(run=sub.dataset + "/" + sub.seed.astype(str))
            sns.lineplot(sub, x="step", y="alarm_prob", hue="label", units="run",
                         estimator=None, palette=PALETTE, alpha=0.8, ax=ax)
            ax.axhline(alarm_threshold, color="black", ls=":", lw=1)
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{m} · {p} ({sub.run.nunique()} runs)")
    methods = "; ".join(sorted(set(pred.label_method.astype(str)))) \
        if "label_method" in pred else ""
    fig.suptitle(f"Step-aware alarm (threshold {alarm_threshold:g}; colour: declared label)"
                 + _labels(methods), fontsize=9)
    return fig


def spearman_matrix(traj, traits: list[str], label_method: str = ""):
    """Spearman correlation of each trait's drift (and |drift|, |PC1|, loss) with EM rate."""
    import pandas as pd
    import seaborn as sns

    cols = traits + ["drift_norm", "abs_pc1", "loss"]
    rows = {}
    for m, sub in traj[traj.em_rate.notna()].groupby("model"):
        ranks = sub[cols + ["em_rate"]].rank()
        rows[m] = ranks[cols].corrwith(ranks["em_rate"])
    if not rows:
        return empty_figure("no checkpoints with an EM rate")
    grid = pd.DataFrame(rows).T
    fig, axes = new_figure(w=0.6 * len(cols) + 2, h=1.2 + 0.45 * len(rows))
    sns.heatmap(grid, annot=True, fmt=".2f", vmin=-1, vmax=1, cmap="vlag", ax=axes[0, 0])
    n = int(traj.em_rate.notna().sum())
    n_runs = len(traj[traj.em_rate.notna()][["model", "dataset", "seed"]].drop_duplicates())
    axes[0, 0].set_title(f"Spearman ρ: trait drift vs EM rate ({n} checkpoints of {n_runs} runs)"
                         + _labels(label_method), fontsize=8)
    return fig


def permutation_null(null, metrics):
    """Run-label permutation null of the monitor's AUROC next to the observed value, per model
    and protocol, with p and the number of permutations."""
    import seaborn as sns

    if null is None or not len(null):
        return empty_figure("no permutation test (monitor.permutations: 0, or one class only)")
    keys = list(null.groupby(["model", "protocol"]).groups)
    fig, axes = new_figure(1, len(keys), w=3.6, h=3.0)
    for ax, (model, protocol) in zip(axes[0], keys, strict=True):
        sub = null[(null.model == model) & (null.protocol == protocol)]
        sns.histplot(sub.auroc, bins=min(30, max(5, len(sub) // 4)), color="#95a5a6", ax=ax)
        observed = float(sub.observed.iloc[0])
        ax.axvline(observed, color=PALETTE["dangerous"], lw=2, label=f"observed {observed:.3f}")
        row = metrics[(metrics.model == model) & (metrics.protocol == protocol)
                      & (metrics.dataset == "pooled") & (metrics.feature_set
                                                         == sub.feature_set.iloc[0])]
        if "step0" in row and "step0" in sub:
            row = row[row.step0 == sub.step0.iloc[0]]
        p = float(row.auroc_p.iloc[0]) if len(row) and "auroc_p" in row else float("nan")
        runs = int(row.n_runs_permuted.iloc[0]) if len(row) and "n_runs_permuted" in row else 0
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("AUROC under permuted run labels")
        ax.set_title(f"{model} · {protocol}: p = {p:.3g}\n{len(sub)} permutations of {runs} "
                     "runs", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Chance baseline: monitor AUROC with run labels permuted (refit each time)",
                 fontsize=9)
    return fig


def layer_comparison(layers, selection: list | None = None):
    """Per model: the monitor's AUROC (run-level interval) at every measured layer, LOPO and
    held-out, l* marked; beside it the PC1 share of each layer's calibration final drift."""
    if layers is None or not len(layers):
        return empty_figure("no layer comparison (rule monitor_layers not run)")
    chosen_by = {s["model"]: s for s in selection or []}
    models = list(dict.fromkeys(layers.model))
    fig, axes = new_figure(len(models), 2, w=3.8, h=3.0)
    colors = {"lopo": "#2e86c1", "heldout": "#c0392b"}
    for (ax, pc_ax), model in zip(axes, models, strict=True):
        sub = layers[layers.model == model].sort_values("layer")
        order = [int(x) for x in dict.fromkeys(sub.layer)]
        pos = {la: i for i, la in enumerate(order)}
        for k, (protocol, g) in enumerate(sub.groupby("protocol", sort=True)):
            x = np.array([pos[int(la)] for la in g.layer]) + (k - 0.5) * 0.2
            lo = np.clip(g.auroc.values - g.auroc_lo.values, 0, None)
            hi = np.clip(g.auroc_hi.values - g.auroc.values, 0, None)
            ax.errorbar(x, g.auroc, yerr=np.nan_to_num(np.vstack([lo, hi])), fmt="o",
                        capsize=3, color=colors.get(protocol, "#7f8c8d"), label=protocol)
        star = sub[sub.chosen.astype(bool)].layer
        if len(star):
            for a in (ax, pc_ax):
                a.axvline(pos[int(star.iloc[0])], color="#7f8c8d", ls="--", lw=1)
        ax.axhline(0.5, color="#bdc3c7", lw=1)
        ax.set_xticks(range(len(order)), [str(la) for la in order])
        ax.set_xlim(-0.5, len(order) - 0.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("block (dashed: l*)")
        ax.set_ylabel("monitor AUROC")
        how = chosen_by.get(model, {}).get("selector", "?")
        ax.set_title(f"{model}: AUROC per layer (l* by {how})", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
        pc1 = sub.drop_duplicates("layer")
        pc_ax.bar([pos[int(la)] for la in pc1.layer], pc1.pc1_explained, color="#95a5a6")
        pc_ax.set_xticks(range(len(order)), [str(la) for la in order])
        pc_ax.set_ylim(0, 1)
        pc_ax.set_xlabel("block")
        pc_ax.set_title("PC1 share of calibration final drift", fontsize=8)
    fig.suptitle("Which layer monitors best (intervals: run-level bootstrap)", fontsize=9)
    return fig
