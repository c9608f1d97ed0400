"""The report's screen section: would screening the data have predicted which finetunes went bad?

Joins every screen summary (results/screen/{model}/{dataset}.json) with its model's cube: per
dataset and trait, the screen score next to the final-checkpoint drift (mean over seeds) and the
behavioural outcome (dangerous at the final step, majority over seeds; EM rate NaN = excluded
and counted). Across datasets it reports the Spearman rank correlation of screen score and
final drift per trait, and the dataset-level AUROC of the screen's risk against the outcome and
against the configured label.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emtrait.errors import StoreError

if TYPE_CHECKING:
    import pandas as pd

FIGURE = "screen_vs_outcome"
BASELINE = "projection_risk"  # pseudo-trait: the projection baseline's risk beside gradient
RISKS = ("risk", BASELINE)
TABLE_COLUMNS = ["model", "dataset", "role", "label", "mode", "trait", "trait_set", "screen",
                 "screen_low", "screen_high", "n", "n_scored", "n_empty", "final_drift",
                 "final_em_rate", "went_bad", "n_seeds", "n_seeds_em_missing"]


def read_summaries(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The screen summaries, each checked to carry what the join needs."""
    from emtrait.stores import read_json_artifact

    return [read_json_artifact(p, rule="screen", what="screen summary",
                               keys=("model", "dataset", "score", "mode", "n")) for p in paths]


def _final(cube) -> dict:
    """Per dataset: final drift (trait,) mean over seeds, EM rate, went-bad vote, counts."""
    from emtrait.drift import is_dangerous

    threshold = float(cube.attrs["threshold"])
    steps = [int(s) for s in cube["step"].values]
    traits = [str(t) for t in cube["trait"].values]
    out = {}
    for i, d in enumerate(str(x) for x in cube["dataset"].values):
        t = steps.index(int(cube["final_step"].values[i]))
        drift = cube["drift"].isel(dataset=i, step=t).values.astype(float)  # (seed, trait)
        em = cube["em_rate"].isel(dataset=i, step=t).values.astype(float)  # (seed,)
        ran = np.isfinite(drift).all(axis=1)
        known = ran & np.isfinite(em)
        bad = is_dangerous(em[known], threshold) if known.any() else np.array([], bool)
        out[d] = {"drift": dict(zip(traits, np.nanmean(drift[ran], axis=0) if ran.any()
                                    else np.full(len(traits), np.nan), strict=True)),
                  "em": float(em[known].mean()) if known.any() else float("nan"),
                  "went_bad": (float(np.mean(bad) > 0.5) if known.any() else float("nan")),
                  "n_seeds": int(ran.sum()), "n_missing": int((ran & ~known).sum()),
                  "label": str(cube["label"].values[i]), "role": str(cube["role"].values[i])}
    return out


def screen_table(summaries: list[dict], cubes: dict) -> pd.DataFrame:
    """screen(model, dataset, trait) joined with the cube's final drift and outcome.

    The pseudo-trait `risk` carries the screen's risk (danger-axis projection) and, as its
    final drift, the final drift projected on the same axis.
    """
    import pandas as pd

    rows = []
    finals = {m: _final(c) for m, c in cubes.items()}
    for s in summaries:
        model, dataset = str(s["model"]), str(s["dataset"])
        if model not in finals:
            raise StoreError(f"screen of {model}/{dataset} has no cube for model {model}; pass "
                             "that model's cube")
        fin = finals[model].get(dataset)
        if fin is None:
            raise StoreError(f"the cube of {model} has no dataset {dataset}; screen a dataset of "
                             "the config or rebuild the cube")
        base = {"model": model, "dataset": dataset, "role": fin["role"], "label": fin["label"],
                "mode": s["mode"], "n": s["n"], "n_scored": s.get("n_scored"),
                "n_empty": s.get("n_empty"), "final_em_rate": fin["em"],
                "went_bad": fin["went_bad"], "n_seeds": fin["n_seeds"],
                "n_seeds_em_missing": fin["n_missing"]}
        sets = s.get("trait_sets", {})
        for trait, v in s["score"].items():
            rows.append({**base, "trait": trait, "trait_set": sets.get(trait, ""),
                         "screen": v["mean"], "screen_low": v["low"], "screen_high": v["high"],
                         "final_drift": fin["drift"].get(trait, np.nan)})
        risk = s.get("risk")
        if risk:
            axis = risk["axis"]
            along = sum(w * fin["drift"].get(t, np.nan) for t, w in axis.items())
            rows.append({**base, "trait": "risk", "trait_set": "danger_axis",
                         "screen": risk["mean"], "screen_low": risk["low"],
                         "screen_high": risk["high"], "final_drift": along})
            b = s.get("baseline")
            if b:  # the projection baseline scored beside the gradient screen
                rows.append({**base, "mode": b["mode"], "trait": BASELINE,
                             "trait_set": "danger_axis", "screen": b["mean"],
                             "screen_low": b["low"], "screen_high": b["high"],
                             "final_drift": along})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def screen_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """Per model (and all models, when several) and trait: Spearman ρ of screen vs final drift
    across datasets, and the dataset-level AUROC of the screen vs outcome and vs label."""
    import pandas as pd
    from scipy.stats import spearmanr

    from emtrait.monitor.metrics import auroc

    groups = [(m, g) for m, g in table.groupby("model")]
    if table.model.nunique() > 1:
        groups.append(("all", table))
    rows = []
    for model, g in groups:
        for trait, t in g.groupby("trait", sort=False):
            ok = np.isfinite(t.screen) & np.isfinite(t.final_drift)
            rho = (spearmanr(t.screen[ok], t.final_drift[ok]).statistic
                   if ok.sum() >= 3 else np.nan)
            known = np.isfinite(t.went_bad) & np.isfinite(t.screen)
            lab = t.label.isin(["dangerous", "benign"]) & np.isfinite(t.screen)
            held = known & t.role.eq("heldout")
            rows.append({
                "model": model, "trait": trait, "trait_set": t.trait_set.iloc[0],
                "n_datasets": int(len(t)), "spearman_final_drift": rho, "n_spearman": int(ok.sum()),
                "auroc_went_bad": auroc(t.went_bad[known].astype(bool), t.screen[known]),
                "n_went_bad": int(t.went_bad[known].sum()), "n_outcome": int(known.sum()),
                "auroc_went_bad_heldout": auroc(t.went_bad[held].astype(bool), t.screen[held]),
                "auroc_label": auroc(t.label[lab].eq("dangerous"), t.screen[lab]),
                "n_label": int(lab.sum()),
            })
    return pd.DataFrame(rows)


def _f(v: float, fmt: str = "+.3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, fmt)


def screen_markdown(table: pd.DataFrame, metrics: pd.DataFrame) -> str:
    """The report section: the one table that answers the question, then the trait table."""
    if not len(table):
        return "## Screening the data before training\n\nNo screens in this report.\n"
    risk = table[table.trait == "risk"]
    base = table[table.trait == BASELINE].set_index(["model", "dataset"])
    mode = ", ".join(sorted(risk["mode"].unique())) if len(risk) else "no risk"
    lines = ["## Screening the data before training", "",
             "Would screening each dataset with the base model (`emtrait screen`, "
             f"{mode} mode) have predicted which finetunes went bad? Risk (gradient mode) = the "
             "first-order change of the monitor's risk from a training step on each example, "
             "−⟨∇L, ∇R⟩; (projection modes) = the examples' projection on the monitor's danger "
             "axis. Mean over examples, 95% Poisson-bootstrap interval over examples; went bad "
             "= dangerous at the final checkpoint (majority over seeds).", ""]
    if len(risk):
        lines += ["| model | dataset | role | label | screen risk | projection baseline | "
                  "final EM rate | went bad |", "|---|---|---|---|---|---|---|---|"]
        for r in risk.sort_values(["model", "screen"], ascending=[True, False]).itertuples():
            bad = "n/a" if not np.isfinite(r.went_bad) else ("yes" if r.went_bad else "no")
            b = base.loc[(r.model, r.dataset)] if (r.model, r.dataset) in base.index else None
            proj = "—" if b is None else (f"{_f(b.screen)} [{_f(b.screen_low)}, "
                                          f"{_f(b.screen_high)}]")
            lines.append(f"| {r.model} | {r.dataset} | {r.role} | {r.label} | {_f(r.screen)} "
                         f"[{_f(r.screen_low)}, {_f(r.screen_high)}] | {proj} | "
                         f"{_f(r.final_em_rate, '.1%')} | {bad} |")
        m = metrics[metrics.trait.isin(RISKS)]
        lines += [""]
        for r in m.itertuples():
            what = "screen risk" if r.trait == "risk" else "projection baseline"
            lines.append(
                f"- {r.model}: AUROC of {what} vs went bad {_f(r.auroc_went_bad, '.3f')} "
                f"({r.n_went_bad} of {r.n_outcome} datasets went bad; held-out only "
                f"{_f(r.auroc_went_bad_heldout, '.3f')}); vs the configured label "
                f"{_f(r.auroc_label, '.3f')} (n={r.n_label}); Spearman ρ vs final drift "
                f"along the axis {_f(r.spearman_final_drift)} (n={r.n_spearman}).")
        lines += ["", "The danger axis is fitted on the calibration datasets' drift and labels, "
                  "so for calibration datasets these numbers are in-sample; the held-out AUROC "
                  "is not. With a handful of datasets an AUROC moves in steps of "
                  "1/(dangerous × benign): read it as a demonstration, not an estimate."]
    else:
        lines.append("The screens have no risk column (no monitor was given).")
    lines += ["", "Per trait (screen score vs the finetune's final drift on that trait, across "
              "datasets):", "", "| model | trait | set | Spearman ρ | n | AUROC vs went bad | "
              "AUROC vs label |", "|---|---|---|---|---|---|---|"]
    for r in metrics[~metrics.trait.isin(RISKS)].itertuples():
        lines.append(f"| {r.model} | {r.trait} | {r.trait_set} | {_f(r.spearman_final_drift)} | "
                     f"{r.n_spearman} | {_f(r.auroc_went_bad, '.3f')} | "
                     f"{_f(r.auroc_label, '.3f')} |")
    empty = int(risk.n_empty.fillna(0).sum()) if len(risk) else 0
    lines += ["", f"Examples with no assistant token left at the max length: {empty} "
              "(scored NaN, counted in each screen's summary JSON).", ""]
    return "\n".join(lines)


def screen_figure(table: pd.DataFrame, metrics: pd.DataFrame):
    """Left: screen risk per dataset vs final EM rate (label by colour, interval bars). Right:
    Spearman ρ of screen vs final drift per trait."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    risk = table[table.trait == "risk"]
    colours = {"dangerous": "tab:red", "benign": "tab:blue", "unknown": "tab:gray"}
    for r in risk.itertuples():
        c = colours.get(r.label, "tab:gray")
        a.errorbar(r.screen, r.final_em_rate, xerr=[[r.screen - r.screen_low],
                                                    [r.screen_high - r.screen]],
                   fmt="o" if r.went_bad == 1 else "s", color=c, capsize=3)
        a.annotate(f"{r.dataset}", (r.screen, r.final_em_rate), fontsize=7,
                   textcoords="offset points", xytext=(3, 3))
    a.set_xlabel(f"screen risk ({', '.join(sorted(risk['mode'].unique()))}, base model)")
    a.set_ylabel("final EM rate of the finetune")
    a.set_title("screen before training vs outcome\n(red dangerous, blue benign label; "
                "circle = went bad)", fontsize=9)
    m = metrics[~metrics.trait.isin(RISKS) & (metrics.model == metrics.model.iloc[0])] \
        if len(metrics) else metrics
    if len(m):
        b.barh(m.trait, m.spearman_final_drift.fillna(0), color="tab:purple")
        b.axvline(0, color="k", lw=0.8)
        b.set_xlim(-1, 1)
        b.invert_yaxis()
        b.tick_params(axis="y", labelsize=7)
    b.set_xlabel("Spearman ρ across datasets: screen score vs final drift")
    b.set_title(f"per trait ({m.model.iloc[0] if len(m) else ''})", fontsize=9)
    fig.tight_layout()
    return fig


def screen_section(summary_paths: Sequence[str | os.PathLike],
                   cube_paths: Sequence[str | os.PathLike],
                   figure_paths: Sequence[str | os.PathLike] = (),
                   table_path: str | os.PathLike | None = None) -> str:
    """Read screens + cubes, write the figure(s) and the joined table, return the markdown."""
    from emtrait.atomic import atomic_path
    from emtrait.cube.read import open_cube

    summaries = read_summaries(summary_paths)
    cubes = {}
    for p in cube_paths:
        c = open_cube(p, load=False)
        cubes[str(c.attrs["model"])] = c
    table = screen_table(summaries, cubes)
    metrics = screen_metrics(table)
    if table_path is not None:
        with atomic_path(table_path) as tmp:
            table.to_csv(tmp, index=False)
    if figure_paths:
        fig = screen_figure(table, metrics)
        for p in figure_paths:
            with atomic_path(p) as tmp:
                fig.savefig(tmp, format=Path(p).suffix.lstrip("."), dpi=150)
    return screen_markdown(table, metrics)
